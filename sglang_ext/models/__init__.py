"""Model overrides for SGLang's registry (`SGLANG_EXTERNAL_MODEL_PACKAGE`): each module here defines an
`EntryClass` that replaces SGLang's class of the same architecture name. Importing the package checks the
SGLang version first, so a mismatch fails at server start with the fix, not deep inside a forward pass."""

from sglang_ext import require_supported_sglang

require_supported_sglang()

from sglang_ext.quantization.quark.config import register_quark_int8  # noqa: E402 (after the version check)

register_quark_int8()

from sglang_ext.moe_configs import use_tuned_moe_configs  # noqa: E402

use_tuned_moe_configs()

from sglang_ext.small_m_gemv import install as install_small_m_gemv  # noqa: E402

install_small_m_gemv()  # only with SGLANG_EXT_SMALL_M_GEMV=1 or all

# SGLang imports this package strictly but its modules leniently (registry.py: an import error there only
# logs a warning and the stock class serves); importing the overrides here makes a broken one stop the start.
from sglang_ext.models import qwen3_5, qwen3_5_mtp  # noqa: E402,F401

"""Model overrides for SGLang's registry (`SGLANG_EXTERNAL_MODEL_PACKAGE`): each module here defines an
`EntryClass` that replaces SGLang's class of the same architecture name. Importing the package checks the
SGLang version first, so a mismatch fails at server start with the fix, not deep inside a forward pass."""

from sglang_ext import require_supported_sglang

require_supported_sglang()

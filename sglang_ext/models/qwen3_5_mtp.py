"""Qwen3.5's MTP draft (NEXTN) for compressed-tensors checkpoints whose MTP layer stays unquantized.

SGLang 0.5.17 builds the MTP head with the checkpoint's quantization config, except where it knows the
head ships in BF16: ModelOpt FP4, and Quark configs that exclude `mtp.*` (sglang/srt/models/qwen3_5_mtp.py:
63-82, sgl-project/sglang#23113). A compressed-tensors checkpoint that lists `mtp.*` in its `ignore` list is
the same case, but stock SGLang keeps the config, and the head's layers cannot match their ignore entries:
the MTP decoder layer names its attention projections without `self_attn` (`mtp.layers.0.qkv_proj`), so
`mtp.layers.0.self_attn.q_proj` in `ignore` never applies and the layer asks for a quantized scheme, failing
at start with "Other method (CompressedTensorsW4A16Sparse24) is not supported now". This override drops the
config there too, as SGLang does for Quark. SGLang 0.5.23 gathers those cases in `_mtp_quant_config`
(qwen3_5_mtp.py:50; Quark now only when the MTP experts are excluded) and still keeps a compressed-tensors config.
"""

from typing import Any

from sglang.srt.models import qwen3_5_mtp


def ships_unquantized_mtp(quant_config: Any) -> bool:
    """A compressed-tensors config whose `ignore` list names the MTP head's modules."""
    if quant_config is None or quant_config.get_name() != "compressed_tensors":
        return False
    return any(isinstance(entry, str) and entry.removeprefix("re:").startswith("mtp.") for entry in quant_config.ignore)


class Qwen3_5ForCausalLMMTP(qwen3_5_mtp.Qwen3_5ForCausalLMMTP):
    def __init__(self, config: Any, quant_config: Any = None, prefix: str = "") -> None:
        super().__init__(config, None if ships_unquantized_mtp(quant_config) else quant_config, prefix)


EntryClass = [Qwen3_5ForCausalLMMTP]

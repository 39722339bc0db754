"""The hook that gives SGLang's Quark config the INT8 W8A8 schemes (0.5.17 and 0.5.23 have none).

SGLang builds a checkpoint's quantization config from the class registered under its `quant_method` in
`sglang.srt.layers.quantization.QUANTIZATION_METHODS`, looked up by `get_quantization_config` when the
model loads (`model_loader/weight_utils.py:get_quant_config`), after the loader has imported the model
registry and with it `SGLANG_EXTERNAL_MODEL_PACKAGE`. :func:`register_quark_int8`, called from
`sglang_ext.models`, replaces the class under "quark" with a subclass of the one registered there, so it
acts in every process that loads weights. The subclass answers INT8 W8A8 layer configs itself and hands
every other layer config to SGLang's QuarkConfig (MXFP4, FP8, exclusions, KV cache) unchanged.
"""

from typing import Any

import torch

from sglang.srt.layers.quantization import QUANTIZATION_METHODS
from sglang.srt.layers.quantization.quark.quark import QuarkConfig
from sglang.srt.layers.quantization.quark.schemes import QuarkLinearScheme, QuarkMoEScheme

from sglang_ext.quantization.quark.w8a8_int8 import QuarkW8A8Int8
from sglang_ext.quantization.quark.w4a4_mxfp4_cuda import quark_mxfp4_cuda_scheme
from sglang_ext.quantization.quark.w8a8_int8_moe import QuarkW8A8Int8MoE
from sglang_ext.quantization.quark_int8_spec import is_quark_w8a8_int8


class QuarkInt8Schemes:
    """Mixin over a QuarkConfig class: INT8 W8A8 layers, and MXFP4 W4A4 layers on CUDA, get sglang_ext's schemes.

    A mixin rather than a plain subclass, so it stacks on whatever other sglang_ext override already sits
    under "quark". It overrides `get_linear_scheme` rather than `_get_scheme_from_config` because SGLang's
    `get_linear_scheme` follows the latter with a device-capability check that fails on CPU (it compares
    the `(None, None)` capability there), and the INT8 scheme runs on any device.
    """

    def get_linear_scheme(self, layer: torch.nn.Module, layer_name: str) -> QuarkLinearScheme:
        scheme = quark_mxfp4_cuda_scheme(self, layer, layer_name)
        if scheme is not None:
            return scheme
        if is_quark_w8a8_int8(self._find_matched_config(layer_name, layer)):
            return QuarkW8A8Int8(layer_name)
        return super().get_linear_scheme(layer, layer_name)

    def get_moe_scheme(self, module: torch.nn.Module, layer_name: str, **sglang_kwargs: Any) -> QuarkMoEScheme:
        # sglang_kwargs: SGLang 0.5.23's `quantize_shared_expert_online` (a BF16 shared expert quantized into
        # the fused slot on ROCm only; off on CUDA, where ours apply), handed on to SGLang's own schemes.
        scheme = quark_mxfp4_cuda_scheme(self, module, layer_name)
        if scheme is not None:
            return scheme
        if is_quark_w8a8_int8(self._find_matched_config(layer_name, module)):
            return QuarkW8A8Int8MoE(layer_name)
        return super().get_moe_scheme(module, layer_name, **sglang_kwargs)


def register_quark_int8() -> type[QuarkConfig]:
    """Register the INT8 schemes under `quant_method: quark`; returns the registered class. Idempotent."""
    current: Any = QUANTIZATION_METHODS["quark"]
    if not issubclass(current, QuarkInt8Schemes):
        QUANTIZATION_METHODS["quark"] = type("QuarkInt8Config", (QuarkInt8Schemes, current), {"__module__": __name__})
    return QUANTIZATION_METHODS["quark"]

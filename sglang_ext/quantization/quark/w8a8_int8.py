"""QuarkW8A8Int8: Quark INT8 W8A8 linear layers (attention q/k/v/o, DeltaNet projections, shared expert).

Weights int8 ``[out, in]`` with one static scale per output channel; activations quantized per token at run
time. On CUDA GPUs that sgl_kernel's ``int8_scaled_mm`` covers, it runs SGLang's own W8A8 INT8 path
(``per_token_quant_int8`` + ``int8_scaled_mm``, as ``w8a8_int8.W8A8Int8LinearMethod``); everywhere else
:func:`sglang_ext.quantization.int8_fallback.int8_linear`.

The two paths quantize activations with slightly different rules: SGLang's kernel uses ``amax / 127`` and
rounds half away from zero, Quark (and the fallback) ``amax / 127.5`` with ties to even. Both are symmetric
per-token INT8 of the same tensor; codes differ by at most one step where the rules disagree.
"""

from collections.abc import Callable
from typing import Any

import torch
from torch.nn import Parameter

from sglang.kernels.ops.quantization.int8_kernel import per_token_quant_int8
from sglang.srt.layers.parameter import ChannelQuantScaleParameter, ModelWeightParameter
from sglang.srt.layers.quantization.quark.schemes import QuarkLinearScheme
from sglang.srt.utils import is_cuda

from sglang_ext.quantization.int8_fallback import int8_linear

_is_cuda = is_cuda()
if _is_cuda:
    from sgl_kernel import int8_scaled_mm


def flatten_scale_loader(weight_loader: Callable[..., Any]) -> Callable[..., Any]:
    """Quark's own export stores per-channel scales as ``[out, 1]``, the Qwen3.6 INT8 card as ``[out]``:
    load either into SGLang's ``[out]`` scale parameters."""

    def load(param: torch.Tensor, loaded_weight: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        return weight_loader(param, loaded_weight.reshape(-1), *args, **kwargs)

    return load


def unloaded_scale_error(layer_name: str, param_name: str, what: str, indices: list[int]) -> ValueError:
    return ValueError(
        f"{layer_name}.{param_name}: {len(indices)} {what} (first: {indices[:8]}) got no value from the "
        "checkpoint; a Quark INT8 checkpoint holds a `weight_scale` ([out] or [out, 1]) beside every int8 `weight`"
    )


def _int8_scaled_mm_fits(weight: torch.Tensor, out_dtype: torch.dtype) -> bool:
    """What sgl_kernel's int8_scaled_mm accepts (its TORCH_CHECKs): CUDA sm80-sm90 (sm75 fp16 only, no
    kernel for sm100+), K % 16 == 0, N % 8 == 0, fp16/bf16 output."""
    if not _is_cuda or out_dtype not in (torch.float16, torch.bfloat16):
        return False
    major, minor = torch.cuda.get_device_capability(weight.device)
    out_features, in_features = weight.shape
    return 80 <= major * 10 + minor <= 90 and in_features % 16 == 0 and out_features % 8 == 0


class QuarkW8A8Int8(QuarkLinearScheme):
    def __init__(self, layer_name: str):
        self.layer_name = layer_name
        self.use_kernel = False  # decided once the weights are on their device

    @classmethod
    def get_min_capability(cls) -> int:
        # The torch fallback runs on any device the int8 kernel does not.
        return 0

    def create_weights(
        self,
        layer: torch.nn.Module,
        output_partition_sizes: list[int],
        input_size_per_partition: int,
        params_dtype: torch.dtype,
        weight_loader: Callable[..., Any],
        **kwargs: Any,
    ) -> None:
        layer.logical_widths = output_partition_sizes
        self.out_dtype = params_dtype
        out_features = sum(output_partition_sizes)
        weight = ModelWeightParameter(
            data=torch.empty(out_features, input_size_per_partition, dtype=torch.int8),
            input_dim=1,
            output_dim=0,
            weight_loader=weight_loader,
        )
        layer.register_parameter("weight", weight)
        # float32: the checkpoint's bf16 (or f32) scales widen losslessly, and SGLang's loaders refuse
        # narrowing copies. NaN marks channels no checkpoint tensor reached (checked after loading).
        weight_scale = ChannelQuantScaleParameter(
            data=torch.full((out_features,), float("nan"), dtype=torch.float32),
            output_dim=0,
            weight_loader=flatten_scale_loader(weight_loader),
        )
        layer.register_parameter("weight_scale", weight_scale)

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        scale = layer.weight_scale.data
        if torch.isnan(scale).any():
            missing = torch.isnan(scale).nonzero().flatten().tolist()
            raise unloaded_scale_error(self.layer_name, "weight_scale", "output channels", missing)
        self.use_kernel = _int8_scaled_mm_fits(layer.weight, self.out_dtype)
        if self.use_kernel:
            # int8_scaled_mm reads the weight column-major [in, out] and one float32 scale per column.
            layer.weight = Parameter(layer.weight.data.t(), requires_grad=False)
            layer.weight_scale = Parameter(scale.view(-1, 1), requires_grad=False)
        else:
            layer.weight = Parameter(layer.weight.data, requires_grad=False)
            layer.weight_scale = Parameter(scale, requires_grad=False)

    def apply_weights(
        self, layer: torch.nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        if not self.use_kernel:
            # float32 on CPU is exact; on a GPU, bfloat16 matrix cores (see int8_fallback).
            matmul_dtype = torch.float32 if x.device.type == "cpu" else torch.bfloat16
            return int8_linear(x, layer.weight, layer.weight_scale, bias, matmul_dtype)
        x_q, x_scale = per_token_quant_int8(x.contiguous())  # the Triton kernel asserts a contiguous input
        out = int8_scaled_mm(
            x_q.view(-1, x_q.shape[-1]),
            layer.weight,
            x_scale.view(-1, 1),
            layer.weight_scale,
            out_dtype=x.dtype,
            bias=bias,
        )
        return out.view(*x.shape[:-1], layer.weight.shape[1])

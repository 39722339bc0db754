"""Quark MXFP4 W4A4 on CUDA GPUs without FP4 matrix units (Hopper): what SGLang 0.5.17 and 0.5.23 run on aiter only.

SGLang's ``QuarkW4A4MXFp4MoE`` and ``QuarkW4A4MXFP4`` (layers/quantization/quark/schemes/) create the
right parameters for a serialized Quark MXFP4 checkpoint on any device, but their forward passes call
aiter kernels and ``create_moe_runner`` builds no runner off aiter (0.5.23 raises there: "requires the AITER
runner"), so on CUDA the layer has nothing to run. The subclasses here keep SGLang's parameter creation (hence its weight loading, including the fused
shared expert as expert slot E) and replace what happens after loading:

* MoE (:class:`QuarkW4A4MXFp4MoECuda`): weights stay MXFP4 and run through SGLang's MXFP4 Marlin MoE
  GEMM, the kernel SGLang itself uses for MXFP4 experts on SM90 (``Mxfp4MoEMethod`` with
  ``--moe-runner-backend marlin``, ``Mxfp4MarlinMoEMethod``); activations are quantize-dequantized to
  MXFP4 before each GEMM exactly as Quark does, so results match MI355X up to summation order
  (:mod:`.w4a4_mxfp4_marlin_moe`).
* Linear (:class:`QuarkW4A4MXFP4Cuda`), e.g. the shared expert when it is not fused: the weight is
  dequantized to BF16 once after loading (exact: MXFP4 values are BF16 values; 4x the memory of MXFP4)
  and each input is quantize-dequantized to MXFP4 before a BF16 GEMM. SGLang has no MXFP4 Marlin dense
  GEMM path, and these layers are small next to the experts.

Why Marlin and not the other MXFP4 MoE paths SGLang has for gpt-oss / compressed-tensors on SM90
(``Mxfp4MoEMethod``, layers/quantization/mxfp4.py): its default SM90 path upcasts every expert to BF16
after loading (``upcast_from_mxfp``, mxfp4.py:988-1003), 4x the expert memory, which the 397B checkpoint
cannot afford; its ``triton_kernel`` path needs the experts transposed while loading (FusedMoE
``use_triton_kernels``, layer.py:660/750/1136) into a swizzled layout, has no expert parallelism, and fuses
the first GEMM with its activation; ``flashinfer_mxfp4`` on SM90 (FlashInfer CUTLASS, JIT-compiled, no
prebuilt kernels in SGLang's bundle) fills in gpt-oss's SwiGLU constants when a model sets none
(alpha 1.702, clamp 7.0, mxfp4.py:1107-1108), which is not Qwen's SiLU. None of the fused paths leaves a
point to quantize the intermediate activation. Marlin keeps 4-bit weights, reads the checkpoint's
row-major packed bytes and E8M0 scales through SGLang's own repack (``prepare_moe_mxfp4_layer_for_marlin``),
supports expert parallelism, and its two GEMMs are separate calls.

:func:`quark_mxfp4_cuda_scheme` is the dispatch a QuarkConfig override calls for each layer.
"""

from typing import Any

import torch
import torch.nn.functional as F
from torch.nn import Parameter

from sglang.srt.layers.linear import LinearBase
from sglang.srt.layers.moe import MoeRunnerConfig
from sglang.srt.layers.moe.token_dispatcher.standard import StandardCombineInput, StandardDispatchOutput
from sglang.srt.layers.moe.topk import TopKOutputChecker
from sglang.srt.layers.moe.utils import get_moe_runner_backend
from sglang.srt.layers.quantization.marlin_utils import check_moe_marlin_supports_layer
from sglang.srt.layers.quantization.marlin_utils_fp4 import prepare_moe_mxfp4_layer_for_marlin
from sglang.srt.layers.quantization.mxfp4_marlin_moe import build_marlin_moe_quant_info
from sglang.srt.layers.quantization.quark.quark import QuarkConfig
from sglang.srt.layers.quantization.quark.schemes import QuarkW4A4MXFP4, QuarkW4A4MXFp4MoE
from sglang.srt.utils import get_device_capability, is_cuda

from sglang_ext.codecs import mxfp4
from sglang_ext.kernels.mxfp4_act_quant import fake_quantize_mxfp4
from sglang_ext.quantization.quark.w4a4_mxfp4_marlin_moe import marlin_mxfp4_w4a4_moe, marlin_shape_error

_is_cuda = is_cuda()

# SGLang's MXFP4 Marlin MoE kernels are built and checked for SM90+ only (mxfp4.py, mxfp4_marlin_moe.py).
_MARLIN_MXFP4_MIN_CAPABILITY = (9, 0)


def _serialized_only(name: str, is_checkpoint_mxfp4_serialized: bool, dequantization_config: Any) -> None:
    if not is_checkpoint_mxfp4_serialized or dequantization_config is not None:
        raise NotImplementedError(
            f"{name}: online MXFP4 quantization (a BF16/FP8 checkpoint quantized at load) needs aiter's "
            "dynamic_mxfp4_quant on ROCm; on CUDA serve a checkpoint exported with MXFP4 weights"
        )


class QuarkW4A4MXFp4MoECuda(QuarkW4A4MXFp4MoE):
    """Quark MXFP4 W4A4 experts on CUDA: MXFP4 Marlin GEMMs with MXFP4 quantize-dequantized activations.

    Parameters (from SGLang's scheme, unpadded off aiter), E = local routed experts + fused shared slots:
    ``w13_weight`` uint8 ``[E, 2I, H/2]`` (gate rows, then up rows), ``w13_weight_scale`` uint8 E8M0
    ``[E, 2I, H/32]``, ``w2_weight`` uint8 ``[E, H, I/2]``, ``w2_weight_scale`` ``[E, H, I/32]``.
    """

    def __init__(self, layer_name: str, weight_config: dict[str, Any], input_config: dict[str, Any], **kwargs: Any):
        super().__init__(weight_config, input_config, **kwargs)
        self.layer_name = layer_name
        _serialized_only(layer_name, self.is_checkpoint_mxfp4_serialized, self.dequantization_config)

    @classmethod
    def get_min_capability(cls) -> int:
        major, minor = _MARLIN_MXFP4_MIN_CAPABILITY
        return major * 10 + minor

    def create_weights(
        self,
        layer: torch.nn.Module,
        num_experts: int,
        hidden_size: int,
        intermediate_size_per_partition: int,
        params_dtype: torch.dtype,
        **extra_weight_attrs: Any,
    ) -> None:
        backend = get_moe_runner_backend()
        if not (backend.is_auto() or backend.is_marlin()):
            # Other backends transpose or pad expert weights while loading, or leave expert ids global
            # under expert parallelism (StandardDispatcher.skip_local_expert_mapping); this runs Marlin.
            raise ValueError(
                f"{self.layer_name}: Quark MXFP4 MoE on CUDA runs SGLang's MXFP4 Marlin kernel; "
                f"set --moe-runner-backend marlin (or auto), not {backend.value}"
            )
        reason = marlin_shape_error(hidden_size, intermediate_size_per_partition)
        if reason:
            raise ValueError(f"{self.layer_name}: Quark MXFP4 MoE on CUDA cannot run through Marlin: {reason}")
        super().create_weights(
            layer, num_experts, hidden_size, intermediate_size_per_partition, params_dtype, **extra_weight_attrs
        )

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        capability = get_device_capability()
        if capability < _MARLIN_MXFP4_MIN_CAPABILITY:
            raise RuntimeError(
                f"{self.layer_name}: SGLang's MXFP4 Marlin MoE kernel needs SM90 or newer, this GPU is "
                f"SM{capability[0]}{capability[1]}"
            )
        if not check_moe_marlin_supports_layer(layer, 32, allow_tile_padding=True):
            raise ValueError(
                f"{self.layer_name}: MXFP4 Marlin MoE needs a gated SiLU MoE with router weights applied to the "
                "outputs (activation silu, apply_router_weight_on_input false)"
            )
        # Pads the intermediate dimension to Marlin's tile, repacks each expert's packed E2M1 bytes and
        # permutes its E8M0 scales; gate rows stay before up rows, as Marlin's silu_and_mul expects.
        prepare_moe_mxfp4_layer_for_marlin(layer)

    def create_moe_runner(self, layer: torch.nn.Module, moe_runner_config: MoeRunnerConfig) -> None:
        if moe_runner_config.gemm1_alpha is not None or moe_runner_config.swiglu_limit is not None:
            raise NotImplementedError(f"{self.layer_name}: only plain SiLU-and-mul experts are supported")
        if moe_runner_config.routed_scaling_factor not in (None, 1.0):
            raise NotImplementedError(f"{self.layer_name}: routed_scaling_factor is not supported")
        self.moe_runner_config = moe_runner_config

    def apply_weights(
        self, layer: torch.nn.Module, dispatch_output: StandardDispatchOutput
    ) -> StandardCombineInput:
        topk_output = dispatch_output.topk_output
        if not TopKOutputChecker.format_is_standard(topk_output):
            raise NotImplementedError(
                f"{self.layer_name}: Quark MXFP4 MoE on CUDA takes standard top-k output, got {topk_output.format}"
            )
        hidden_states = dispatch_output.hidden_states
        ep = build_marlin_moe_quant_info(layer)  # SGLang's EP mapping for Marlin (global -> local ids)
        output = marlin_mxfp4_w4a4_moe(
            hidden_states.to(torch.bfloat16),  # the MXFP4 Marlin kernel exists for BF16 activations only
            layer.w13_weight,
            layer.w2_weight,
            layer.w13_weight_scale,
            layer.w2_weight_scale,
            topk_output.topk_weights,
            topk_output.topk_ids,
            global_num_experts=ep.global_num_experts,
            expert_map=ep.expert_map,
        )
        return StandardCombineInput(hidden_states=output.to(hidden_states.dtype))


class QuarkW4A4MXFP4Cuda(QuarkW4A4MXFP4):
    """Quark MXFP4 W4A4 linear layer on CUDA: BF16 weight dequantized at load, MXFP4 qdq inputs."""

    def __init__(self, layer_name: str, weight_config: dict[str, Any], input_config: dict[str, Any], **kwargs: Any):
        super().__init__(weight_config, input_config, **kwargs)
        self.layer_name = layer_name
        _serialized_only(layer_name, self.is_checkpoint_mxfp4_serialized, self.dequantization_config)

    def create_weights(self, layer: torch.nn.Module, params_dtype: torch.dtype, **kwargs: Any) -> None:
        self.params_dtype = params_dtype
        super().create_weights(layer=layer, params_dtype=params_dtype, **kwargs)

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        weight = mxfp4.dequantize(layer.weight.data, layer.weight_scale.data, dtype=self.params_dtype)
        layer.weight = Parameter(weight, requires_grad=False)
        del layer.weight_scale

    def apply_weights(
        self, layer: torch.nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        return F.linear(fake_quantize_mxfp4(x), layer.weight, bias)


def quark_mxfp4_cuda_scheme(
    config: QuarkConfig, layer: torch.nn.Module, layer_name: str
) -> QuarkW4A4MXFP4Cuda | QuarkW4A4MXFp4MoECuda | None:
    """The CUDA scheme for a Quark MXFP4 W4A4 layer (a LinearBase or a FusedMoE), else None.

    None off CUDA (SGLang's aiter schemes apply on ROCm) and for every layer config that is not MXFP4
    W4A4 or that quantizes outputs/bias (SGLang's QuarkConfig then decides, or raises its own error).
    A QuarkConfig override asks it first, in both ``get_linear_scheme(self, layer, layer_name)`` and
    ``get_moe_scheme(self, module, layer_name, **kwargs)`` (SGLang 0.5.23's keywords go on to ``super()``)::

        scheme = quark_mxfp4_cuda_scheme(self, layer, layer_name)  # `module` in get_moe_scheme
        if scheme is not None:
            return scheme
    """
    if not _is_cuda:
        return None
    layer_config = config._find_matched_config(layer_name, layer)
    if layer_config.get("output_tensors") or layer_config.get("bias"):
        return None
    weight_config, input_config = layer_config.get("weight"), layer_config.get("input_tensors")
    if not config._is_mx_fp4(weight_config, input_config):
        return None
    scheme_cls = QuarkW4A4MXFP4Cuda if isinstance(layer, LinearBase) else QuarkW4A4MXFp4MoECuda
    return scheme_cls(
        layer_name,
        weight_config,
        input_config,
        is_checkpoint_mxfp4_serialized=config.is_prequantized,
        dequantization_config=config.dequantization_config,
    )

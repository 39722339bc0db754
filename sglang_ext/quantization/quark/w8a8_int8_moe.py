"""QuarkW8A8Int8MoE: Quark INT8 W8A8 routed experts (and the shared expert when it is fused in as expert E).

The checkpoint stores every expert's gate/up/down projection separately (int8 ``[out, in]`` + per-channel
``weight_scale``). SGLang's Qwen3.5 loader maps ``mlp.experts.{e}.{gate,up,down}_proj.*`` (and, with the
shared expert fused, ``mlp.shared_expert.*`` as expert ``num_experts``) onto the fused parameters created
here, through FusedMoE's per-channel scale loading:

* ``w13_weight`` int8 ``[E, 2I, H]`` (gate rows, then up rows), ``w13_weight_scale`` ``[E, 2I]``
* ``w2_weight`` int8 ``[E, H, I]``, ``w2_weight_scale`` ``[E, H]``

where E counts the local routed experts plus the fused shared-expert slots (FusedMoE passes that number).
It runs SGLang's Triton fused MoE in its INT8 W8A8 per-channel mode, as SGLang's ``W8A8Int8MoEMethod``
does (activations quantized per token inside, ``amax / 127``), and on CPU, where Triton does not run,
:func:`sglang_ext.quantization.int8_fallback.int8_moe`.
"""

from typing import TYPE_CHECKING, Any

import torch
from torch.nn import Parameter

from sglang.srt.layers.moe import MoeRunner, MoeRunnerBackend, MoeRunnerConfig
from sglang.srt.layers.moe.moe_runner.triton import TritonMoeQuantInfo
from sglang.srt.layers.quantization.quark.schemes import QuarkMoEScheme
from sglang.srt.utils import set_weight_attrs

from sglang_ext.quantization.int8_fallback import int8_moe
from sglang_ext.quantization.quark.w8a8_int8 import flatten_scale_loader, unloaded_scale_error

if TYPE_CHECKING:
    from sglang.srt.layers.moe.token_dispatcher import CombineInput, StandardDispatchOutput


class QuarkW8A8Int8MoE(QuarkMoEScheme):
    def __init__(self, layer_name: str):
        self.layer_name = layer_name

    @classmethod
    def get_min_capability(cls) -> int:
        return 0

    def create_weights(
        self,
        layer: torch.nn.Module,
        num_experts: int,
        hidden_size: int,
        intermediate_size_per_partition: int,
        params_dtype: torch.dtype,
        **extra_weight_attrs: Any,
    ) -> None:
        from sglang.srt.layers.moe.fused_moe_triton import FusedMoeWeightScaleSupported

        if layer.use_triton_kernels or layer.use_flashinfer_trtllm_moe:
            # Those backends transpose or pad expert weights while loading; this scheme runs SGLang's Triton MoE.
            raise ValueError(
                f"{self.layer_name}: Quark INT8 MoE runs SGLang's Triton fused MoE; "
                "set --moe-runner-backend triton (or auto)"
            )
        intermediate = intermediate_size_per_partition
        shapes = {
            "w13_weight": (num_experts, 2 * intermediate, hidden_size),
            "w2_weight": (num_experts, hidden_size, intermediate),
        }
        for name, shape in shapes.items():
            weight = Parameter(torch.empty(shape, dtype=torch.int8), requires_grad=False)
            layer.register_parameter(name, weight)
            set_weight_attrs(weight, extra_weight_attrs)

        scale_attrs = {
            **extra_weight_attrs,
            "quant_method": FusedMoeWeightScaleSupported.CHANNEL.value,
            "weight_loader": flatten_scale_loader(extra_weight_attrs["weight_loader"]),
        }
        for name, shape in shapes.items():
            # float32 [E, out]; NaN marks channels no checkpoint tensor reached (checked after loading).
            scale = Parameter(torch.full(shape[:2], float("nan"), dtype=torch.float32), requires_grad=False)
            layer.register_parameter(f"{name}_scale", scale)
            set_weight_attrs(scale, scale_attrs)
        layer.w13_input_scale = None
        layer.w2_input_scale = None

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        for name in ("w13_weight_scale", "w2_weight_scale"):
            scale = getattr(layer, name).data
            if torch.isnan(scale).any():
                experts = torch.isnan(scale).any(dim=1).nonzero().flatten().tolist()
                raise unloaded_scale_error(self.layer_name, name, "local experts", experts)
            # [E, out, 1]: the per-channel layout SGLang's INT8 Triton MoE reads.
            setattr(layer, name, Parameter(scale.unsqueeze(-1), requires_grad=False))

    def create_moe_runner(self, layer: torch.nn.Module, moe_runner_config: MoeRunnerConfig) -> None:
        self.moe_runner_config = moe_runner_config
        self.runner = MoeRunner(MoeRunnerBackend.TRITON, moe_runner_config)

    def apply_weights(self, layer: torch.nn.Module, dispatch_output: "StandardDispatchOutput") -> "CombineInput":
        from sglang.srt.layers.moe.token_dispatcher import StandardCombineInput

        x = dispatch_output.hidden_states
        if x.device.type == "cpu":
            config = self.moe_runner_config
            if config.activation != "silu" or not config.is_gated or config.apply_router_weight_on_input:
                raise NotImplementedError(
                    f"{self.layer_name}: the CPU INT8 MoE serves gated SiLU experts with the router weight "
                    f"applied after down_proj (got activation={config.activation!r}, is_gated={config.is_gated}, "
                    f"apply_router_weight_on_input={config.apply_router_weight_on_input})"
                )
            topk_weights, topk_ids, _ = dispatch_output.topk_output
            out = int8_moe(
                x,
                layer.w13_weight,
                layer.w13_weight_scale,
                layer.w2_weight,
                layer.w2_weight_scale,
                topk_weights,
                topk_ids,
                config.routed_scaling_factor,
            )
            return StandardCombineInput(hidden_states=out)
        quant_info = TritonMoeQuantInfo(
            w13_weight=layer.w13_weight,
            w2_weight=layer.w2_weight,
            use_int8_w8a8=True,
            per_channel_quant=True,
            w13_scale=layer.w13_weight_scale,
            w2_scale=layer.w2_weight_scale,
            a13_scale=None,
            a2_scale=None,
        )
        return self.runner.run(dispatch_output, quant_info)

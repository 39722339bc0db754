"""An independent reference forward of a (quantized) checkpoint: transformers' Qwen3.5-MoE on the
dequantized weights, with each scheme's dynamic activation quantization applied where the checkpoint
quantizes a Linear, computed in float32. Activations reach the quantizer rounded to BF16, the serving
dtype, as the kernels' do (`quantization/mxfp4_moe_reference.py` does the same for one MoE layer).

This is what a serving path of the checkpoint should compute up to its kernels' own arithmetic:

* quark-mxfp4 (W4A4): inputs of every quantized Linear are MXFP4 quantize-dequantized per 32-group
  (`codecs.mxfp4.fake_quantize_activations`, Quark's dynamic rule, what MI355X computes);
* quark-w8a8-int8: inputs per-token INT8 quantize-dequantized (`codecs.int8.quantize_activations_per_token`);
* ct-mxfp4 and modelopt-nvfp4 on a GPU without FP4 units run weight-only (W4A16), so no activation
  quantization.
"""

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from sglang_ext.codecs import int8, mxfp4
from sglang_ext.formats import layout
from sglang_ext.formats.check import checkpoint_scheme
from sglang_ext.formats.schemes import QUARK_INT8, QUARK_MXFP4

ActivationQuantizer = Callable[[torch.Tensor], torch.Tensor]


def _int8_per_token(x: torch.Tensor) -> torch.Tensor:
    codes, scale = int8.quantize_activations_per_token(x)
    return (codes.float() * scale).to(x.dtype)


SERVING_DTYPE = torch.bfloat16
ACTIVATION_QUANTIZERS: dict[str, ActivationQuantizer] = {
    QUARK_MXFP4.name: mxfp4.fake_quantize_activations,
    QUARK_INT8.name: _int8_per_token,
}


def _quantized_experts_forward(experts: nn.Module, quantize: ActivationQuantizer) -> Callable:
    """transformers' eager `Qwen3_5MoeExperts.forward` with the activation quantizer before both GEMMs."""

    def forward(hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(hidden_states)
        for expert in top_k_index.unique().tolist():
            token, slot = torch.where(top_k_index == expert)
            gate, up = nn.functional.linear(quantize(hidden_states[token]), experts.gate_up_proj[expert]).chunk(2, -1)
            down = nn.functional.linear(quantize(experts.act_fn(gate) * up), experts.down_proj[expert])
            out.index_add_(0, token, (down * top_k_weights[token, slot, None]).to(out.dtype))
        return out

    return forward


def apply_activation_quantization(model: nn.Module, checkpoint: Path) -> int:
    """Hook the scheme's activation quantizer into every module `checkpoint` quantizes; returns how many
    modules were hooked (0 for BF16 and weight-only schemes)."""
    scheme, quant_config, config = checkpoint_scheme(Path(checkpoint))
    if scheme is None or scheme.name not in ACTIVATION_QUANTIZERS:
        return 0
    scheme_quantize = ACTIVATION_QUANTIZERS[scheme.name]

    def quantize(x: torch.Tensor) -> torch.Tensor:
        return scheme_quantize(x.to(SERVING_DTYPE)).to(x.dtype)

    quantized = {e.module for e in layout.expected_tensors(config, scheme, quant_config) if e.precision == scheme.precision}
    hooked = 0
    for name, module in model.named_modules():
        if name in quantized and isinstance(module, nn.Linear):
            module.register_forward_pre_hook(lambda _, args: (quantize(args[0]), *args[1:]))
            hooked += 1
        elif name.endswith("mlp.experts") and f"{name}.0.gate_proj" in quantized:
            module.forward = _quantized_experts_forward(module, quantize)
            hooked += 1
    return hooked


def reference_model(checkpoint: Path, dequantized: Path, device: str = "cpu") -> nn.Module:
    """transformers' model of `dequantized` (see `dequantize.write_dequantized`) in float32 on `device`,
    with `checkpoint`'s activation quantization hooked in."""
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(dequantized, dtype=torch.float32).to(device).eval()
    apply_activation_quantization(model, checkpoint)
    return model

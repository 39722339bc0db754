"""INT8 W8A8 linear and MoE in plain torch, for devices where SGLang has no int8 kernel.

:func:`int8_linear` serves linear layers on CPU, on ROCm (sgl_kernel's `int8_scaled_mm` is CUDA-only;
gfx1151 Strix Halo has no int8 matrix core anyway) and on CUDA GPUs that kernel does not cover;
:func:`int8_moe` serves the experts on CPU, where SGLang's Triton MoE cannot run. The math is the
quantized math the kernels do:

* activations quantized per token with Quark's rule (:func:`sglang_ext.codecs.int8.quantize_activations_per_token`,
  the rule the checkpoint was calibrated with);
* int8 x int8 products summed, then scaled by ``x_scale[token] * weight_scale[channel]`` in float32.

The codes are multiplied in a float dtype that holds every int8 value exactly. ``float32`` reproduces the
int32 accumulation exactly while partial sums stay below 2**24 (always for K <= 1024, since
``|code products| <= 128 * 128``; for larger K only near-adversarial inputs exceed it). ``bfloat16`` runs
on GPU matrix cores that lack int8; its GEMM accumulates in float32 but rounds the sum to bfloat16 once,
a relative error of at most 2**-8 (bfloat16's unit roundoff) before scaling.
"""

import torch
import torch.nn.functional as F

from sglang_ext.codecs.int8 import quantize_activations_per_token


def _scaled_int8_matmul(
    x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, matmul_dtype: torch.dtype
) -> torch.Tensor:
    """``quantize(x) @ dequantize(weight).T`` in float32.

    x ``[..., K]``; weight int8 ``[N, K]``; weight_scale ``[N]`` or ``[N, 1]``.
    """
    codes, x_scale = quantize_activations_per_token(x)
    accumulator = torch.matmul(codes.to(matmul_dtype), weight.to(matmul_dtype).t()).float()
    return accumulator * x_scale * weight_scale.float().reshape(-1)


def int8_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    matmul_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``x [..., K]`` through an INT8 W8A8 linear with ``weight`` int8 ``[N, K]``; returns ``[..., N]`` in x.dtype."""
    out = _scaled_int8_matmul(x, weight, weight_scale, matmul_dtype)
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype)


def int8_moe(
    x: torch.Tensor,
    w13: torch.Tensor,
    w13_scale: torch.Tensor,
    w2: torch.Tensor,
    w2_scale: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    routed_scaling_factor: float | None = None,
    matmul_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """SGLang's fused MoE in INT8 W8A8 per-channel mode (gated SiLU, router weight applied after down_proj).

    x ``[T, H]``; w13 int8 ``[E, 2I, H]`` (gate rows then up rows) with ``w13_scale [E, 2I(, 1)]``; w2 int8
    ``[E, H, I]`` with ``w2_scale [E, H(, 1)]``; topk_weights / topk_ids ``[T, k]``. As in the Triton kernel,
    the gate_up output and the activation are rounded to x.dtype, and each expert's down output is weighted
    in float32; the top-k sum stays float32 here. Ids outside ``[0, E)`` (experts of other EP ranks) add
    nothing.
    """
    intermediate = w2.shape[2]
    out = torch.zeros(x.shape[0], w2.shape[1], dtype=torch.float32, device=x.device)
    for expert in topk_ids.unique().tolist():
        if not 0 <= expert < w13.shape[0]:
            continue
        tokens, slots = (topk_ids == expert).nonzero(as_tuple=True)
        gate_up = _scaled_int8_matmul(x[tokens], w13[expert], w13_scale[expert], matmul_dtype).to(x.dtype)
        gate, up = gate_up.split(intermediate, dim=-1)
        activation = (F.silu(gate.float()) * up.float()).to(x.dtype)
        down = _scaled_int8_matmul(activation, w2[expert], w2_scale[expert], matmul_dtype)
        out.index_add_(0, tokens, down * topk_weights[tokens, slots].float().unsqueeze(-1))
    if routed_scaling_factor is not None:
        out = out * routed_scaling_factor
    return out.to(x.dtype)

"""Plain-torch reference of a Quark MXFP4 W4A4 MoE, computed from the stored bytes in float32.

It is the oracle for the CUDA path (tests/gpu/check_mxfp4_moe_kernels.py) and for any reference forward
of an MXFP4 checkpoint: weights are decoded with :mod:`sglang_ext.codecs.mxfp4`, and every expert GEMM
input is quantize-dequantized to MXFP4 per 32-group as Quark's dynamic input quantizer does. Intermediate
activations are rounded to the serving dtype before they are quantized (``act_dtype``), as a BF16 model's
are, so a kernel can differ only by its summation order and the rounding of its outputs (and, rarely, by
an activation that this moves across an MXFP4 rounding boundary).
"""

import torch
import torch.nn.functional as F

from sglang_ext.codecs import mxfp4


def dequantize_experts(
    w13: torch.Tensor, w13_scale: torch.Tensor, w2: torch.Tensor, w2_scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stacked expert bytes as FusedMoE holds them (``w13`` uint8 ``[E, 2I, H/2]`` gate rows then up rows,
    ``w2`` uint8 ``[E, H, I/2]``, E8M0 scales ``[..., K/32]``) to float32 ``[E, 2I, H]`` and ``[E, H, I]``."""
    return (
        mxfp4.dequantize(w13, w13_scale, dtype=torch.float32),
        mxfp4.dequantize(w2, w2_scale, dtype=torch.float32),
    )


def _fake_quantize(x: torch.Tensor, act_dtype: torch.dtype) -> torch.Tensor:
    return mxfp4.fake_quantize_activations(x.to(act_dtype)).float()


def reference_w4a4_moe(
    hidden_states: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    act_dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """``sum_k topk_weights[:, k] * expert_{topk_ids[:, k]}(x)`` in float32 ``[M, H]``.

    ``w13``/``w2`` are dequantized float32 experts (:func:`dequantize_experts`); each expert computes
    ``qdq(silu(gate) * up) @ w2^T`` with ``gate, up = qdq(x) @ w13^T``, ``qdq`` MXFP4 per 32-group.
    """
    x = _fake_quantize(hidden_states, act_dtype)
    out = torch.zeros(hidden_states.shape[0], w2.shape[1], dtype=torch.float32, device=hidden_states.device)
    for expert in topk_ids.unique().tolist():
        tokens, slot = (topk_ids == expert).nonzero(as_tuple=True)
        gate, up = (x[tokens] @ w13[expert].T).to(act_dtype).float().chunk(2, dim=-1)
        activated = _fake_quantize(F.silu(gate) * up, act_dtype)
        y = activated @ w2[expert].T
        out.index_add_(0, tokens, y * topk_weights[tokens, slot].float().unsqueeze(-1))
    return out

"""The fused shared expert's routing slot in one launch: sigmoid(shared_expert_gate(x)) appended to the top-k.

With the shared expert fused (FSE), SGLang 0.5.17 gives every token expert slot E with weight
sigmoid(shared_expert_gate(x)). On CUDA that is five launches per MoE layer, serial on the main stream before
the MoE: the 1-row gate through cuBLAS (a dot and a reduction kernel), `F.sigmoid`, its cast to float32, and
`fused_append_shared_experts_with_weights`. At batch 1 they took 311 µs of a 3,955 µs BF16 step (40 layers,
H200, docs/performance.md run F); unfused, the same gate runs beside the shared expert on a second stream.
Here one program per token computes the gate's dot product in float32, its sigmoid, and writes the token's
top-k with slot E appended.

The weight is sigmoid of the float32 dot product, kept in float32: SGLang's CUDA path rounds the logit and the
sigmoid to the activation dtype first (within 2**-8 of this), as its aiter path does not.
"""

import torch
import triton
import triton.language as tl


@triton.jit
def _gate_and_append_shared_kernel(x_ptr, stride_x, gate_ptr, ids_ptr, weights_ptr, out_ids_ptr, out_weights_ptr,
                                   shared_id, scale, H: tl.constexpr, K: tl.constexpr, BLOCK_H: tl.constexpr,
                                   BLOCK_K: tl.constexpr):  # fmt: skip
    token = tl.program_id(0)
    acc = tl.zeros([BLOCK_H], dtype=tl.float32)
    for start in range(0, H, BLOCK_H):
        offs = start + tl.arange(0, BLOCK_H)
        x = tl.load(x_ptr + token * stride_x + offs, mask=offs < H, other=0.0)
        gate = tl.load(gate_ptr + offs, mask=offs < H, other=0.0)
        acc += x.to(tl.float32) * gate.to(tl.float32)
    weight = tl.sigmoid(tl.sum(acc, axis=0)) * scale

    offs_k = tl.arange(0, BLOCK_K)
    in_k = offs_k < K
    ids = tl.load(ids_ptr + token * K + offs_k, mask=in_k)
    tl.store(out_ids_ptr + token * (K + 1) + offs_k, ids, mask=in_k)
    tl.store(out_weights_ptr + token * (K + 1) + offs_k, tl.load(weights_ptr + token * K + offs_k, mask=in_k), mask=in_k)
    tl.store(out_ids_ptr + token * (K + 1) + K, shared_id.to(ids.dtype))
    tl.store(out_weights_ptr + token * (K + 1) + K, weight.to(out_weights_ptr.dtype.element_ty))


def gate_and_append_shared(x: torch.Tensor, gate_weight: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor,
                           shared_id: int, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(ids, weights) of shape (M, K + 1): each token's top-k, then expert `shared_id` with weight
    scale * sigmoid(x · gate_weight). x is (M, H) with unit stride along H, gate_weight (1, H) or (H,)."""
    tokens, hidden = x.shape
    gate = gate_weight.reshape(-1)
    if gate.numel() != hidden or x.stride(1) != 1 or not gate.is_contiguous():
        raise ValueError(f"gate_and_append_shared: x {tuple(x.shape)} (strides {x.stride()}), gate "
                         f"{tuple(gate_weight.shape)}: expected one contiguous gate row as long as x's rows")  # fmt: skip
    topk_ids, topk_weights = topk_ids.contiguous(), topk_weights.contiguous()
    k = topk_ids.shape[1]
    out_ids = torch.empty((tokens, k + 1), dtype=topk_ids.dtype, device=x.device)
    out_weights = torch.empty((tokens, k + 1), dtype=topk_weights.dtype, device=x.device)
    if tokens:
        _gate_and_append_shared_kernel[(tokens,)](
            x, x.stride(0), gate, topk_ids, topk_weights, out_ids, out_weights, shared_id, scale,
            H=hidden, K=k, BLOCK_H=min(triton.next_power_of_2(hidden), 1024), BLOCK_K=triton.next_power_of_2(k),
        )  # fmt: skip
    return out_ids, out_weights

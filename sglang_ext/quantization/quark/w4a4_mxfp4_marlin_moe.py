"""MXFP4 W4A4 MoE on GPUs without FP4 matrix units, through SGLang's MXFP4 Marlin MoE GEMM.

What a Quark MXFP4 W4A4 MoE computes (and MI355X's aiter kernel runs natively) is

    x -> MXFP4 qdq -> x @ W13^T -> silu(gate) * up -> MXFP4 qdq -> @ W2^T -> sum_k topk_weight_k * y_k

MXFP4 values (weights and quantize-dequantized activations alike) are exact in BF16, so SGLang's BF16
Marlin GEMM with MXFP4 weights (E8M0 scales, FP32 accumulation) forms the same products; only the
summation order and the BF16 rounding of each GEMM's output differ from MI355X.

The sequence is SGLang's ``fused_marlin_moe`` (layers/moe/fused_moe_triton/fused_marlin_moe.py) for its
MXFP4 case, with the second quantize-dequantize put between the activation and the down GEMM: that
function has no hook there, so its steps are spelled out here with the same kernels and arguments.
"""

from dataclasses import dataclass

import torch

from sglang.srt.layers.moe.fused_moe_triton import moe_align_block_size
from sglang.srt.layers.quantization.marlin_utils import marlin_make_workspace
from sglang.srt.layers.quantization.utils import get_scalar_types
from sglang.srt.utils import is_cuda
from sglang_ext.kernels.mxfp4_act_quant import fake_quantize_mxfp4

# sgl_kernel's compiled ops load only where a GPU is present (as in fused_marlin_moe.py); the shape
# rule below is also used, and tested, without one.
if is_cuda():
    from sgl_kernel import moe_sum_reduce

    from sglang.kernels.ops.activation.activation import silu_and_mul
    from sglang.kernels.ops.moe.moe_wna16_marlin import moe_wna16_marlin_gemm

_, scalar_types = get_scalar_types()

# Marlin MoE thread tiles are at least 128 wide in N and 64 deep in K (moe_wna16_marlin.cuh
# small/large_batch_thread_configs); SGLang pads the intermediate dimension up to 64 itself
# (marlin_utils_fp4.prepare_moe_mxfp4_layer_for_marlin) but never the hidden dimension.
_HIDDEN_MULTIPLE = 128
_GROUP = 32


def marlin_shape_error(hidden_size: int, intermediate_size_per_partition: int) -> str | None:
    """Why Marlin cannot run this MoE shape, or None when it can."""
    if hidden_size % _HIDDEN_MULTIPLE:
        return (
            f"hidden_size {hidden_size} is not a multiple of {_HIDDEN_MULTIPLE} (Marlin's smallest N tile for the "
            "down projection)"
        )
    if intermediate_size_per_partition % _GROUP:
        return (
            f"moe_intermediate_size per TP rank {intermediate_size_per_partition} is not a multiple of the MXFP4 "
            f"group {_GROUP}; use a TP size that keeps whole groups per rank, or expert parallelism"
        )
    return None


def _block_size_m(num_tokens: int, top_k: int, num_experts: int) -> int:
    # fused_marlin_moe's choice: the smallest M tile that most experts fill.
    for block_size_m in (8, 16, 32, 48, 64):
        if num_tokens * top_k / num_experts / block_size_m < 0.9:
            return block_size_m
    return 64


@dataclass(frozen=True)
class MarlinRouting:
    """Tokens sorted by expert in Marlin's M tiles, shared by both GEMMs of one MoE call."""

    sorted_token_ids: torch.Tensor
    expert_ids: torch.Tensor
    num_tokens_post_padded: torch.Tensor
    topk_weights: torch.Tensor
    block_size_m: int
    is_ep: bool
    workspace: torch.Tensor


def marlin_routing(
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    num_local_experts: int,
    global_num_experts: int = -1,
    is_ep: bool = False,
) -> MarlinRouting:
    if global_num_experts == -1:
        global_num_experts = num_local_experts
    block_size_m = _block_size_m(topk_ids.shape[0], topk_ids.shape[1], num_local_experts)
    sorted_token_ids, expert_ids, num_tokens_post_padded = moe_align_block_size(
        topk_ids, block_size_m, global_num_experts
    )
    # A fresh workspace per call, as SGLang's Marlin runner does, so captured CUDA graphs never share
    # Marlin's inter-block locks.
    workspace = marlin_make_workspace(topk_ids.device, max_blocks_per_sm=4)
    return MarlinRouting(
        sorted_token_ids, expert_ids, num_tokens_post_padded, topk_weights, block_size_m, is_ep, workspace
    )


def marlin_mxfp4_gemm(
    a: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    routing: MarlinRouting,
    top_k: int,
    mul_topk_weights: bool,
    size_n: int,
) -> torch.Tensor:
    """One grouped GEMM ``[a.shape[0] * top_k, size_n]`` in BF16, called as fused_marlin_moe calls it.

    With ``top_k`` = k, ``a`` has one row per token and the output one row per (token, slot), each through
    that slot's expert; with ``top_k`` = 1, ``a`` already has one row per (token, slot) in that order.
    """
    # Marlin skips the rows of experts this rank does not hold, so the output starts at zero.
    out = torch.zeros(a.shape[0] * top_k, size_n, dtype=torch.bfloat16, device=a.device)
    return moe_wna16_marlin_gemm(
        a,
        out,
        weight,
        None,  # bias
        weight_scale,
        None,  # global scale (NVFP4 only)
        None,  # zero points
        None,  # g_idx
        None,  # perm
        routing.workspace,
        routing.sorted_token_ids,
        routing.expert_ids,
        routing.num_tokens_post_padded,
        routing.topk_weights,
        moe_block_size=routing.block_size_m,
        top_k=top_k,
        mul_topk_weights=mul_topk_weights,
        is_ep=routing.is_ep,
        b_q_type=scalar_types.float4_e2m1f,
        size_m=a.shape[0],
        size_n=size_n,
        size_k=a.shape[1],
        is_k_full=True,
        use_atomic_add=False,  # fused_marlin_moe never uses it for MXFP4
        use_fp32_reduce=True,
        is_zp_float=False,
    )


def marlin_mxfp4_w4a4_moe(
    hidden_states: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    w13_scale: torch.Tensor,
    w2_scale: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    global_num_experts: int = -1,
    expert_map: torch.Tensor | None = None,
) -> torch.Tensor:
    """Routed MoE output ``[M, hidden]`` in BF16 for Marlin-repacked MXFP4 experts.

    ``w13``/``w2``/scales are what ``prepare_moe_mxfp4_layer_for_marlin`` leaves on the layer
    (gate rows before up rows, E8M0 scales); ``expert_map``/``global_num_experts`` as SGLang's
    ``build_marlin_moe_quant_info`` derives them from the dispatcher under expert parallelism.
    """
    if hidden_states.dtype != torch.bfloat16:
        raise TypeError(f"MXFP4 Marlin is only built for bfloat16 activations, got {hidden_states.dtype}")
    num_tokens, hidden_size = hidden_states.shape
    if num_tokens == 0:  # an idle rank under data-parallel attention still runs the layer
        return torch.empty_like(hidden_states)
    intermediate = w2.shape[1] * 16  # Marlin stores w2 as [E, K/16, ...] tiles
    top_k = topk_ids.shape[1]
    routing = marlin_routing(topk_weights, topk_ids, w13.shape[0], global_num_experts, expert_map is not None)

    gate_up = marlin_mxfp4_gemm(
        fake_quantize_mxfp4(hidden_states), w13, w13_scale, routing, top_k, False, 2 * intermediate
    )
    activated = fake_quantize_mxfp4(silu_and_mul(gate_up))
    down = marlin_mxfp4_gemm(activated, w2, w2_scale, routing, 1, True, hidden_size)
    output = torch.empty_like(hidden_states)
    # The top-k weights were applied by the down GEMM (mul_topk_weights), so this is a plain sum.
    moe_sum_reduce(down.view(num_tokens, top_k, hidden_size), output, 1.0)
    return output

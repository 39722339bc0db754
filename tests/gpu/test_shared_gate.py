"""sglang_ext.kernels.shared_gate on the GPU at the 35B's and the 397B-per-GPU's hidden size and top-k, decode and
prefill token counts: the top-k copied bit for bit, the shared slot's weight within float32 rounding of the exact
sigmoid, the expert ids SGLang 0.5.17's own path (cuBLAS gate, `F.sigmoid`, `fused_append_shared_experts_with_
weights`) gives and its weight within that path's BF16 rounding; a CUDA graph replays what eager computes.
tests/test_shared_gate_kernel.py and tests/test_shared_gate_sglang.py check the same on a CPU."""

import pytest
import torch
import torch.nn.functional as F

from sglang_ext.kernels.shared_gate import gate_and_append_shared

pytestmark = pytest.mark.gpu
SHAPES = [(2048, 8, 256), (4096, 10, 512)]  # hidden, top-k, experts: the 35B's, the 397B per GPU's


def routed(tokens: int, hidden: int, k: int, experts: int):
    x = torch.randn(tokens, hidden, device="cuda").bfloat16()
    gate = (torch.randn(1, hidden, device="cuda") / hidden**0.5).bfloat16()
    ids = torch.stack([torch.randperm(experts, device="cuda")[:k] for _ in range(tokens)]).int()
    return x, gate, ids, torch.rand(tokens, k, device="cuda").softmax(-1)


@pytest.mark.parametrize("tokens", [1, 2, 8, 64, 4096])
@pytest.mark.parametrize("hidden,k,experts", SHAPES)
def test_against_the_exact_sigmoid_and_sglangs_path(tokens: int, hidden: int, k: int, experts: int) -> None:
    from sglang.kernels.ops.moe.fused_moe_triton_kernels import fused_append_shared_experts_with_weights

    x, gate, ids, weights = routed(tokens, hidden, k, experts)
    out_ids, out_weights = gate_and_append_shared(x, gate, ids, weights, shared_id=experts)
    assert torch.equal(out_ids[:, :k], ids) and torch.equal(out_weights[:, :k], weights)
    exact = torch.sigmoid(x.double() @ gate.double().t()).squeeze(1)
    assert torch.allclose(out_weights[:, k].double(), exact, rtol=1e-5, atol=0)

    sglang_ids, sglang_weights = fused_append_shared_experts_with_weights(ids, weights, F.sigmoid(F.linear(x, gate)), 1, N=experts)
    assert torch.equal(out_ids, sglang_ids)
    assert torch.allclose(out_weights, sglang_weights, rtol=0, atol=2.0**-7)


def test_cuda_graph_replays_eager() -> None:
    x, gate, ids, weights = routed(8, 2048, 8, 256)
    graph = torch.cuda.CUDAGraph()
    gate_and_append_shared(x, gate, ids, weights, 256)  # compiles before capture, as SGLang's warm-up runs do
    with torch.cuda.graph(graph):
        captured = gate_and_append_shared(x, gate, ids, weights, 256)
    for _ in range(3):
        x.copy_(torch.randn_like(x))
        graph.replay()
        assert all(torch.equal(a, b) for a, b in zip(captured, gate_and_append_shared(x, gate, ids, weights, 256), strict=True))

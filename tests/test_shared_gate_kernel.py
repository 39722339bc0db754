"""sglang_ext.kernels.shared_gate in Triton's interpreter on a CPU: the top-k copied bit for bit, slot E appended
with scale * sigmoid(x · gate) within float32 rounding of a float64 reference, at the 35B's and the 397B-per-GPU's
hidden sizes and top-k (8 and 10), and the sm90 lowering one launch of plain loads (no tensor cores, no atomics).
The test beside SGLang's own path is tests/test_shared_gate_sglang.py; tests/gpu/test_shared_gate.py runs it on
a GPU."""

import pytest
import torch

from sglang_ext.kernels.shared_gate import gate_and_append_shared
from tests.triton_cpu import sm90_ptx


def routed(tokens: int, hidden: int, k: int, experts: int = 256, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x = (torch.randn(tokens, hidden, generator=generator) * 2).bfloat16()
    gate = (torch.randn(1, hidden, generator=generator) / hidden**0.5).bfloat16()
    ids = torch.stack([torch.randperm(experts, generator=generator)[:k] for _ in range(tokens)]).int()
    weights = torch.rand(tokens, k, generator=generator).softmax(-1)
    return x, gate, ids, weights


@pytest.mark.parametrize("tokens", [1, 3, 8, 64])
@pytest.mark.parametrize("hidden,k", [(2048, 8), (4096, 10)])
@pytest.mark.parametrize("scale", [1.0, 0.25])
def test_appends_the_shared_slot_to_each_tokens_top_k(tokens: int, hidden: int, k: int, scale: float) -> None:
    x, gate, ids, weights = routed(tokens, hidden, k)
    out_ids, out_weights = gate_and_append_shared(x, gate, ids, weights, shared_id=256, scale=scale)

    assert out_ids.dtype == torch.int32 and out_weights.dtype == torch.float32
    assert torch.equal(out_ids[:, :k], ids) and torch.equal(out_weights[:, :k], weights)
    assert torch.equal(out_ids[:, k], torch.full((tokens,), 256, dtype=torch.int32))
    exact = torch.sigmoid(x.double() @ gate.double().t()).squeeze(1) * scale
    assert torch.allclose(out_weights[:, k].double(), exact, rtol=2e-6, atol=0)


def test_takes_rows_of_a_wider_tensor_and_no_tokens() -> None:
    x, gate, ids, weights = routed(4, 2048, 8)
    wide = torch.cat([x, torch.zeros_like(x)], dim=1)[:, :2048]  # row stride 4096, as a slice of a fused output
    assert torch.equal(gate_and_append_shared(wide, gate, ids, weights, 256)[1], gate_and_append_shared(x, gate, ids, weights, 256)[1])
    empty_ids, empty_weights = gate_and_append_shared(x[:0], gate, ids[:0], weights[:0], 256)
    assert empty_ids.shape == (0, 9) and empty_weights.shape == (0, 9)


def test_refuses_a_gate_of_another_length() -> None:
    x, gate, ids, weights = routed(2, 2048, 8)
    with pytest.raises(ValueError, match=r"gate \(1, 1024\): expected one contiguous gate row as long as x's rows"):
        gate_and_append_shared(x, gate[:, :1024], ids, weights, 256)


def test_lowers_for_hopper_as_one_pass_of_plain_loads() -> None:
    ptx = sm90_ptx("sglang_ext.kernels.shared_gate:_gate_and_append_shared_kernel",
                   {"x_ptr": "*bf16", "stride_x": "i32", "gate_ptr": "*bf16", "ids_ptr": "*i32", "weights_ptr": "*fp32",
                    "out_ids_ptr": "*i32", "out_weights_ptr": "*fp32", "shared_id": "i32", "scale": "fp32",
                    "H": "constexpr", "K": "constexpr", "BLOCK_H": "constexpr", "BLOCK_K": "constexpr"},
                   {"H": 2048, "K": 8, "BLOCK_H": 1024, "BLOCK_K": 8})  # fmt: skip
    assert "ld.global" in ptx and "ex2.approx" in ptx  # the sigmoid's exponential
    assert "mma" not in ptx and "atom." not in ptx

"""sglang_ext.kernels.gemv on the GPU, autotuned, at every dense-linear weight shape of the 35B and the 397B
per-GPU shape (`eval.perf.bench_gemv.dense_linears`), M = 1 to 8: BF16 within half a bfloat16 ulp plus float32
summation error of the exact product; INT8 equal to sgl_kernel's int8_scaled_mm bit for bit, its accumulator
exact; the INT8 GEMV that quantizes its own rows equal to per_token_quant_int8 then int8_scaled_mm, bit for bit;
split K deterministic; a CUDA graph captured after the first (tuning) call replays what eager computes;
and the hook routes here on sm90. tests/test_gemv_kernel.py checks the same in Triton's interpreter."""

import pytest
import torch

from eval.perf.bench_gemv import REAL_SHAPES, dense_linears
from sglang_ext import small_m_gemv
from sglang_ext.kernels import gemv as kernels
from sglang_ext.kernels.gemv import int8_gemv, int8_scaled_gemv
from tests.gemv_numerics import exact, int32_products, within_rounding

pytestmark = pytest.mark.gpu
BF16_ROUNDING = 2.0**-8  # round to nearest even: half an ulp
LINEARS = [linear for shape in REAL_SHAPES for linear in dense_linears(shape)]
BF16_SHAPES = sorted({(linear.n, linear.k) for linear in LINEARS})
INT8_SHAPES = sorted({(linear.n, linear.k) for linear in LINEARS if linear.int8})
TOKENS = range(1, kernels.MAX_M + 1)


def shape_id(shape: tuple[int, int]) -> str:
    return f"{shape[0]}x{shape[1]}"


@pytest.mark.parametrize("n,k", BF16_SHAPES, ids=map(shape_id, BF16_SHAPES))
def test_bf16_within_rounding_at_real_shapes(n: int, k: int) -> None:
    weight = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * k**-0.5
    bias = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    for m in TOKENS:
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        with_bias = bias if m % 2 else None
        out = kernels.gemv(x, weight, with_bias)
        error = (out.double() - exact(x, weight, with_bias)).abs().max().item()
        assert within_rounding(out, x, weight, with_bias, BF16_ROUNDING), (m, error)


@pytest.mark.parametrize("n,k", INT8_SHAPES, ids=map(shape_id, INT8_SHAPES))
def test_int8_is_int8_scaled_mm_bit_for_bit(n: int, k: int) -> None:
    from sgl_kernel import int8_scaled_mm
    from sglang.kernels.ops.quantization.int8_kernel import per_token_quant_int8

    weight = torch.randint(-127, 128, (n, k), device="cuda", dtype=torch.int8)
    w_scale = torch.rand(n, 1, device="cuda") / 100
    for m in TOKENS:
        x_q, x_scale = per_token_quant_int8(torch.randn(m, k, device="cuda", dtype=torch.bfloat16))
        ours = int8_scaled_gemv(x_q, x_scale, weight, w_scale, torch.bfloat16)
        assert torch.equal(ours, int8_scaled_mm(x_q, weight.t(), x_scale, w_scale, torch.bfloat16)), m
        accumulator = int8_scaled_gemv(x_q, torch.ones_like(x_scale), weight, torch.ones_like(w_scale), torch.float32)
        assert torch.equal(accumulator.long(), int32_products(x_q, weight)), m  # below 2**24: exact in float32


@pytest.mark.parametrize("n,k", INT8_SHAPES, ids=map(shape_id, INT8_SHAPES))
def test_int8_gemv_is_sglangs_two_steps_bit_for_bit(n: int, k: int) -> None:
    """SGLang's W8A8 INT8 linear, per_token_quant_int8 then int8_scaled_mm, in one launch: the same output."""
    from sgl_kernel import int8_scaled_mm
    from sglang.kernels.ops.quantization.int8_kernel import per_token_quant_int8

    weight = torch.randint(-127, 128, (n, k), device="cuda", dtype=torch.int8)
    w_scale = torch.rand(n, 1, device="cuda") / 100
    for m in TOKENS:
        x = (torch.randn(m, k, device="cuda") * torch.rand(m, 1, device="cuda") * 4).bfloat16()  # rows of many ranges
        x_q, x_scale = per_token_quant_int8(x)
        assert torch.equal(int8_gemv(x, weight, w_scale, torch.bfloat16),
                           int8_scaled_mm(x_q, weight.t(), x_scale, w_scale, torch.bfloat16)), m  # fmt: skip


SPLIT_K = next(c for c in kernels.CONFIGS if c.kwargs == {"BLOCK_N": 32, "BLOCK_K": 256, "SPLIT_K": 8})


def test_split_k_is_deterministic() -> None:
    """Whichever program of a column block finishes last, the partials are summed in split order."""
    weight = torch.randn(2048, 4096, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(1, 4096, device="cuda", dtype=torch.bfloat16)
    first = kernels.gemv(x, weight, config=SPLIT_K)
    assert within_rounding(first, x, weight, None, BF16_ROUNDING)
    assert all(torch.equal(kernels.gemv(x, weight, config=SPLIT_K), first) for _ in range(100))


@pytest.mark.parametrize("config", [None, SPLIT_K], ids=["tuned", "split-k"])
def test_cuda_graph_replays_eager(config) -> None:
    weight = torch.randn(2048, 4096, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(4, 4096, device="cuda", dtype=torch.bfloat16)
    kernels.gemv(x, weight, config=config)  # tunes, as SGLang's warm-up runs do before it captures
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = kernels.gemv(x, weight, config=config)
    for _ in range(3):
        x.copy_(torch.randn_like(x))
        graph.replay()
        assert torch.equal(captured, kernels.gemv(x, weight, config=config))


def test_hook_routes_decode_tokens_here(monkeypatch: pytest.MonkeyPatch) -> None:
    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the hook routes on sm90 only")
    monkeypatch.setattr(small_m_gemv, "_every_point", True)  # SGLANG_EXT_SMALL_M_GEMV=all: measured or not
    weight = torch.randn(2048, 4096, device="cuda", dtype=torch.bfloat16)
    assert small_m_gemv.routes(torch.randn(8, 4096, device="cuda", dtype=torch.bfloat16), weight)
    assert not small_m_gemv.routes(torch.randn(9, 4096, device="cuda", dtype=torch.bfloat16), weight)

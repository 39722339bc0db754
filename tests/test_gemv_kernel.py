"""sglang_ext.kernels.gemv in Triton's interpreter on a CPU: BF16 within rounding of a float64 reference,
INT8 accumulated exactly in int32 and scaled in sgl_kernel's order, split-K deterministic; each config family
(one column block per program, K split across programs) at K = 2048 and 4096 (the 35B and 397B-per-GPU hidden
sizes) with small N. tests/gpu/test_gemv.py runs the real shapes on the GPU, autotuned."""

import re

import pytest
import torch
import triton

from sglang_ext.kernels import gemv as kernels
from sglang_ext.kernels.gemv import CONFIGS, gemv, int8_gemv, int8_scaled_gemv
from tests.gemv_numerics import exact, int32_products, per_token_quant_int8_reference, within_rounding
from tests.triton_cpu import BF16_ROUNDING, bf16_dot, sm90_ptx  # noqa: F401 (fixture)


def config(block_n: int, block_k: int, split: int) -> triton.Config:
    return next(c for c in CONFIGS if c.kwargs == {"BLOCK_N": block_n, "BLOCK_K": block_k, "SPLIT_K": split})


WHOLE_K = config(16, 512, 1)
SPLIT_K = config(32, 256, 4)
SHAPES = [(64, 2048), (40, 4096), (1, 2048)]  # N past a block, and the shared-expert gate's single row


@pytest.mark.parametrize("m", range(1, kernels.MAX_M + 1))
@pytest.mark.parametrize("n,k", SHAPES)
@pytest.mark.parametrize("cfg", [WHOLE_K, SPLIT_K], ids=["whole-k", "split-k"])
def test_bf16_within_rounding_of_exact(bf16_dot, m: int, n: int, k: int, cfg: triton.Config) -> None:
    generator = torch.Generator().manual_seed(m * 1000 + n)
    x = torch.randn(m, k, generator=generator).bfloat16()
    weight = (torch.randn(n, k, generator=generator) * k**-0.5).bfloat16()  # unit-scale outputs, as in a model
    bias = torch.randn(n, generator=generator).bfloat16() if m % 2 else None
    out = gemv(x, weight, bias, config=cfg)
    assert out.shape == (m, n) and out.dtype == torch.bfloat16
    assert within_rounding(out, x, weight, bias, BF16_ROUNDING), (out.double() - exact(x, weight, bias)).abs().max()


def test_leading_dims_kept_and_fp16_served(bf16_dot) -> None:
    x = torch.randn(2, 3, 2048).half()
    weight = (torch.randn(48, 2048) / 45).half()
    out = gemv(x, weight, config=SPLIT_K)
    assert out.shape == (2, 3, 48) and out.dtype == torch.float16
    assert within_rounding(out, x, weight, None, 2.0**-10)  # float16: 11 significant bits, truncated


def test_split_k_is_deterministic_and_leaves_tickets_at_zero(bf16_dot) -> None:
    x = torch.randn(8, 4096).bfloat16()
    weight = torch.randn(64, 4096).bfloat16()
    one_step_each = config(64, 128, 32)  # 32 programs of one K step for the one column block
    first = gemv(x, weight, config=one_step_each)
    again = gemv(x, weight, config=one_step_each)
    assert torch.equal(first, again)
    assert not kernels._weight_tickets(weight).any()


def int8_inputs(m: int, n: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x_q = torch.randint(-127, 128, (m, k), generator=generator, dtype=torch.int8)  # per_token_quant_int8's range
    weight = torch.randint(-127, 128, (n, k), generator=generator, dtype=torch.int8)
    return x_q, weight


@pytest.mark.parametrize("m", range(1, kernels.MAX_M + 1))
@pytest.mark.parametrize("n,k", SHAPES)
@pytest.mark.parametrize("cfg", [WHOLE_K, SPLIT_K], ids=["whole-k", "split-k"])
def test_int8_accumulates_exactly(m: int, n: int, k: int, cfg: triton.Config) -> None:
    """Unit scales and a float32 output give the int32 accumulator itself (all below 2**24 here, so exact)."""
    x_q, weight = int8_inputs(m, n, k, seed=m)
    ones = torch.ones(m, 1), torch.ones(n, 1)
    out = int8_scaled_gemv(x_q, ones[0], weight, ones[1], torch.float32, config=cfg)
    expected = int32_products(x_q, weight)
    assert expected.abs().max() < 2**24
    assert torch.equal(out.long(), expected)


@pytest.mark.parametrize("cfg", [WHOLE_K, SPLIT_K], ids=["whole-k", "split-k"])
def test_int8_accumulator_is_int32_not_float(cfg: triton.Config) -> None:
    """Partial sums past 2**24, where float32 drops units: 2048 products of +127 * 127, 2047 of -127 * 127 and
    one of 1 * 1 total 16130, which a float32 accumulator adding them in order ends at 16129. Every sum is the
    exact integer, rounded once to the float32 output."""
    k = 4096
    x_q = torch.full((2, k), 127, dtype=torch.int8)
    x_q[0, -1] = 1
    weight = torch.full((2, k), 127, dtype=torch.int8)
    weight[0, 2048:] = -127
    weight[0, -1] = 1
    out = int8_scaled_gemv(x_q, torch.ones(2, 1), weight, torch.ones(2, 1), torch.float32, config=cfg)
    assert out[0, 0].item() == 16130
    assert torch.equal(out, int32_products(x_q, weight).float())


@pytest.mark.parametrize("cfg", [WHOLE_K, SPLIT_K], ids=["whole-k", "split-k"])
def test_int8_scales_in_sgl_kernel_order(cfg: triton.Config) -> None:
    """float32 output: ``x_scale * (w_scale * float(acc))`` exactly as sgl_kernel's sm90 epilogue orders it."""
    m, n, k = 3, 64, 2048
    x_q, weight = int8_inputs(m, n, k, seed=7)
    x_scale, w_scale = torch.rand(m, 1) / 100, torch.rand(n, 1) / 100  # shapes as SGLang holds them
    out = int8_scaled_gemv(x_q, x_scale, weight, w_scale, torch.float32, config=cfg)
    expected = x_scale * (w_scale.view(1, n) * int32_products(x_q, weight).float())
    assert torch.equal(out, expected)


def test_int8_bias_and_bf16_output_round_once() -> None:
    m, n, k = 2, 40, 2048
    x_q, weight = int8_inputs(m, n, k, seed=3)
    x_scale, w_scale = torch.rand(m, 1) / 100, torch.rand(n) / 100
    bias = torch.randn(n).bfloat16()
    out = int8_scaled_gemv(x_q, x_scale, weight, w_scale, torch.bfloat16, bias, config=SPLIT_K)
    scaled = x_scale.double() * (w_scale.double() * int32_products(x_q, weight).double()) + bias.double()
    assert out.dtype == torch.bfloat16
    assert ((out.double() - scaled).abs() <= BF16_ROUNDING * scaled.abs() + 1e-6 * scaled.abs()).all()


@pytest.mark.parametrize(
    "weight,rows,message",
    [
        (torch.zeros(64, 2048).bfloat16().t(), 1, "row-major"),  # [K, N]: int8_scaled_mm's layout
        (torch.zeros(64, 200).bfloat16(), 1, f"K % {kernels.K_MULTIPLE}"),
        (torch.zeros(64, 2048).float(), 1, "bf16/fp16/int8"),
        (torch.zeros(64, 2048).bfloat16(), kernels.MAX_M + 1, f"1 to {kernels.MAX_M} rows"),
        (torch.zeros(64, 2048).half(), 1, "one dtype"),
    ],
)
def test_refuses_what_it_was_not_built_for(weight: torch.Tensor, rows: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        gemv(torch.zeros(rows, weight.shape[1]).bfloat16(), weight, config=WHOLE_K)


def test_k_is_split_only_while_sms_would_idle() -> None:
    sms = 132  # H100/H200
    splits = {(n, k): {c.kwargs["SPLIT_K"] for c in CONFIGS if kernels.fits(c, n, k, sms) and c.kwargs["BLOCK_N"] == 16}
              for n, k in [(248320, 2048), (2048, 4096), (64, 2048)]}  # fmt: skip
    assert splits[(248320, 2048)] == {1}  # the lm_head fills the GPU many times over
    assert splits[(2048, 4096)] == {1, 2}  # 128 column blocks: one split more puts a program on every SM
    assert splits[(64, 2048)] == {1, 2, 4}  # 4 blocks; 16 x 512 K steps allow 4 splits of 2048


@pytest.mark.parametrize("m", [1, 3, kernels.MAX_M])
@pytest.mark.parametrize("n,k", SHAPES)
@pytest.mark.parametrize("cfg", [WHOLE_K, SPLIT_K], ids=["whole-k", "split-k"])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_int8_gemv_is_per_token_quant_then_int8_scaled_gemv(m: int, n: int, k: int, cfg: triton.Config,
                                                            out_dtype: torch.dtype) -> None:  # fmt: skip
    """Quantizing in the kernel gives the int8 rows and scales per_token_quant_int8 gives, so the very output of
    the two-step path, bit for bit."""
    generator = torch.Generator().manual_seed(m * 100 + n)
    x = (torch.randn(m, k, generator=generator) * torch.rand(m, 1, generator=generator) * 4).bfloat16()
    weight = torch.randint(-127, 128, (n, k), generator=generator, dtype=torch.int8)
    w_scale = torch.rand(n, 1, generator=generator) / 100
    bias = torch.randn(n, generator=generator).to(out_dtype) if m % 2 else None
    x_q, x_scale = per_token_quant_int8_reference(x)
    two_steps = int8_scaled_gemv(x_q, x_scale, weight, w_scale, out_dtype, bias, config=cfg)
    assert torch.equal(int8_gemv(x, weight, w_scale, out_dtype, bias, config=cfg), two_steps)


def test_int8_gemv_rounds_halves_away_from_zero_as_roundf() -> None:
    """A row whose absmax is 127 is scaled by exactly 1: its int8 values are the row's own, halves rounded away
    from zero (libdevice's roundf, as per_token_quant_int8), not to even (torch.round)."""
    k = 2048
    row = torch.zeros(k)
    values = torch.tensor([127.0, 0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 0.498046875, -126.5])  # all exact in bfloat16
    row[: len(values)] = values
    picks = torch.zeros(len(values), k, dtype=torch.int8)
    picks[torch.arange(len(values)), torch.arange(len(values))] = 1  # output j = x_q[j]
    out = int8_gemv(row.bfloat16()[None], picks, torch.ones(len(values)), torch.float32, config=WHOLE_K)
    assert out[0].tolist() == [127, 1, -1, 2, -2, 3, -3, 0, -127]
    assert torch.round(values).tolist() != out[0].tolist()


def test_int8_gemv_refuses_x_of_another_dtype() -> None:
    with pytest.raises(ValueError, match="int8_gemv quantizes bfloat16 x itself, got torch.int8 x"):
        int8_gemv(torch.zeros(1, 2048, dtype=torch.int8), torch.zeros(8, 2048, dtype=torch.int8), torch.ones(8),
                  torch.bfloat16, config=WHOLE_K)  # fmt: skip


@pytest.mark.parametrize("variant", ["bf16", "int8", "int8+quantize"])
@pytest.mark.parametrize("cfg", [WHOLE_K, SPLIT_K], ids=["whole-k", "split-k"])
def test_lowers_for_hopper_as_designed(variant: str, cfg: triton.Config) -> None:
    """On sm90: weight and activation tiles by 16-byte cp.async into shared memory, tensor-core mma, and with
    split K a gpu-scope acquire-release ticket per program and the partials read back from L2."""
    int8, quantize = variant != "bf16", variant == "int8+quantize"
    split = cfg.kwargs["SPLIT_K"] > 1
    pointers = {"x_ptr": "*i8" if int8 and not quantize else "*bf16", "w_ptr": "*i8" if int8 else "*bf16",
                "out_ptr": "*bf16", "bias_ptr": "*bf16",
                "x_scale_ptr": "*fp32" if int8 and not quantize else "constexpr",
                "w_scale_ptr": "*fp32" if int8 else "constexpr",
                "partials_ptr": ("*i32" if int8 else "*fp32") if split else "constexpr",
                "tickets_ptr": "*i32" if split else "constexpr"}  # fmt: skip
    sizes = dict.fromkeys(("M", "N", "K", "stride_xm", "M_BUCKET"), "i32")
    meta = {"HAS_BIAS": True, "INT8": int8, "QUANTIZE_X": quantize, "BLOCK_M": kernels.BLOCK_M, **cfg.kwargs}
    signature = {**pointers, **sizes, **dict.fromkeys(meta, "constexpr")}
    unused = {arg: None for arg, kind in pointers.items() if kind == "constexpr"}
    ptx = sm90_ptx("sglang_ext.kernels.gemv:_gemv_kernel", signature, {**meta, **unused},
                   num_warps=cfg.num_warps, num_stages=cfg.num_stages)  # fmt: skip
    copies = re.findall(r"cp\.async\.cg\.shared\.global \[[^]]+\], \[[^]]+\], (\w+)", ptx)
    assert copies and set(copies) == {"0x10"}
    assert "mma.sync.aligned" in ptx
    assert ("atom.global.gpu.acq_rel.add" in ptx) == split
    assert ("ld.global.cg" in ptx) == split


def test_int8_gemv_quantizes_with_per_token_quant_int8s_instructions() -> None:
    """On sm90 the bits follow the instructions: the quantizing variant divides as SGLang's per_token_quant_int8
    compiles (Triton's float32 division) and, without a bias, has no fused multiply-add, so the product it rounds
    is the rounded float32 product, as in SGLang's kernel."""
    pytest.importorskip("sglang.kernels.ops.quantization.int8_kernel")
    divisions = re.compile(r"\bdiv\.[a-z.]*f32")
    sglang = sm90_ptx("sglang.kernels.ops.quantization.int8_kernel:_per_token_quant_int8",
                      {"x_ptr": "*bf16", "xq_ptr": "*i8", "scale_ptr": "*fp32", "x_sum_ptr": "constexpr", "stride_x": "i32",
                       "stride_xq": "i32", "N": "i32", "CAL_SUM": "constexpr", "BLOCK": "constexpr", "IS_HIP": "constexpr"},
                      {"x_sum_ptr": None, "CAL_SUM": False, "BLOCK": 2048, "IS_HIP": False}, num_warps=8, num_stages=1)  # fmt: skip
    pointers = {"x_ptr": "*bf16", "w_ptr": "*i8", "out_ptr": "*bf16", "bias_ptr": "constexpr", "x_scale_ptr": "constexpr",
                "w_scale_ptr": "*fp32", "partials_ptr": "constexpr", "tickets_ptr": "constexpr"}  # fmt: skip
    meta = {"HAS_BIAS": False, "INT8": True, "QUANTIZE_X": True, "BLOCK_M": kernels.BLOCK_M, **WHOLE_K.kwargs}
    signature = {**pointers, **dict.fromkeys(("M", "N", "K", "stride_xm", "M_BUCKET"), "i32"), **dict.fromkeys(meta, "constexpr")}
    ours = sm90_ptx("sglang_ext.kernels.gemv:_gemv_kernel", signature,
                    {**meta, **{arg: None for arg, kind in pointers.items() if kind == "constexpr"}},
                    num_warps=WHOLE_K.num_warps, num_stages=WHOLE_K.num_stages)  # fmt: skip
    assert set(divisions.findall(ours)) == set(divisions.findall(sglang)) != set()  # div.full.f32 in Triton 3.6
    assert not re.search(r"\bfma\.", ours) and not re.search(r"\bfma\.", sglang)

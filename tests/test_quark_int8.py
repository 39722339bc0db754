"""Quark INT8 W8A8 without SGLang: which configs are the served scheme, and the torch fallback's numerics.

References are computed in float64 from the same int8 codes and scales, so they hold the exact
quantized result; the fallback may differ only by its float roundings, bounded per case below.
"""

import pytest
import torch
import torch.nn.functional as F

from sglang_ext.codecs import int8
from sglang_ext.fixtures import quant_configs
from sglang_ext.quantization.int8_fallback import int8_linear, int8_moe
from sglang_ext.quantization.quark_int8_spec import is_quark_w8a8_int8

F32_EPS = 2.0**-24  # unit roundoff
BF16_EPS = 2.0**-8


def served_config() -> dict:
    return quant_configs.quark_w8a8_int8(exclude=[])["global_quant_config"]


def random_linear(n: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(n, k, generator=g) * torch.logspace(-3, 1, n).unsqueeze(1)  # per-channel spread
    return int8.quantize(weight.to(torch.bfloat16))


def reference_linear(x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """float64 ``dequant(quantize_per_token(x)) @ dequant(weight).T`` with Quark's activation rule."""
    x_codes, x_scale = int8.quantize_activations_per_token(x)
    return (x_codes.double() * x_scale.double()) @ (codes.double() * scale.double().reshape(-1, 1)).t()


# --- config detection --------------------------------------------------------------------------


def test_fixture_config_is_the_served_scheme() -> None:
    assert is_quark_w8a8_int8(served_config())


def test_other_quark_schemes_are_left_to_sglang() -> None:
    assert not is_quark_w8a8_int8(quant_configs.quark_mxfp4(exclude=[])["global_quant_config"])
    fp8 = {"weight": {"dtype": "fp8_e4m3", "qscheme": "per_tensor"}, "input_tensors": None}
    assert not is_quark_w8a8_int8(fp8)


@pytest.mark.parametrize(
    ("path", "value", "named"),
    [
        (("input_tensors", "is_dynamic"), False, "input_tensors.is_dynamic=False"),
        (("input_tensors", "qscheme"), "per_tensor", "input_tensors.qscheme='per_tensor'"),
        (("input_tensors", "symmetric"), False, "input_tensors.symmetric=False"),
        (("weight", "qscheme"), "per_group", "weight.qscheme='per_group'"),
        (("weight", "symmetric"), False, "weight.symmetric=False"),
        (("weight", "ch_axis"), 1, "weight.ch_axis=1"),
        (("input_tensors",), None, "input_tensors.dtype=None"),  # weight-only INT8
        (("output_tensors",), {"dtype": "int8"}, "output_tensors="),
    ],
)
def test_unserved_int8_variants_are_refused_naming_the_field(path: tuple[str, ...], value, named: str) -> None:
    config = served_config()
    target = config
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(NotImplementedError, match="not served by sglang_ext") as error:
        is_quark_w8a8_int8(config)
    assert named in str(error.value)


# --- per-token activation quantization -----------------------------------------------------------


def activation_edge_cases(dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    rows = [torch.randn(5, 64, generator=g) * torch.logspace(-4, 3, 5).unsqueeze(1)]
    ties = torch.arange(-127.5, 128.0, 4.0)[:63]  # k + 0.5 codes for amax 127.5: ties to even
    rows.append(torch.cat([ties, torch.tensor([127.5])]).unsqueeze(0))
    lone = torch.zeros(2, 64)
    lone[0, 3], lone[1, 60] = -2.5, 0.75  # a lone negative amax gives -128, a positive one 127
    rows.append(lone)
    rows.append(torch.zeros(1, 64))
    return torch.cat(rows).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fallback_quantizes_activations_like_the_codec(dtype: torch.dtype) -> None:
    """Through an identity weight (codes 1, scale 1) the fallback returns its dequantized activations."""
    x = activation_edge_cases(dtype)
    out = int8_linear(x.float(), torch.eye(64, dtype=torch.int8), torch.ones(64))
    codes, scale = int8.quantize_activations_per_token(x.float())
    assert torch.equal(out, codes.float() * scale)
    assert codes.min() == -128 and codes.max() == 127
    # ... and bf16 inputs are quantized as bf16 (scale rounded to bf16), not after widening.
    bf16_codes, bf16_scale = int8.quantize_activations_per_token(x)
    out = int8_linear(x, torch.eye(64, dtype=torch.int8), torch.ones(64))
    assert torch.equal(out, (bf16_codes.float() * bf16_scale).to(dtype))


# --- linear -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale_shape", ["[out]", "[out, 1]"])
def test_linear_float32_is_exact_up_to_two_roundings(scale_shape: str) -> None:
    # K = 1024: every partial sum of int8 products stays below 2**24, so float32 accumulates exactly and
    # only the two scale multiplications round (each <= 2**-24 relative).
    codes, scale = random_linear(96, 1024, seed=2)
    scale = scale.reshape(-1, 1) if scale_shape == "[out, 1]" else scale
    x = torch.randn(7, 1024, generator=torch.Generator().manual_seed(3)) * 3
    ref = reference_linear(x, codes, scale)
    out = int8_linear(x, codes, scale)
    assert out.dtype == torch.float32 and out.shape == (7, 96)
    assert ((out.double() - ref).abs() <= 3 * F32_EPS * ref.abs()).all()


def test_linear_float32_large_k_and_bias() -> None:
    codes, scale = random_linear(64, 4096, seed=4)
    x = torch.randn(3, 5, 4096, generator=torch.Generator().manual_seed(5))
    bias = torch.randn(64, generator=torch.Generator().manual_seed(6))
    ref = reference_linear(x, codes, scale) + bias.double()
    out = int8_linear(x, codes, scale, bias)
    assert out.shape == (3, 5, 64)
    # Beyond K = 1024 float32 may round partial sums: bounded relative to the largest output.
    err = (out.double() - ref).abs().max() / ref.abs().max()
    assert err < 1e-6, f"max error {err:.2e} of max |ref|"


@pytest.mark.parametrize("matmul_dtype", [torch.float32, torch.bfloat16])
def test_linear_bf16_activations(matmul_dtype: torch.dtype) -> None:
    codes, scale = random_linear(128, 512, seed=7)
    x = (torch.randn(16, 512, generator=torch.Generator().manual_seed(8)) * 2).to(torch.bfloat16)
    ref = reference_linear(x, codes, scale)
    out = int8_linear(x, codes, scale, matmul_dtype=matmul_dtype)
    assert out.dtype == torch.bfloat16
    # bf16 output rounds once (2**-8 relative); a bf16 matmul also rounds the accumulator to bf16 once.
    rounds = 1 if matmul_dtype == torch.float32 else 2
    bound = (1 + BF16_EPS) ** rounds - 1 + 4 * F32_EPS
    rel = (out.double() - ref).abs() / ref.abs().clamp_min(1e-30)
    assert rel.max() <= bound, f"max relative error {rel.max():.3e} > {bound:.3e}"


# --- MoE --------------------------------------------------------------------------------------------


def random_experts(num_experts: int, hidden: int, inter: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    def quantized(rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
        return int8.quantize((torch.randn(rows, cols, generator=g) * 0.05).to(torch.bfloat16))

    w13 = [quantized(2 * inter, hidden) for _ in range(num_experts)]
    w2 = [quantized(hidden, inter) for _ in range(num_experts)]
    return (
        torch.stack([c for c, _ in w13]),
        torch.stack([s for _, s in w13]).float().unsqueeze(-1),  # [E, 2I, 1] as SGLang keeps them
        torch.stack([c for c, _ in w2]),
        torch.stack([s for _, s in w2]).float().unsqueeze(-1),
    )


def reference_moe(x, w13, w13_scale, w2, w2_scale, topk_weights, topk_ids, routed_scaling_factor):
    """float64 per (token, expert), rounding where the fused kernel stores bf16 (gate_up, activation)."""
    out = torch.zeros(x.shape[0], w2.shape[1], dtype=torch.float64)
    inter = w2.shape[2]
    for t in range(x.shape[0]):
        for slot in range(topk_ids.shape[1]):
            e = int(topk_ids[t, slot])
            if not 0 <= e < w13.shape[0]:
                continue
            gate_up = reference_linear(x[t : t + 1], w13[e], w13_scale[e]).to(x.dtype)
            act = (F.silu(gate_up[:, :inter].double()) * gate_up[:, inter:].double()).to(x.dtype)
            out[t] += reference_linear(act, w2[e], w2_scale[e])[0] * float(topk_weights[t, slot])
    return out * routed_scaling_factor


def test_moe_matches_reference_and_skips_foreign_experts() -> None:
    num_experts, hidden, inter, tokens = 5, 64, 32, 12
    w13, w13_scale, w2, w2_scale = random_experts(num_experts, hidden, inter, seed=9)
    g = torch.Generator().manual_seed(10)
    x = torch.randn(tokens, hidden, generator=g).to(torch.bfloat16)
    topk_ids = torch.stack([torch.randperm(num_experts, generator=g)[:3] for _ in range(tokens)])
    topk_ids[0] = -1  # all three experts live on other EP ranks: the token gets zeros
    topk_ids[1, 2] = num_experts
    topk_weights = torch.rand(tokens, 3, generator=g)
    out = int8_moe(x, w13, w13_scale, w2, w2_scale, topk_weights, topk_ids, routed_scaling_factor=2.5)
    ref = reference_moe(x, w13, w13_scale, w2, w2_scale, topk_weights, topk_ids, 2.5)
    assert out.dtype == torch.bfloat16 and out.shape == (tokens, hidden)
    assert torch.equal(out[0], torch.zeros(hidden, dtype=torch.bfloat16))
    # The bf16 output rounds (2**-8 relative); float32 vs float64 may also flip a bf16 rounding of an
    # intermediate, moving one activation code by one step: allowed 1e-3 of the largest output.
    excess = (out.double() - ref).abs() - BF16_EPS * ref.abs()
    assert excess.max() <= 1e-3 * ref.abs().max(), f"max excess {excess.max():.2e}, max |ref| {ref.abs().max():.2e}"


def test_moe_single_expert_equals_linear_composition() -> None:
    # One expert, weight 1: the MoE is down(silu(gate) * up) of the linears, bit for bit.
    w13, w13_scale, w2, w2_scale = random_experts(1, 64, 32, seed=11)
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(12)).to(torch.bfloat16)
    ones = torch.ones(4, 1)
    out = int8_moe(x, w13, w13_scale, w2, w2_scale, ones, torch.zeros(4, 1, dtype=torch.long))
    gate, up = int8_linear(x, w13[0], w13_scale[0]).split(32, dim=-1)
    expected = int8_linear((F.silu(gate.float()) * up.float()).to(x.dtype), w2[0], w2_scale[0])
    assert torch.equal(out, expected)

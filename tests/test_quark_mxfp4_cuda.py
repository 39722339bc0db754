"""The pure-torch parts of the Quark MXFP4 W4A4 CUDA path (no SGLang needed).

* the Triton activation quantize-dequantize equals the codec bit for bit (Triton's CPU interpreter);
* the float32 reference MoE, from FusedMoE's stacked byte layout (gate rows, then up rows; the fused shared
  expert as slot E), equals an independent per-token computation from the per-expert checkpoint tensors;
* compressed-tensors expert names map to what SGLang's MXFP4 MoE method loads.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from sglang_ext.codecs import mxfp4
from sglang_ext.codecs.mxfp4 import Producer
from sglang_ext.quantization.mxfp4_ct_names import ct_mxfp4_expert_name
from sglang_ext.quantization.mxfp4_moe_reference import dequantize_experts, reference_w4a4_moe
from tests.conftest import REPO

HIDDEN, INTERMEDIATE, ROUTED, TOP_K = 128, 64, 8, 2


# --------------------------------------------------------------------------- Triton activation qdq
_INTERPRETER_CHECK = textwrap.dedent(
    """
    import torch
    from sglang_ext.codecs.mxfp4 import fake_quantize_activations
    from sglang_ext.kernels.mxfp4_act_quant import fake_quantize_mxfp4_triton

    g = torch.Generator().manual_seed(0)
    rows = [torch.randn(8, 96, generator=g) * torch.logspace(-30, 30, 8).unsqueeze(1)]
    # every E2M1 midpoint and grid point with amax 6 (scale 1), both signs, and amax mantissas around 1.75
    ties = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 0.1, 0.0])
    rows.append(torch.cat([ties, -ties, ties * 2**-20, -ties * 2**-20, ties * 1.74 / 6, ties * 1.75 / 6]).view(1, 96))
    rows.append(torch.full((1, 96), -0.0))
    special = torch.randn(3, 96, generator=g)
    special[0, 3], special[1, 40], special[2, 70] = float("inf"), float("-inf"), float("nan")
    rows.append(special)
    normal = torch.cat(rows)
    subnormal = torch.randn(2, 96, generator=g) * 1e-39
    cases = {
        torch.float32: torch.cat([normal, subnormal]),
        torch.float16: normal.clamp(-6e4, 6e4).nan_to_num(nan=float("nan"), posinf=6e4, neginf=-6e4),
        # Triton's CPU interpreter decodes BF16 subnormals wrongly, so BF16 stays in the normal range here
        # (the GPU check covers them).
        torch.bfloat16: normal,
    }
    bits = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}
    for dtype, x in cases.items():
        x = x.to(dtype)
        got, want = fake_quantize_mxfp4_triton(x), fake_quantize_activations(x)
        assert got.dtype == dtype and got.shape == x.shape
        differ = (got.view(bits[dtype]) != want.view(bits[dtype])) & ~(got.isnan() & want.isnan())
        assert not differ.any(), (dtype, x[differ][:8].tolist(), got[differ][:8].tolist(), want[differ][:8].tolist())
        print(dtype, "bit-exact over", x.numel(), "elements")
    """
)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_triton_activation_qdq_equals_codec_bit_for_bit():
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(REPO))
    run = subprocess.run([sys.executable, "-c", _INTERPRETER_CHECK], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("bit-exact") == 3


# --------------------------------------------------------------------------- reference MoE and the stacked layout
def _quark_expert(g: torch.Generator) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """One expert as a Quark checkpoint stores it: per projection (packed uint8, E8M0 scales)."""
    shapes = {"gate_proj": (INTERMEDIATE, HIDDEN), "up_proj": (INTERMEDIATE, HIDDEN), "down_proj": (HIDDEN, INTERMEDIATE)}
    return {
        name: mxfp4.quantize((torch.randn(shape, generator=g) * 0.05).bfloat16(), Producer.QUARK)
        for name, shape in shapes.items()
    }


def _stack_like_fused_moe(experts: list[dict[str, tuple[torch.Tensor, torch.Tensor]]]):
    """What SGLang's FusedMoE loader leaves in w13/w2 for these per-expert tensors (shard w1 -> first half,
    w3 -> second half of w13; w2 as is); the SGLang-side test checks the real loader produces exactly this."""
    w13 = torch.stack([torch.cat([e["gate_proj"][0], e["up_proj"][0]]) for e in experts])
    w13_scale = torch.stack([torch.cat([e["gate_proj"][1], e["up_proj"][1]]) for e in experts])
    w2 = torch.stack([e["down_proj"][0] for e in experts])
    w2_scale = torch.stack([e["down_proj"][1] for e in experts])
    return w13, w13_scale, w2, w2_scale


def _routing(g: torch.Generator, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k routed experts renormalised, plus the shared expert as slot ROUTED with a sigmoid gate (FSE)."""
    routed = torch.rand(tokens, ROUTED, generator=g).topk(TOP_K, dim=-1)
    ids = torch.cat([routed.indices, torch.full((tokens, 1), ROUTED)], dim=1).int()
    weights = torch.cat([routed.values / routed.values.sum(-1, keepdim=True), torch.rand(tokens, 1, generator=g)], 1)
    return weights.float(), ids


def _per_token_expected(x, experts, weights, ids) -> torch.Tensor:
    """The same W4A4 semantics token by token, straight from the per-expert checkpoint tensors."""

    def qdq(t: torch.Tensor) -> torch.Tensor:
        return mxfp4.fake_quantize_activations(t.bfloat16()).float()

    def decoded(expert: dict, name: str) -> torch.Tensor:
        return mxfp4.dequantize(*expert[name], dtype=torch.float32)

    out = torch.zeros(x.shape[0], HIDDEN)
    for t in range(x.shape[0]):
        xq = qdq(x[t : t + 1])
        for slot in range(ids.shape[1]):
            expert = experts[ids[t, slot]]
            gate = (xq @ decoded(expert, "gate_proj").T).bfloat16().float()
            up = (xq @ decoded(expert, "up_proj").T).bfloat16().float()
            out[t] += weights[t, slot] * (qdq(F.silu(gate) * up) @ decoded(expert, "down_proj").T)[0]
    return out


def test_reference_moe_on_stacked_layout_matches_per_token_checkpoint_math():
    g = torch.Generator().manual_seed(1)
    experts = [_quark_expert(g) for _ in range(ROUTED + 1)]  # slot ROUTED is the fused shared expert
    w13, w2 = dequantize_experts(*_stack_like_fused_moe(experts))
    assert w13.shape == (ROUTED + 1, 2 * INTERMEDIATE, HIDDEN) and w2.shape == (ROUTED + 1, HIDDEN, INTERMEDIATE)
    x = torch.randn(12, HIDDEN, generator=g).bfloat16()
    weights, ids = _routing(g, 12)

    got = reference_w4a4_moe(x, w13, w2, weights, ids)
    want = _per_token_expected(x, experts, weights, ids)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # The shared slot contributes: dropping it changes every token's output.
    without_shared = reference_w4a4_moe(x, w13, w2, weights[:, :TOP_K], ids[:, :TOP_K])
    assert ((got - without_shared).abs().amax(-1) > 1e-3).all()


def test_reference_moe_quantizes_both_gemm_inputs():
    """Skipping either activation qdq changes the result, so the reference does apply both."""
    g = torch.Generator().manual_seed(2)
    experts = [_quark_expert(g) for _ in range(ROUTED + 1)]
    w13, w2 = dequantize_experts(*_stack_like_fused_moe(experts))
    x = torch.randn(6, HIDDEN, generator=g).bfloat16()
    weights, ids = _routing(g, 6)
    got = reference_w4a4_moe(x, w13, w2, weights, ids)
    unquantized = torch.zeros_like(got)
    for t in range(6):
        for slot in range(ids.shape[1]):
            e = ids[t, slot]
            gate, up = (x[t].float() @ w13[e].T).chunk(2)
            unquantized[t] += weights[t, slot] * (F.silu(gate) * up) @ w2[e].T
    relative = (got - unquantized).norm() / unquantized.norm()
    assert 0.02 < relative < 0.5, relative  # MXFP4 activation noise: visible, but not a different function


# --------------------------------------------------------------------------- compressed-tensors names
@pytest.mark.parametrize(
    ("stored", "loaded"),
    [
        ("model.language_model.layers.3.mlp.experts.17.gate_proj.weight_packed",
         "model.language_model.layers.3.mlp.experts.17.gate_proj.weight"),
        ("model.language_model.layers.0.mlp.experts.0.down_proj.weight_packed",
         "model.language_model.layers.0.mlp.experts.0.down_proj.weight"),
        ("model.language_model.layers.0.mlp.experts.0.down_proj.weight_scale",
         "model.language_model.layers.0.mlp.experts.0.down_proj.weight_scale"),
        ("model.language_model.layers.0.self_attn.q_proj.weight_packed",
         "model.language_model.layers.0.self_attn.q_proj.weight_packed"),
        ("model.language_model.layers.0.mlp.shared_expert.up_proj.weight_packed",
         "model.language_model.layers.0.mlp.shared_expert.up_proj.weight_packed"),
    ],
)
def test_ct_mxfp4_expert_name(stored: str, loaded: str):
    assert ct_mxfp4_expert_name(stored) == loaded

"""INT8 W8A8 codec vs AMD Quark (``Int8PerChannelSpec``, CPU path)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from sglang_ext.codecs import int8
from vendor_exports import quark_weight_export

needs_quark = pytest.mark.skipif(
    importlib.util.find_spec("quark") is None, reason="amd-quark not installed (pip install -e '.[codecs-test]')"
)
DTYPES = [torch.float32, torch.bfloat16]
CPU = torch.device("cpu")


def edge_case_weight(dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    rows = [torch.randn(32, 96, generator=g) * 0.02]
    rows.append(torch.randn(6, 96, generator=g) * torch.logspace(-30, 30, 6).unsqueeze(1))
    rows.append(torch.zeros(1, 96))
    single = torch.zeros(3, 96)
    single[0, 5], single[1, 40], single[2, 95] = 0.7, -3.0e-3, -1.0e20  # lone nonzero: hits +-127 / -128 exactly
    rows.append(single)
    # Values landing exactly on k + 0.5 for amax 127.5: ties to even.
    ties = torch.arange(-127.5, 128.0, 2.75)[:93]
    rows.append(torch.cat([ties, torch.tensor([127.5, -127.5, 0.5])]).reshape(1, 96))
    rows.append(torch.full((1, 96), -0.0))
    w = torch.cat(rows).to(dtype)
    if dtype == torch.float32:
        w = torch.cat([w, torch.randn(2, 96, generator=g) * 1e-39])  # subnormal rows: scale floors at eps
    return w


@needs_quark
@pytest.mark.parametrize("dtype", DTYPES)
def test_weights_match_quark(dtype: torch.dtype) -> None:
    w = edge_case_weight(dtype)
    ref_q, ref_scale = quark_weight_export(w)
    q, scale = int8.quantize(w)
    assert q.dtype == ref_q.dtype == torch.int8
    assert torch.equal(q, ref_q)
    assert scale.dtype == ref_scale.dtype == dtype
    assert torch.equal(scale, ref_scale)


@needs_quark
def test_quark_emits_minus_128() -> None:
    # Rows with a negative amax, one per bfloat16 mantissa.  Only 255/128 * 2**k makes
    # amax / 127.5 exact, so -amax / scale is exactly -127.5 and rounds (half-even) to -128.
    w = torch.zeros(128, 16)
    w[:, 0] = -(1 + torch.arange(128) / 128)
    w = w.to(torch.bfloat16)
    ref_q, _ = quark_weight_export(w)
    assert (ref_q[:, 0] == -128).nonzero().flatten().tolist() == [127]
    assert torch.equal(int8.quantize(w)[0], ref_q)


@needs_quark
@pytest.mark.parametrize("dtype", DTYPES)
def test_activations_match_quark_dynamic_per_token(dtype: torch.dtype) -> None:
    from quark.torch.quantization.config.config import Int8PerChannelSpec
    from quark.torch.quantization.tensor_quantize import FakeQuantizeBase

    x = torch.cat([edge_case_weight(dtype), (torch.randn(16, 96) * 30).to(dtype)])
    spec = Int8PerChannelSpec(ch_axis=0, symmetric=True, is_dynamic=True).to_quantization_spec()  # rows = tokens
    fake = FakeQuantizeBase.get_fake_quantize(spec, CPU)
    ref_scale, _ = fake.observe(x)
    ref_qdq = fake(x)
    q, scale = int8.quantize_activations_per_token(x)
    assert scale.shape == (x.shape[0], 1) and scale.dtype == torch.float32
    assert torch.equal(scale.squeeze(1), ref_scale.float())
    assert torch.equal((q.float() * scale).to(dtype), ref_qdq)


def test_rename_quark_checkpoint() -> None:
    sd = {
        "model.layers.0.mlp.experts.3.up_proj.weight": torch.zeros(4, 8, dtype=torch.int8),
        "model.layers.0.mlp.experts.3.up_proj.weight_quantizer.scale": torch.ones(4, 1),
        "model.layers.0.mlp.experts.3.up_proj.weight_quantizer.zero_point": torch.zeros(4, 1, dtype=torch.int32),
        "model.layers.0.mlp.experts.3.up_proj.input_quantizer.scale": torch.ones(()),
        "model.norm.weight": torch.ones(8),
    }
    out = int8.rename_quark_checkpoint(sd)
    assert sorted(out) == sorted(
        [
            "model.layers.0.mlp.experts.3.up_proj.weight",
            "model.layers.0.mlp.experts.3.up_proj.weight_scale",
            "model.layers.0.mlp.experts.3.up_proj.input_scale",
            "model.norm.weight",
        ]
    )
    assert out["model.layers.0.mlp.experts.3.up_proj.weight_scale"].shape == (4,)


def test_nan_inf_policy() -> None:
    for bad in (float("nan"), float("inf")):
        w = torch.ones(2, 8)
        w[1, 3] = bad
        with pytest.raises(ValueError, match="NaN or Inf"):
            int8.quantize(w)
    x = torch.ones(2, 8)
    x[1, 3] = float("inf")
    q, scale = int8.quantize_activations_per_token(x)
    assert scale[0, 0] == 1 / 127.5 and scale[1, 0] == float("inf")  # only the bad token is affected
    assert (q[0] == 127).all()


def test_roundtrip_error_within_half_step() -> None:
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(3)) * torch.logspace(-3, 3, 64).unsqueeze(1)
    q, scale = int8.quantize(w)
    err = (int8.dequantize(q, scale, torch.float32) - w).abs()
    assert (err <= scale.unsqueeze(1) / 2 * (1 + 1e-4)).all()  # slack: float32 rounding of q * scale

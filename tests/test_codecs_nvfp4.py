"""NVFP4 codec vs NVIDIA ModelOpt (``NVFP4QTensor``, CPU path)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from sglang_ext.codecs import nvfp4
from vendor_exports import modelopt_export, modelopt_input_scale

needs_modelopt = pytest.mark.skipif(
    importlib.util.find_spec("modelopt") is None,
    reason="nvidia-modelopt not installed (pip install -e '.[codecs-test]')",
)
DTYPES = [torch.float32, torch.bfloat16]


def edge_case_weight(dtype: torch.dtype) -> torch.Tensor:
    """Rows of 64 (four blocks): ordinary, 1e-30..1e30 within one tensor, zero blocks, ties, lone nonzeros."""
    g = torch.Generator().manual_seed(0)
    rows = [torch.randn(16, 64, generator=g) * 0.02]
    rows.append(torch.randn(4, 64, generator=g) * torch.logspace(-30, 30, 4).unsqueeze(1))
    rows.append(torch.zeros(2, 64))
    single = torch.zeros(3, 64)
    single[0, 5], single[1, 40], single[2, 33] = 0.7, -3.0e-3, 2.5
    rows.append(single)
    # With a block amax of 6*s, element x/s hits each E2M1 midpoint exactly when s is a power of two.
    ties = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 0.1, -0.0])
    rows.append(torch.cat([ties, -ties, ties * 2**-8, -ties * 2**-8]).reshape(1, 64))
    rows.append(torch.full((1, 64), -0.0))
    return torch.cat(rows).to(dtype)


def assert_same(ours: nvfp4.NVFP4Weight, ref: nvfp4.NVFP4Weight) -> None:
    assert torch.equal(ours.weight, ref.weight)
    assert ours.weight_scale.dtype == ref.weight_scale.dtype == torch.float8_e4m3fn
    assert torch.equal(ours.weight_scale.view(torch.uint8), ref.weight_scale.view(torch.uint8))
    assert torch.equal(ours.weight_scale_2, ref.weight_scale_2.float())


@needs_modelopt
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_modelopt(dtype: torch.dtype) -> None:
    w = edge_case_weight(dtype)
    assert_same(nvfp4.quantize(w), modelopt_export(w))


@needs_modelopt
def test_matches_modelopt_random_moe_stack() -> None:
    w = (torch.randn(4, 128, 256, generator=torch.Generator().manual_seed(1)) * 0.05).to(torch.bfloat16)
    assert_same(nvfp4.quantize(w), modelopt_export(w))


@needs_modelopt
def test_tie_gate_up_matches_modelopt_fusion() -> None:
    g = torch.Generator().manual_seed(2)
    gate = (torch.randn(64, 128, generator=g) * 0.03).to(torch.bfloat16)
    up = (torch.randn(64, 128, generator=g) * 0.08).to(torch.bfloat16)
    from modelopt.torch.quantization.qtensor import NVFP4QTensor

    # preprocess_linear_fusion sets both amaxes to the max; export derives weight_scale_2 from it.
    shared = torch.maximum(gate.abs().amax(), up.abs().amax()).float() / (6.0 * 448.0)
    assert torch.equal(shared, NVFP4QTensor.get_weights_scaling_factor_2(torch.cat([gate, up])))
    tied_gate, tied_up = nvfp4.tie_gate_up(gate, up)
    assert_same(tied_gate, modelopt_export(gate, shared))
    assert_same(tied_up, modelopt_export(up, shared))
    assert torch.equal(tied_gate.weight_scale_2, tied_up.weight_scale_2)
    assert not torch.equal(tied_gate.weight_scale_2, nvfp4.quantize(gate).weight_scale_2)


@needs_modelopt
def test_input_scale_matches_modelopt() -> None:
    a, b = torch.tensor(13.7), torch.tensor(21.25)
    assert torch.equal(nvfp4.input_scale(a), modelopt_input_scale(13.7))
    assert torch.equal(nvfp4.input_scale(a, b), modelopt_input_scale(21.25))


@needs_modelopt
def test_modelopt_nibble_order_and_dequantize() -> None:
    w = edge_case_weight(torch.float32)
    ref = modelopt_export(w)
    from modelopt.torch.quantization.qtensor import NVFP4QTensor

    qt = NVFP4QTensor(w.shape, torch.float32, ref.weight)
    theirs = qt.dequantize(torch.float32, scale=ref.weight_scale, double_scale=ref.weight_scale_2, block_sizes={-1: 16})
    assert torch.equal(nvfp4.dequantize(*ref, dtype=torch.float32), theirs)
    # Low nibble = even element.
    assert nvfp4.dequantize(
        torch.tensor([[0x21] * 8], dtype=torch.uint8),
        torch.ones(1, 1).to(torch.float8_e4m3fn),
        torch.tensor(1.0),
        torch.float32,
    )[0, :2].tolist() == [0.5, 1.0]


@needs_modelopt
def test_all_zero_tensor_divergence() -> None:
    w = torch.zeros(2, 32)
    ref = modelopt_export(w)
    assert ref.weight_scale.float().isnan().all()  # ModelOpt: 0 / (6 * 0)
    ours = nvfp4.quantize(w)
    assert (ours.weight == 0).all() and (ours.weight_scale.float() == 1.0).all() and ours.weight_scale_2 == 0
    assert (nvfp4.dequantize(*ours) == 0).all()


def test_nan_inf_rejected() -> None:
    for bad in (float("nan"), float("inf")):
        w = torch.ones(1, 16)
        w[0, 3] = bad
        with pytest.raises(ValueError, match="NaN or Inf"):
            nvfp4.quantize(w)


def test_roundtrip_error_within_half_ulp() -> None:
    # Dynamic range 1e4 keeps every block scale a normal E4M3 (>= 2**-6 of 448); subnormal block
    # scales lose relative precision and the half-ulp bound no longer holds.
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(3)) * torch.logspace(-2, 2, 64).unsqueeze(1)
    q = nvfp4.quantize(w)
    step = (q.weight_scale.float() * q.weight_scale_2).unsqueeze(-1)
    blocks = w.unflatten(-1, (-1, 16))
    a = (blocks / step).abs()
    # Half the E2M1 spacing at that magnitude, plus the FP8 block-scale rounding (<= 2**-4 relative) at the top.
    bound = torch.where(a < 2, 0.25, torch.where(a < 4, 0.5, 1.0)) * step + blocks.abs() * 2**-4
    err = (nvfp4.dequantize(*q, dtype=torch.float32).unflatten(-1, (-1, 16)) - blocks).abs()
    assert (err <= bound).all()

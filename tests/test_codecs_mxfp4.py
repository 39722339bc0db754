"""MXFP4 codec vs the real producers: compressed-tensors and AMD Quark (CPU paths)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from sglang_ext.codecs import e2m1, mxfp4
from sglang_ext.codecs.mxfp4 import Producer, ScaleRule
from vendor_exports import ct_export, ct_scheme, quark_export

needs_ct = pytest.mark.skipif(
    importlib.util.find_spec("compressed_tensors") is None,
    reason="compressed-tensors not installed (pip install -e '.[codecs-test]')",
)
needs_quark = pytest.mark.skipif(
    importlib.util.find_spec("quark") is None, reason="amd-quark not installed (pip install -e '.[codecs-test]')"
)
CPU = torch.device("cpu")


def edge_case_weight(dtype: torch.dtype) -> torch.Tensor:
    """Rows of 64 (two blocks each) covering every rounding edge we know of."""
    g = torch.Generator().manual_seed(0)
    rows = [torch.randn(16, 64, generator=g) * 0.02]  # ordinary weights
    rows.append(torch.randn(4, 64, generator=g) * torch.logspace(-30, 30, 4).unsqueeze(1))  # 1e-30 .. 1e30
    rows.append(torch.zeros(2, 64))  # all-zero blocks
    single = torch.zeros(3, 64)
    single[0, 5], single[1, 40], single[2, 33] = 0.7, -3.0e-3, 1.0e20  # one nonzero per row
    rows.append(single)
    # Every E2M1 midpoint and grid point, both signs, with amax 6 so the scale is 1.
    ties = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 0.1, 0.0])
    rows.append(torch.cat([ties, -ties, ties * 2**-20, -ties * 2**-20]).reshape(1, 64))
    # amax mantissas around the 1.75 power-of-two rounding threshold.
    thresholds = torch.tensor([1.0, 1.5, 1.74, 1.75, 1.76, 1.999]).unsqueeze(1) * torch.ones(1, 64) * 0.3
    rows.append(thresholds)
    rows.append(torch.full((1, 64), -0.0))  # negative zeros
    w = torch.cat(rows).to(dtype)
    if dtype == torch.float32:  # float32 subnormals (bfloat16 shares the exponent range, so these survive there too)
        w = torch.cat([w, torch.randn(2, 64, generator=g) * 1e-39])
    return w


DTYPES = [torch.float32, torch.bfloat16]


# --------------------------------------------------------------------------- compressed-tensors
@needs_ct
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_compressed_tensors(dtype: torch.dtype) -> None:
    w = edge_case_weight(dtype)
    ref = ct_export(w)
    assert set(ref) == set(mxfp4.CT_TENSOR_NAMES)
    packed, scales = mxfp4.quantize(w, Producer.COMPRESSED_TENSORS)
    assert torch.equal(packed, ref["weight_packed"])
    assert torch.equal(scales, ref["weight_scale"])


@needs_ct
def test_compressed_tensors_unpack_agrees_on_nibble_order() -> None:
    from compressed_tensors.compressors.nvfp4.helpers import unpack_fp4_from_uint8

    packed = torch.tensor([[0x21, 0xF8]], dtype=torch.uint8)
    ours = e2m1.decode(e2m1.unpack(packed))
    assert ours.tolist() == [[0.5, 1.0, -0.0, -6.0]]  # low nibble first
    assert torch.equal(ours, unpack_fp4_from_uint8(packed, 1, 4, torch.float32))


@needs_ct
def test_compressed_tensors_decompress_matches_dequantize() -> None:
    from compressed_tensors.compressors import MXFP4PackedCompressor

    w = edge_case_weight(torch.bfloat16)[:20]
    ref = ct_export(w)
    theirs = MXFP4PackedCompressor.decompress(dict(ref), ct_scheme())["weight"]
    assert torch.equal(mxfp4.dequantize(ref["weight_packed"], ref["weight_scale"], torch.bfloat16), theirs)


# --------------------------------------------------------------------------- AMD Quark
@needs_quark
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_quark_export(dtype: torch.dtype) -> None:
    w = edge_case_weight(dtype)
    # amax >= 1.75 * 2**127 rounds to Inf; Quark clamps that to exponent 254.  (compressed-tensors
    # casts floor(log2(inf)) to int32 there, which is undefined, so this row is Quark-only.)
    huge = torch.zeros(1, 64)
    huge[0, 3], huge[0, 40] = 3.0e38, -2.9e38
    w = torch.cat([w, huge.to(dtype)])
    ref_packed, ref_scales = quark_export(w)
    packed, scales = mxfp4.quantize(w, Producer.QUARK)
    assert torch.equal(packed, ref_packed)
    assert torch.equal(scales, ref_scales)


@needs_quark
def test_quark_stores_zero_blocks_with_scale_byte_1() -> None:
    _, scales = quark_export(torch.zeros(1, 32))
    assert scales.tolist() == [[1]]
    assert mxfp4.quantize(torch.zeros(1, 32), Producer.QUARK)[1].tolist() == [[1]]
    assert mxfp4.quantize(torch.zeros(1, 32), Producer.COMPRESSED_TENSORS)[1].tolist() == [[0]]


def quark_dynamic_qdq(x: torch.Tensor) -> torch.Tensor:
    from quark.torch.quantization.config.config import OCP_MXFP4Spec
    from quark.torch.quantization.tensor_quantize import FakeQuantizeBase

    spec = OCP_MXFP4Spec(ch_axis=-1, is_dynamic=True).to_quantization_spec()
    # .fake_quantize is the CPU path; bf16/fp16 on a GPU go through the fused HIP/CUDA qdq_mxfp4 kernel.
    return FakeQuantizeBase.get_fake_quantize(spec, CPU).fake_quantize(x)


@needs_quark
@pytest.mark.parametrize("dtype", DTYPES)
def test_activation_qdq_matches_quark(dtype: torch.dtype) -> None:
    x = edge_case_weight(dtype)
    x = torch.cat([x, torch.randn(8, 64, generator=torch.Generator().manual_seed(1)).to(dtype) * 10])
    assert torch.equal(mxfp4.fake_quantize_activations(x), quark_dynamic_qdq(x))


@needs_quark
def test_activation_inf_matches_quark_cpu_path() -> None:
    x = torch.randn(2, 64, generator=torch.Generator().manual_seed(2))
    x[0, 3], x[1, 40] = float("inf"), float("-inf")
    ours = mxfp4.fake_quantize_activations(x)
    assert torch.equal(ours, quark_dynamic_qdq(x))
    assert ours[0, 3] == float("inf") and (ours[0, :32].isfinite().sum() == 31)


@needs_ct
@needs_quark
def test_producers_silently_encode_nan_and_inf() -> None:
    """Why quantize() rejects non-finite weights: neither producer flags them (Quark only
    asserts under QUARK_DEBUG_NAN=1), both write a finite-looking block instead."""
    for bad, ct_scale, quark_scale in ((float("nan"), 127, 127), (float("inf"), 127, 254)):
        w = torch.ones(1, 64)
        w[0, 3] = bad
        assert ct_export(w)["weight_scale"][0, 0] == ct_scale
        assert quark_export(w)[1][0, 0] == quark_scale


# --------------------------------------------------------------------------- format properties, no producer needed
def test_nan_policy() -> None:
    w = torch.ones(1, 64)
    w[0, 7] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        mxfp4.quantize(w)
    w[0, 7] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        mxfp4.quantize(w, Producer.QUARK)
    x = torch.ones(1, 64)
    x[0, 7] = float("nan")
    out = mxfp4.fake_quantize_activations(x)
    assert out[0, :32].isnan().all() and torch.equal(out[0, 32:], x[0, 32:])
    packed = torch.full((1, 32), 0x22, dtype=torch.uint8)
    deq = mxfp4.dequantize(packed, torch.tensor([[mxfp4.E8M0_NAN, 127]], dtype=torch.uint8), torch.float32)
    assert deq[0, :32].isnan().all() and (deq[0, 32:] == 1.0).all()


def half_ulp(scaled: torch.Tensor) -> torch.Tensor:
    """Half the E2M1 grid spacing around |scaled|: 0.5 below 2, 1 below 4, 2 above (6 saturates, amax/scale < 7)."""
    a = scaled.abs()
    return torch.where(a < 2, 0.25, torch.where(a < 4, 0.5, 1.0))


@pytest.mark.parametrize("producer", list(Producer))
def test_roundtrip_error_within_half_ulp(producer: Producer) -> None:
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(3)) * torch.logspace(-3, 3, 64).unsqueeze(1)
    packed, scales = mxfp4.quantize(w, producer)
    scale = torch.exp2(scales.float() - 127).unsqueeze(-1)
    blocks = w.unflatten(-1, (-1, 32))
    err = (mxfp4.dequantize(packed, scales, torch.float32).unflatten(-1, (-1, 32)) - blocks).abs()
    assert (err <= half_ulp(blocks / scale) * scale).all()


def test_mse3_never_worse_than_minmax() -> None:
    w = torch.randn(128, 128, generator=torch.Generator().manual_seed(4))
    err = {}
    for rule in ScaleRule:
        deq = mxfp4.dequantize(*mxfp4.quantize(w, scale_rule=rule), torch.float32)
        err[rule] = (deq - w).square().unflatten(-1, (-1, 32)).sum(-1)
    assert (err[ScaleRule.MSE3] <= err[ScaleRule.MINMAX]).all()
    assert (err[ScaleRule.MSE3] < err[ScaleRule.MINMAX]).any()

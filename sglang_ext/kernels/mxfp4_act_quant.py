"""Quark's dynamic MXFP4 activation quantize-dequantize as one Triton kernel.

Bit-exact with :func:`sglang_ext.codecs.mxfp4.fake_quantize_activations` (the reference of Quark's
``PerBlockMXObserver`` + ``fake_quantize_fp4_fp6_per_group_with_scale``), including its NaN/Inf policy:
a group holding NaN becomes all NaN, +-Inf stay, and the rest of an Inf group rounds with exponent 254.
The codec costs ~25 elementwise launches per call; this is one pass, which matters because the MoE calls
it twice per layer (before the gate/up GEMM and before the down GEMM).
"""

import torch
import triton
import triton.language as tl

from sglang_ext.codecs.mxfp4 import BLOCK, fake_quantize_activations

_GROUPS_PER_PROGRAM = 64


@triton.jit
def _mxfp4_qdq_kernel(x_ptr, out_ptr, n_groups, GROUPS: tl.constexpr, GROUP: tl.constexpr):
    groups = tl.program_id(0) * GROUPS + tl.arange(0, GROUPS)
    offsets = groups[:, None] * GROUP + tl.arange(0, GROUP)[None, :]
    in_range = groups[:, None] < n_groups
    x = tl.load(x_ptr + offsets, mask=in_range, other=0.0).to(tl.float32)

    mag = tl.abs(x)
    is_nan = mag != mag
    finite = mag < float("inf")
    # NaN groups are overwritten at the end, so NaN only has to stay out of the max.
    amax = tl.max(tl.where(is_nan, 0.0, mag), axis=1)
    # Quark's even_round: +2**21 on the float32 bits carries into the exponent iff mantissa >= 0.75,
    # then subtract emax(E2M1) = 2; an Inf amax (field 255) clamps to 254.
    field = ((amax.to(tl.int32, bitcast=True) + (1 << 21)) >> 23) & 0xFF
    exponent = tl.where(field == 0xFF, 254, tl.maximum(field - 2, 0))
    # 2**(e-127) and its exact inverse 2**(127-e), built from bits: e = 0 and e = 254 are the subnormal
    # 2**-127 on one side, so x * inverse rounds exactly like the codec's x / scale.
    scale = tl.where(exponent > 0, exponent << 23, 1 << 22).to(tl.float32, bitcast=True)
    inverse = tl.where(exponent < 254, (254 - exponent) << 23, 1 << 22).to(tl.float32, bitcast=True)
    y = x * inverse[:, None]

    # Round to the nearest E2M1 magnitude, ties to the even code (0.25->0, 0.75->1, 1.25->1, 1.75->2, ...).
    m = tl.abs(y)
    q = tl.where(m > 0.25, 0.5, 0.0)
    q = tl.where(m >= 0.75, 1.0, q)
    q = tl.where(m > 1.25, 1.5, q)
    q = tl.where(m >= 1.75, 2.0, q)
    q = tl.where(m > 2.5, 3.0, q)
    q = tl.where(m >= 3.5, 4.0, q)
    q = tl.where(m > 5.0, 6.0, q)
    # Quark returns +0.0 for anything that rounds to zero, so only non-zero codes take the sign.
    q = tl.where((y < 0) & (q > 0), -q, q)

    out = tl.where(finite, q * scale[:, None], x)
    group_has_nan = tl.max(is_nan.to(tl.int32), axis=1) > 0
    out = tl.where(group_has_nan[:, None], float("nan"), out)
    tl.store(out_ptr + offsets, out.to(out_ptr.dtype.element_ty), mask=in_range)


def fake_quantize_mxfp4_triton(x: torch.Tensor) -> torch.Tensor:
    """Per-32-group MXFP4 quantize-dequantize of ``x`` along its last dimension, in ``x.dtype``."""
    if x.shape[-1] % BLOCK:
        raise ValueError(f"MXFP4 activation quantization needs a last dimension divisible by {BLOCK}, got {x.shape[-1]}")
    x = x.contiguous()
    out = torch.empty_like(x)
    n_groups = x.numel() // BLOCK
    if n_groups:
        grid = (triton.cdiv(n_groups, _GROUPS_PER_PROGRAM),)
        _mxfp4_qdq_kernel[grid](x, out, n_groups, GROUPS=_GROUPS_PER_PROGRAM, GROUP=BLOCK)
    return out


def fake_quantize_mxfp4(x: torch.Tensor) -> torch.Tensor:
    """The Triton kernel on GPU tensors, the codec (same bits) on CPU tensors."""
    return fake_quantize_mxfp4_triton(x) if x.is_cuda else fake_quantize_activations(x)

"""OCP MXFP4: E2M1 elements with one E8M0 scale per 32 elements of the last dimension.

On disk (both producers):

* ``packed``: uint8 ``[..., K/2]``; byte ``i`` holds element ``2i`` in its low
  nibble and ``2i+1`` in its high nibble (see :mod:`.e2m1`).
* ``scales``: uint8 ``[..., K/32]``; E8M0 = a biased power of two,
  ``2 ** (byte - 127)``; byte ``0xFF`` is NaN.

Scale rule (identical in both producers for finite inputs): round the block's
``amax`` to a power of two by adding ``1 << 21`` to its float32 bit pattern and
masking off the mantissa (so ``[1.75, 2) * 2**n`` rounds up to ``2**(n+1)``),
then subtract ``emax(E2M1) = 2``.  Sources:
Quark ``quark/torch/quantization/utils.py:even_round``;
compressed-tensors ``quantization/utils/mxfp_utils.py:round_to_power_2`` +
``generate_mx_scales``.  Elements are ``x / 2**(byte - 127)`` rounded by
:func:`.e2m1.encode`.

Where the producers differ (``Producer``):

* Biased exponent clamp: Quark clamps to ``[-127, 127]`` (bytes 0..254) when
  quantizing, then *exports* ``to_e8m0_uint8`` which clamps ``log2(scale)`` at
  -126, so all-zero (and sub-``2**-124``) blocks are stored as byte **1** while
  their elements were computed with ``2**-127``.  compressed-tensors stores 0.
* Sign of rounded-to-zero elements: :class:`.e2m1.ZeroSign`.

NaN/Inf policy: :func:`quantize` raises ``ValueError``.  Neither producer
rejects them: Quark asserts only under ``QUARK_DEBUG_NAN=1``
(``torch/utils/debug.py:assert_no_nan``) and otherwise writes scale byte 127
for a NaN block and 254 for an Inf block; compressed-tensors writes 127 for
both (``floor(log2(nan|inf)).to(int32)`` is undefined) -- silently wrong
blocks either way.  :func:`dequantize` decodes scale byte 0xFF as NaN for the
whole block (OCP MX spec v1.0).  :func:`fake_quantize_activations` mirrors
Quark's CPU path: a block containing NaN becomes all NaN, +-Inf stay +-Inf
and the rest of that block rounds to 0.
"""

from __future__ import annotations

from enum import Enum

import torch

from . import e2m1

BLOCK = 32
E8M0_BIAS = 127
E8M0_NAN = 0xFF
_E2M1_EMAX = 2
_QUARK_MIN_EXPORTED_BYTE = 1

CT_TENSOR_NAMES = ("weight_packed", "weight_scale")
"""Tensors per layer in compressed-tensors format ``mxfp4-pack-quantized``
(``MXFP4PackedCompressor.compression_param_names`` for a symmetric weight-only
scheme; ``input_global_scale`` is added only for static activations)."""


class Producer(Enum):
    QUARK = "quark"
    COMPRESSED_TENSORS = "compressed-tensors"


class ScaleRule(Enum):
    MINMAX = "minmax"
    """Power of two from the block amax: what both producers do by default
    (llm-compressor picks the ``memoryless_minmax`` observer for weights,
    ``modifiers/quantization/calibration.py:initialize_observer``)."""
    MSE3 = "mse3"
    """Try the MINMAX exponent and its two neighbours, keep the one with the
    lowest squared error (first of MINMAX, +1, -1 on ties).  This is what the
    olka-fi Qwen3.5 MXFP4 cards describe; it is NOT in compressed-tensors or
    llm-compressor (their ``memoryless_mse`` observer shrinks amax over a
    100-step grid instead), so it only reproduces checkpoints from that custom
    tool."""


_ZERO_SIGN = {Producer.QUARK: e2m1.ZeroSign.POSITIVE, Producer.COMPRESSED_TENSORS: e2m1.ZeroSign.NEGATIVE}


def _blocks(x: torch.Tensor) -> torch.Tensor:
    if x.shape[-1] % BLOCK:
        raise ValueError(f"last dimension {x.shape[-1]} is not a multiple of {BLOCK}")
    return x.unflatten(-1, (x.shape[-1] // BLOCK, BLOCK))


def minmax_exponent(amax: torch.Tensor) -> torch.Tensor:
    """Biased E8M0 exponent (int32, 0..254) that both producers quantize with.

    Bit trick on float32 ``amax``: ``+ (1 << 21)`` carries into the exponent
    field exactly when the mantissa is >= 0.75.  A carry out of the largest
    finite binade gives Inf, which Quark clamps to 127 (biased 254).
    """
    field = ((amax.float().view(torch.int32) + (1 << 21)) >> 23) & 0xFF
    return torch.where(field == 0xFF, 254, (field - _E2M1_EMAX).clamp(min=0))


def _scale_value(exponent: torch.Tensor) -> torch.Tensor:
    """``2**(e - 127)`` as float32, built from bits so it is exact; e=0 is the
    subnormal ``2**-127`` that both producers divide by."""
    e = exponent.int()
    return torch.where(e > 0, e << 23, 1 << 22).view(torch.float32)


def _element_codes(blocks: torch.Tensor, exponent: torch.Tensor, zero_sign: e2m1.ZeroSign) -> torch.Tensor:
    return e2m1.encode(blocks.float() / _scale_value(exponent).unsqueeze(-1), zero_sign)


def _mse3_exponent(blocks: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    candidates = torch.stack((base, base + 1, base - 1), dim=-1).clamp(0, 254)
    x = blocks.float().unsqueeze(-2)
    scale = _scale_value(candidates).unsqueeze(-1)
    err = (e2m1.quantize_dequantize(x / scale) * scale - x).square().sum(-1)
    return candidates.gather(-1, err.argmin(-1, keepdim=True)).squeeze(-1)


def quantize(
    w: torch.Tensor,
    producer: Producer = Producer.COMPRESSED_TENSORS,
    scale_rule: ScaleRule = ScaleRule.MINMAX,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize ``w [..., K]`` (K % 32 == 0) to ``(packed uint8 [..., K/2], scales uint8 [..., K/32])``.

    Bit-exact with the producer's export for float32 and bfloat16 inputs.
    """
    if not torch.isfinite(w).all():
        raise ValueError("MXFP4 quantize: input contains NaN or Inf")
    blocks = _blocks(w)
    exponent = minmax_exponent(blocks.abs().amax(-1))
    if scale_rule is ScaleRule.MSE3:
        exponent = _mse3_exponent(blocks, exponent)
    packed = e2m1.pack(_element_codes(blocks, exponent, _ZERO_SIGN[producer]).flatten(-2))
    if producer is Producer.QUARK:
        exponent = exponent.clamp(min=_QUARK_MIN_EXPORTED_BYTE)
    return packed, exponent.to(torch.uint8)


def dequantize(packed: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Inverse of :func:`quantize`: ``E2M1(code) * 2**(scale - 127)``, NaN for scale byte 0xFF."""
    values = _blocks(e2m1.decode(e2m1.unpack(packed)))
    scale = torch.where(scales == E8M0_NAN, torch.nan, _scale_value(scales))
    return (values * scale.unsqueeze(-1)).flatten(-2).to(dtype)


def fake_quantize_activations(x: torch.Tensor) -> torch.Tensor:
    """Quark's dynamic per-32-group MXFP4 quantize-dequantize along the last dimension.

    Reference: ``DynamicScaledFakeQuantize.fake_quantize`` with
    ``OCP_MXFP4Spec(is_dynamic=True)`` -> ``PerBlockMXObserver`` (``even_round``)
    -> ``hw_emulation_interface.py:fake_quantize_fp4_fp6_per_group_with_scale``,
    computed in float32 and cast back to ``x.dtype``.
    """
    blocks = _blocks(x.float())
    finite = torch.isfinite(blocks)
    # An Inf amax rounds to exponent 254 (Quark's clamp); NaN blocks are overwritten below.
    exponent = minmax_exponent(blocks.abs().amax(-1))
    scale = _scale_value(exponent).unsqueeze(-1)
    out = torch.where(finite, e2m1.quantize_dequantize(blocks / scale) * scale, blocks)
    out = torch.where(blocks.isnan().any(-1, keepdim=True), torch.nan, out)
    return out.flatten(-2).to(x.dtype)

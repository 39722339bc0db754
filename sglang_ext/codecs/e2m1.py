"""FP4 E2M1 element codec shared by MXFP4 and NVFP4.

Code layout (4 bits): ``s e1 e0 m`` - bit 3 is the sign, bits 2..0 index the
magnitude table ``(0, 0.5, 1, 1.5, 2, 3, 4, 6)`` (exponent bias 1, one
subnormal ``0.5``, no Inf/NaN encodings).

Packing: two codes per byte along the last dimension; element ``2i`` goes in
the LOW nibble (bits 3..0) and element ``2i+1`` in the HIGH nibble (bits 7..4)
of byte ``i``.  Every producer we mirror uses this order:
compressed-tensors ``pack_fp4_to_uint8`` (``indices[:, 0] | indices[:, 1] << 4``),
ModelOpt ``NVFP4QTensor.quantize`` (``q[..., 1::2] << 4 | q[..., 0::2]``) and
Quark ``Pack_fp4.pack`` (``(t[..., 1] << 4) + t[..., 0]``).

Rounding: round-to-nearest, ties-to-even code (0.25->0, 0.75->1, 1.25->1,
1.75->2, 2.5->2, 3.5->4, 5->4), saturating at 6 -- what all three producers
compute, each with different code.
"""

from __future__ import annotations

from enum import Enum

import torch

E2M1_MAX = 6.0

_MAGNITUDES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
E2M1_VALUES = torch.tensor(_MAGNITUDES + tuple(-v for v in _MAGNITUDES), dtype=torch.float32)
"""Value of each 4-bit code 0..15 (code 8 is -0.0, which decodes to 0)."""

# Midpoints between neighbouring magnitudes.  A midpoint rounds up exactly when
# the upper neighbour has an even code (1.0, 2.0, 4.0), so those use ">=".
_ROUND_UP_AT_TIE = ((0.25, False), (0.75, True), (1.25, False), (1.75, True), (2.5, False), (3.5, True), (5.0, False))


class ZeroSign(Enum):
    """Which sign bit a value that rounds to magnitude 0 gets; the producers differ."""

    NEGATIVE = "negative"
    """Set iff the input is ``< 0``, so -0.0 -> +0 but -0.1 -> -0 (ModelOpt ``_cast_fp4``;
    compressed-tensors ``cast_to_fp4``, whose ``torch.sign(-0.0)`` is 0)."""
    POSITIVE = "positive"
    """Always +0 (Quark ``fake_quantize_element`` returns ``0.0`` when the mantissa rounds away)."""


def encode(x: torch.Tensor, zero_sign: ZeroSign) -> torch.Tensor:
    """Round already-scaled values to E2M1 codes (uint8, one code per element).

    ``x`` must be finite; NaN maps to code 0 here, callers decide the policy.
    """
    x = x.float()
    mag = x.abs()
    code = torch.zeros(x.shape, dtype=torch.uint8, device=x.device)
    for midpoint, up_at_tie in _ROUND_UP_AT_TIE:
        code += (mag >= midpoint if up_at_tie else mag > midpoint).to(torch.uint8)
    negative = x < 0
    if zero_sign is ZeroSign.POSITIVE:
        negative &= code != 0
    return code | (negative.to(torch.uint8) << 3)


def decode(codes: torch.Tensor) -> torch.Tensor:
    """E2M1 codes (uint8, low 4 bits used) to float32 values."""
    return E2M1_VALUES.to(codes.device)[(codes & 0x0F).long()]


def pack(codes: torch.Tensor) -> torch.Tensor:
    """Pack codes ``[..., K]`` (K even) into bytes ``[..., K/2]``, even element in the low nibble."""
    if codes.shape[-1] % 2:
        raise ValueError(f"last dimension must be even to pack E2M1, got {codes.shape[-1]}")
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack`: bytes ``[..., K/2]`` to codes ``[..., K]``."""
    if packed.dtype != torch.uint8:
        raise TypeError(f"packed E2M1 data must be uint8, got {packed.dtype}")
    return torch.stack((packed & 0x0F, packed >> 4), dim=-1).flatten(-2)


def quantize_dequantize(x: torch.Tensor) -> torch.Tensor:
    """Round already-scaled values to the nearest E2M1 value (float32), sign of zero dropped."""
    return decode(encode(x, ZeroSign.POSITIVE))

"""NVIDIA ModelOpt NVFP4: E2M1 elements, an FP8 E4M3 scale per 16 elements, an FP32 global scale.

On disk (ModelOpt unified HF export), per linear layer:

* ``weight``: uint8 ``[..., K/2]``, element ``2i`` in the low nibble of byte ``i`` (see :mod:`.e2m1`).
* ``weight_scale``: float8_e4m3fn ``[..., K/16]``, per-block scale *before* the global scale.
* ``weight_scale_2``: float32 scalar, ``amax(W) / (6 * 448)``.
* ``input_scale``: float32 scalar, calibrated activation ``amax / (6 * 448)``.

``W ~= E2M1(code) * float(weight_scale) * weight_scale_2``.

Quantization follows ``modelopt/torch/quantization/qtensor/nvfp4_tensor.py``
(``NVFP4QTensor.get_weights_scaling_factor_2``, ``get_weights_scaling_factor``,
``quantize``, ``_cast_fp4``) operation for operation, in float32:
``block = amax_block / (6 * weight_scale_2)``, 0 -> 1.0, clamped to
``[2**-9, 448]``, cast to E4M3 (round-to-nearest-even); elements are
``w / (float(block) * weight_scale_2)`` rounded to E2M1 with ties to even and
the sign bit set for any input ``< 0`` (so ``-0.1`` -> code 8, ``-0.0`` -> code 0).

NaN/Inf policy: :func:`quantize` raises ``ValueError`` (ModelOpt propagates
them into NaN scales).  An all-zero tensor is the one deliberate divergence:
ModelOpt computes ``0 / (6 * 0)`` = NaN block scales (byte 0x7F) and code 7
(6.0) elements; we emit ``weight_scale_2 = 0``, block scales 1.0 and zero
codes, which dequantize to exact zeros.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from . import e2m1

BLOCK = 16
E4M3_MAX = 448.0
_E4M3_MIN_SUBNORMAL = 2.0**-9


class NVFP4Weight(NamedTuple):
    """One quantized weight, fields named as the checkpoint tensors."""

    weight: torch.Tensor
    weight_scale: torch.Tensor
    weight_scale_2: torch.Tensor


def global_scale(amax: torch.Tensor) -> torch.Tensor:
    """``weight_scale_2`` / ``input_scale`` from an amax: ``amax / (6 * 448)`` in float32."""
    return amax.float() / (e2m1.E2M1_MAX * E4M3_MAX)


def input_scale(*amaxes: torch.Tensor) -> torch.Tensor:
    """``input_scale`` of one linear, or of layers fused into one (gate/up, q/k/v).

    ModelOpt gives fused layers the max of their calibrated input amaxes
    (``export/quant_utils.py:preprocess_linear_fusion``).
    """
    return global_scale(torch.stack([a.reshape(()) for a in amaxes]).amax())


def quantize(w: torch.Tensor, weight_scale_2: torch.Tensor | None = None) -> NVFP4Weight:
    """Quantize ``w [..., K]`` (K % 16 == 0); ``weight_scale_2`` defaults to ``amax(w) / 2688``.

    Pass ``weight_scale_2`` to share one global scale between tensors (see
    :func:`tie_gate_up`); it must broadcast against ``w.shape[:-1] + (K/16,)``.
    """
    if not torch.isfinite(w).all():
        raise ValueError("NVFP4 quantize: input contains NaN or Inf")
    if w.shape[-1] % BLOCK:
        raise ValueError(f"last dimension {w.shape[-1]} is not a multiple of {BLOCK}")
    if weight_scale_2 is None:
        weight_scale_2 = global_scale(w.abs().amax())
    weight_scale_2 = weight_scale_2.float()
    blocks = w.unflatten(-1, (w.shape[-1] // BLOCK, BLOCK))
    if not weight_scale_2.any():
        codes = torch.zeros(blocks.shape, dtype=torch.uint8, device=w.device)
        block_scale = torch.ones(blocks.shape[:-1], device=w.device)
    else:
        block_scale = blocks.abs().amax(-1).float() / (e2m1.E2M1_MAX * weight_scale_2)
        block_scale[block_scale == 0] = 1.0
        block_scale = block_scale.clamp(min=_E4M3_MIN_SUBNORMAL, max=E4M3_MAX)
        block_scale = block_scale.to(torch.float8_e4m3fn).float()
        codes = e2m1.encode(blocks / (block_scale * weight_scale_2).unsqueeze(-1), e2m1.ZeroSign.NEGATIVE)
    return NVFP4Weight(e2m1.pack(codes.flatten(-2)), block_scale.to(torch.float8_e4m3fn), weight_scale_2)


def dequantize(
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_scale_2: torch.Tensor,
    dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """``E2M1(code) * weight_scale * weight_scale_2`` in float32, cast to ``dtype``."""
    values = e2m1.decode(e2m1.unpack(weight))
    values = values.unflatten(-1, (values.shape[-1] // BLOCK, BLOCK))
    scale = weight_scale.float() * weight_scale_2.float()
    return (values * scale.unsqueeze(-1)).flatten(-2).to(dtype)


def tie_gate_up(gate: torch.Tensor, up: torch.Tensor) -> tuple[NVFP4Weight, NVFP4Weight]:
    """Quantize gate (w1) and up (w3) with one shared ``weight_scale_2`` for a fused w13.

    ModelOpt sets both weight quantizers' amax to ``max(amax(gate), amax(up))``
    before export (``preprocess_linear_fusion``) and requantizes both from it;
    block scales and codes then follow from the shared global scale.
    """
    shared = global_scale(torch.maximum(gate.abs().amax(), up.abs().amax()))
    return quantize(gate, shared), quantize(up, shared)

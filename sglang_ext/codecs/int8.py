"""AMD Quark W8A8 INT8: per-output-channel symmetric weights, per-token dynamic activations.

On disk (after the Qwen3.6 INT8 card's rename, see :func:`rename_quark_checkpoint`):

* ``weight``: int8 ``[out, in]``.
* ``weight_scale``: ``[out]`` in the model dtype (bfloat16 for Qwen), ``W ~= weight * weight_scale[:, None]``.
* no zero points (symmetric), no ``input_scale`` (activations are dynamic).

Quark's rule (``Int8PerChannelSpec(symmetric=True, round_method="half_even")``):

* scale: ``amax / 127.5`` -- the range ``[-128, 127]`` halved, not 127
  (``observer.py:UniformScalingObserver.calculate_int_quant_params``), in
  float32, floored at float32 eps, then stored in the weight's dtype.
* value: ``round_half_even(x * (1 / scale)).clamp(-128, 127)`` in float32,
  multiplying by the reciprocal (``hw_emulation_interface.py:
  real_quantize_int_per_channel_affine``).  When ``amax / scale`` reaches
  127.5 (exact for bfloat16 amax ``255/128 * 2**k``, or a float32 scale that
  rounded down) a negative amax becomes -128 and a positive one clamps to 127:
  -128 does occur in exported weights.

NaN/Inf policy: :func:`quantize` raises ``ValueError`` (Quark asserts
``assert_no_nan`` on weights and scales).  :func:`quantize_activations_per_token`
is the runtime path and does not check: a NaN or Inf in a token makes that
token's scale NaN/Inf, and its codes are whatever the float->int8 cast gives.
"""

from __future__ import annotations

import torch

_HALF_RANGE = (127 - (-128)) / 2
_EPS = torch.finfo(torch.float32).eps


def _scale(amax: torch.Tensor) -> torch.Tensor:
    return torch.clamp(amax.float() / _HALF_RANGE, min=_EPS)


def _codes(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    # torch.round is round-half-to-even, Quark's "half_even" (RoundType 8).
    return torch.round(x.float() * (1.0 / scale.float())).clamp(-128, 127).to(torch.int8)


def quantize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize ``w [out, in]`` to ``(int8 [out, in], weight_scale [out] in w.dtype)``."""
    if not torch.isfinite(w).all():
        raise ValueError("INT8 quantize: input contains NaN or Inf")
    scale = _scale(w.abs().amax(-1)).to(w.dtype)
    return _codes(w, scale.unsqueeze(-1)), scale


def dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """``q * scale`` per output channel; ``scale`` may be ``[out]`` or ``[out, 1]``."""
    return (q.float() * scale.float().reshape(-1, 1)).to(dtype)


def quantize_activations_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quark's dynamic per-token symmetric INT8: ``(int8 like x, float32 scale [..., 1])``.

    One scale per row of the last dimension, rule as for weights; the scale
    is rounded to ``x.dtype`` (Quark keeps qparams in the activation dtype)
    and returned widened to float32.
    """
    scale = _scale(x.abs().amax(-1, keepdim=True)).to(x.dtype)
    return _codes(x, scale), scale.float()


def rename_quark_checkpoint(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename Quark's native export keys the way the Qwen3.6 INT8 card did.

    ``<m>.weight_quantizer.scale`` -> ``<m>.weight_scale`` (and likewise for
    every ``*_quantizer.scale``), ``*_quantizer.zero_point`` dropped (always 0
    for symmetric int8), ``[out, 1]`` scales squeezed to ``[out]``.
    """
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        if key.endswith("_quantizer.zero_point"):
            continue
        if key.endswith("_quantizer.scale"):
            key = key.removesuffix("_quantizer.scale") + "_scale"
            if tensor.dim() == 2 and tensor.shape[1] == 1:
                tensor = tensor.squeeze(1)
        out[key] = tensor
    return out

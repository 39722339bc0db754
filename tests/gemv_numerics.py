"""References for sglang_ext.kernels.gemv, shared by the interpreter tests and the GPU tests."""

import torch

FP32_UNIT = 2.0**-24


def exact(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight^T + bias`` in float64: exact for 16-bit inputs at these sizes, to well below any bound here."""
    out = x.double() @ weight.double().T
    return out if bias is None else out + bias.double()


def rounding_bound(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, output_rounding: float) -> torch.Tensor:
    """How far a float32-accumulated ``x @ weight^T + bias`` rounded once to the output dtype may be from the
    exact value, per element: the output rounding (relative), plus float32 summation error in any order (K
    terms; products of 16-bit inputs are exact in float32), doubled to cover the bias addition and the rounding
    of the sum's own error."""
    magnitude = x.double().abs() @ weight.double().abs().T
    if bias is not None:
        magnitude = magnitude + bias.double().abs()
    return output_rounding * exact(x, weight, bias).abs() + 2 * x.shape[-1] * FP32_UNIT * magnitude


def within_rounding(out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                    output_rounding: float) -> bool:  # fmt: skip
    rows = x.reshape(-1, x.shape[-1])
    error = (out.reshape(rows.shape[0], -1).double() - exact(rows, weight, bias)).abs()
    return bool((error <= rounding_bound(rows, weight, bias, output_rounding)).all())


def int32_products(x_q: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """int8 x int8 summed exactly (int64, so an int32 overflow would show; float64 on a GPU, exact below 2**53)."""
    if x_q.is_cuda:
        return (x_q.double() @ weight.double().T).long()
    return x_q.long() @ weight.long().T


def per_token_quant_int8_reference(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SGLang's ``per_token_quant_int8`` (its Triton kernel's arithmetic): float32 absmax of each row (at least
    1e-10), ``x * (127 / absmax)`` rounded half away from zero (libdevice's roundf), scale ``absmax / 127``."""
    x32 = x.float()
    absmax = x32.abs().amax(dim=-1, keepdim=True).clamp_min(1e-10)
    # Tensor over tensor: one float32 division (torch takes a number over a tensor as its reciprocal times it).
    multiplier = torch.full_like(absmax, 127) / absmax
    scaled = (x32 * multiplier).double()  # float32 products, rounded below exactly in float64
    x_q = (scaled.sign() * (scaled.abs() + 0.5).floor()).to(torch.int8)
    return x_q, absmax / 127

"""Small-M GEMV: ``y = x @ W^T`` for the 1-8 tokens of a decode step, BF16 or INT8 W8A8, in Triton.

At batch 1-8 a dense linear reads its whole weight to produce a few rows, so its time is the weight's bytes
over the bandwidth it reaches; cuBLAS's M = 1 kernels reach about half of the copy bandwidth on an H200
(docs/performance.md). This kernel is built for the bandwidth:

* each weight byte is read once for all rows: the M rows are one 16-row ``tl.dot`` tile (its smallest),
  the rows past M masked to zero;
* the weight is SGLang's Linear weight as stored, ``[N, K]`` row-major, read along K: a tile row is whole
  16-byte vector loads (K is a multiple of the tile's K), pipelined through shared memory (``num_stages``);
* where N gives too few column blocks to occupy every SM, K is split across programs. The last program of
  a column block to finish (an arrival ticket per block) sums the block's partials in split order, so the
  result does not depend on which program came last, and stores it: one launch, deterministic;
* tile shape, split and pipeline depth are autotuned per (N, K, M rounded up to a power of 2) on the first
  call of each, and the timings are kept in Triton's cache directory for the next process.

Three entry points over one kernel:

* :func:`gemv`: what ``F.linear(x, weight, bias)`` computes in BF16/FP16: float32 accumulation, the bias
  added in float32, one rounding to the output dtype.
* :func:`int8_scaled_gemv`: what sgl_kernel's ``int8_scaled_mm`` computes on sm90 (SGLang's W8A8 INT8 linear
  after ``per_token_quant_int8``): int8 x int8 products summed in int32, then
  ``x_scale * (w_scale * float(acc))``, with a bias as one fused multiply-add, in float32, one rounding.
* :func:`int8_gemv`: both of SGLang's W8A8 INT8 steps in one launch: each program quantizes the BF16 rows as
  ``per_token_quant_int8`` does (absmax over the whole row, ``round(x * (127 / absmax))``, scale
  ``absmax / 127``) and goes on as :func:`int8_scaled_gemv`. At a few tokens the separate quantization is a
  launch of its own per linear (55 per 20-layer decode step of the 35B with its shared expert fused); here
  each program reads its rows (a few KB, from L2) once more instead.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
import triton.testing

MAX_M = 8  # decode at batch 1-8; the 16-row tile would hold up to 16 (not measured)
BLOCK_M = 16
# (BLOCK_N, BLOCK_K): 16-32 KB of BF16 weight per pipeline stage, so each SM keeps tens of KB in flight.
TILES = ((16, 512), (32, 256), (64, 128), (32, 512), (64, 256))
SPLITS = (1, 2, 4, 8, 16, 32)
K_MULTIPLE = min(block_k for _, block_k in TILES)
CONFIGS = [
    triton.Config({"BLOCK_N": block_n, "BLOCK_K": block_k, "SPLIT_K": split}, num_warps=4, num_stages=stages)
    for block_n, block_k in TILES
    for split in SPLITS
    for stages in (3, 4)
]


def fits(config: triton.Config, n: int, k: int, num_sms: int) -> bool:
    """Whether `config` serves an ``[n, k]`` weight on a GPU of `num_sms` SMs: every split runs whole BLOCK_K
    steps, and K is split further only while half as many splits left SMs without a program."""
    block_n, block_k, split = (config.kwargs[key] for key in ("BLOCK_N", "BLOCK_K", "SPLIT_K"))
    return k % (block_k * split) == 0 and (split == 1 or triton.cdiv(n, block_n) * split // 2 < num_sms)


def supports(weight: torch.Tensor) -> bool:
    """Whether the kernel takes this weight: ``[N, K]`` row-major BF16, FP16 or INT8, K a multiple of some tile's K."""
    return (
        weight.dim() == 2
        and weight.stride(1) == 1
        and weight.stride(0) == weight.shape[1]
        and weight.dtype in (torch.bfloat16, torch.float16, torch.int8)
        and weight.shape[1] % K_MULTIPLE == 0
    )


@functools.cache
def _num_sms(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _candidates(configs: list[triton.Config], n: int, k: int, device: torch.device) -> list[triton.Config]:
    return [config for config in configs if fits(config, n, k, _num_sms(device))]


def _prune(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    return _candidates(configs, named_args["N"], named_args["K"], named_args["w_ptr"].device)


def _bench(kernel_call, quantiles):
    # Triton's default (25 ms warm-up, 100 ms timed per config) would add minutes to a server's first start.
    return triton.testing.do_bench(kernel_call, warmup=5, rep=25, quantiles=quantiles)


@triton.jit
def _row_absmax(x_ptr, rows, row_in, stride_xm, K, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """per_token_quant_int8's absmax of each row over all of K, at least 1e-10 (rows past M: 1e-10)."""
    absmax = tl.zeros((BLOCK_M,), dtype=tl.float32)
    ks = tl.arange(0, BLOCK_K)
    for start in range(0, K, BLOCK_K):
        x = tl.load(x_ptr + rows[:, None] * stride_xm + (start + ks)[None, :], mask=row_in[:, None], other=0.0)
        absmax = tl.maximum(absmax, tl.max(tl.abs(x.to(tl.float32)), axis=1))
    return tl.maximum(absmax, 1e-10)


@triton.jit
def _quantize(x, multiplier):
    """per_token_quant_int8's int8 rows: x * (127 / absmax) in float32, rounded half away from zero as
    libdevice's roundf (which the interpreter lacks): the truncation toward zero, one unit further out where the
    magnitude's fraction, exact in float32, is half or more. The fraction is taken of the magnitude so that no
    fused multiply-add can take the product unrounded."""
    scaled = x.to(tl.float32) * multiplier[:, None]
    whole = scaled.to(tl.int32)
    fraction = tl.abs(scaled) - tl.abs(whole).to(tl.float32)
    whole += tl.where(fraction >= 0.5, tl.where(scaled < 0, -1, 1), 0)
    return whole.to(tl.int8)


@triton.jit
def _store_output(acc, out_ptr, bias_ptr, x_scale, w_scale_ptr, rows, cols, M, N,
                  HAS_BIAS: tl.constexpr, INT8: tl.constexpr):  # fmt: skip
    row_in, col_in = rows < M, cols < N
    if INT8:
        # sgl_kernel's sm90 epilogue: w_scale * float(acc), then x_scale times that (+ bias, one fma), in float32.
        w_scale = tl.load(w_scale_ptr + cols, mask=col_in, other=0.0)
        out = w_scale[None, :] * acc.to(tl.float32)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + cols, mask=col_in, other=0.0).to(tl.float32)
            out = tl.fma(x_scale[:, None], out, bias[None, :])
        else:
            out = x_scale[:, None] * out
    else:
        out = acc
        if HAS_BIAS:
            out += tl.load(bias_ptr + cols, mask=col_in, other=0.0).to(tl.float32)[None, :]
    out_ptrs = out_ptr + rows[:, None] * N + cols[None, :]
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=row_in[:, None] & col_in[None, :])


@triton.autotune(CONFIGS, key=["N", "K", "M_BUCKET"], prune_configs_by={"early_config_prune": _prune},
                 do_bench=_bench, cache_results=True)  # fmt: skip
@triton.jit(do_not_specialize=["M", "M_BUCKET"])
def _gemv_kernel(x_ptr, w_ptr, out_ptr, bias_ptr, x_scale_ptr, w_scale_ptr, partials_ptr, tickets_ptr,
                 M, N, K, stride_xm, M_BUCKET,
                 HAS_BIAS: tl.constexpr, INT8: tl.constexpr, QUANTIZE_X: tl.constexpr, BLOCK_M: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr):  # fmt: skip
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rows = tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    steps = K // (SPLIT_K * BLOCK_K)  # per split; a whole number of steps keeps every load 16-byte aligned
    ks = pid_k * steps * BLOCK_K + tl.arange(0, BLOCK_K)
    x_ptrs = x_ptr + rows[:, None] * stride_xm + ks[None, :]
    w_ptrs = w_ptr + cols[:, None].to(tl.int64) * K + ks[None, :]  # int64: a vocabulary x hidden may pass 2**31
    row_in, col_in = rows < M, cols < N
    x_scale = tl.zeros((BLOCK_M,), dtype=tl.float32)  # INT8 only
    if QUANTIZE_X:
        absmax = _row_absmax(x_ptr, rows, row_in, stride_xm, K, BLOCK_M, BLOCK_K)
        multiplier = 127 / absmax  # per_token_quant_int8's very expressions, so the same bits
        x_scale = absmax / 127
    elif INT8:
        x_scale = tl.load(x_scale_ptr + rows, mask=row_in, other=0.0)
    if INT8:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for _ in range(steps):
        x = tl.load(x_ptrs, mask=row_in[:, None], other=0)
        if QUANTIZE_X:
            x = _quantize(x, multiplier)
        w = tl.load(w_ptrs, mask=col_in[:, None], other=0)
        acc = tl.dot(x, tl.trans(w), acc, out_dtype=acc.dtype)
        x_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    if SPLIT_K == 1:
        _store_output(acc, out_ptr, bias_ptr, x_scale, w_scale_ptr, rows, cols, M, N, HAS_BIAS, INT8)
    else:
        tile = row_in[:, None] & col_in[None, :]
        block_partials = partials_ptr + rows[:, None] * N + cols[None, :]  # partials: [SPLIT_K, M, N]
        tl.store(block_partials + pid_k * M * N, acc, mask=tile)
        tl.debug_barrier()  # all of this program's stores precede its ticket, whose release publishes them
        if tl.atomic_add(tickets_ptr + pid_n, 1, sem="acq_rel") == SPLIT_K - 1:
            total = tl.zeros_like(acc)
            for split in range(SPLIT_K):  # ".cg": read from L2, where the other SMs' stores are
                total += tl.load(block_partials + split * M * N, mask=tile, other=0, cache_modifier=".cg")
            tl.store(tickets_ptr + pid_n, 0)  # back to zero for the next launch
            _store_output(total, out_ptr, bias_ptr, x_scale, w_scale_ptr, rows, cols, M, N, HAS_BIAS, INT8)


# One set of arrival tickets per weight, zero between launches (the last program resets its block's). A
# weight's GEMVs are ordered on one stream, so no two running kernels share a set; different weights may run
# at once (SGLang runs DeltaNet's in_proj_ba and the shared expert on a second stream).
_tickets: dict[tuple[torch.device, int, int], torch.Tensor] = {}


def _weight_tickets(weight: torch.Tensor) -> torch.Tensor:
    n = weight.shape[0]
    key = (weight.device, weight.data_ptr(), n)
    if key not in _tickets:
        blocks = triton.cdiv(n, min(block_n for block_n, _ in TILES))
        _tickets[key] = torch.zeros(blocks, dtype=torch.int32, device=weight.device)
    return _tickets[key]


def _launch(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, out_dtype: torch.dtype,
            w_scale: torch.Tensor | None, x_scale: torch.Tensor | None, config: triton.Config | None) -> torch.Tensor:  # fmt: skip
    """The kernel on `x`: BF16/FP16 with no `w_scale`; INT8 with one, `x` already quantized where `x_scale` is
    given and BF16 rows for the kernel to quantize where not."""
    n, k = weight.shape
    if not supports(weight):
        raise ValueError(f"gemv takes an [N, K] row-major bf16/fp16/int8 weight with K % {K_MULTIPLE} == 0, got "
                         f"{weight.dtype} {tuple(weight.shape)} strides {weight.stride()}")  # fmt: skip
    int8, quantize_x = w_scale is not None, w_scale is not None and x_scale is None
    if quantize_x and x.dtype != torch.bfloat16:
        raise ValueError(f"int8_gemv quantizes bfloat16 x itself, got {x.dtype} x")
    if not quantize_x and x.dtype != weight.dtype:
        raise ValueError(f"gemv multiplies x and weight of one dtype, got {x.dtype} and {weight.dtype}")
    rows = x.reshape(-1, k)
    m = rows.shape[0]
    if not 1 <= m <= MAX_M or rows.stride(1) != 1:
        raise ValueError(f"gemv takes 1 to {MAX_M} rows with unit stride along K, got {m} rows of stride {rows.stride(1)}")
    out = torch.empty(m, n, dtype=out_dtype, device=x.device)
    kernel = _gemv_kernel if config is None else _gemv_kernel.fn
    meta = {} if config is None else config.all_kwargs()
    candidates = [config] if config is not None else _candidates(_gemv_kernel.configs, n, k, weight.device)
    splits = max(candidate.kwargs["SPLIT_K"] for candidate in candidates)
    partials = tickets = None
    if splits > 1:
        partials = torch.empty(splits, m, n, dtype=torch.int32 if int8 else torch.float32, device=x.device)
        tickets = _weight_tickets(weight)

    def grid(meta: dict) -> tuple[int, int]:
        return triton.cdiv(n, meta["BLOCK_N"]), meta["SPLIT_K"]

    kernel[grid](rows, weight, out, bias, x_scale, w_scale, partials, tickets, m, n, k, rows.stride(0),
                 triton.next_power_of_2(m), HAS_BIAS=bias is not None, INT8=int8, QUANTIZE_X=quantize_x,
                 BLOCK_M=BLOCK_M, **meta)  # fmt: skip
    return out.view(*x.shape[:-1], n)


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
         config: triton.Config | None = None) -> torch.Tensor:  # fmt: skip
    """``F.linear(x, weight, bias)`` for x ``[..., K]`` of 1 to MAX_M rows and weight ``[N, K]`` of x's dtype.

    `config` (one of CONFIGS) runs that config instead of the tuned one: Triton's interpreter cannot time
    configs, and a benchmark may want one.
    """
    return _launch(x, weight, bias, x.dtype, None, None, config)


def int8_scaled_gemv(x_q: torch.Tensor, x_scale: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                     out_dtype: torch.dtype, bias: torch.Tensor | None = None, *,
                     config: triton.Config | None = None) -> torch.Tensor:  # fmt: skip
    """sgl_kernel's ``int8_scaled_mm(x_q, weight.t(), x_scale, weight_scale, out_dtype, bias)`` for 1 to MAX_M
    rows: x_q int8 ``[..., K]`` with float32 ``x_scale`` (one per row), weight int8 ``[N, K]`` row-major with
    float32 ``weight_scale`` (one per output channel), bias of ``out_dtype``. float32 ``out_dtype`` returns
    the scaled accumulator unrounded (int8_scaled_mm itself gives bfloat16/float16 only)."""
    return _launch(x_q, weight, bias, out_dtype, weight_scale.reshape(-1), x_scale.reshape(-1), config)


def int8_gemv(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, out_dtype: torch.dtype,
              bias: torch.Tensor | None = None, *, config: triton.Config | None = None) -> torch.Tensor:  # fmt: skip
    """``int8_scaled_mm(*per_token_quant_int8(x), weight.t(), weight_scale, out_dtype, bias)``, SGLang's W8A8
    INT8 linear, in one launch for x BF16 ``[..., K]`` of 1 to MAX_M rows: the same int8 rows and scales, so
    the same output as :func:`int8_scaled_gemv` after ``per_token_quant_int8``."""
    return _launch(x, weight, bias, out_dtype, weight_scale.reshape(-1), None, config)

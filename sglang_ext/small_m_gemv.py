"""Decode's dense linears through sglang_ext's small-M GEMV, opt-in with ``SGLANG_EXT_SMALL_M_GEMV=1``.

SGLang 0.5.17 runs a linear of a few tokens through cuBLAS (``F.linear``), or sgl_kernel's ``int8_scaled_mm``
for W8A8 INT8, at about half the copy bandwidth (docs/performance.md). With the variable set, :func:`install`
(called by ``sglang_ext.models`` in every server process) sends, on CUDA sm90 and for 1 to ``MAX_M`` BF16
tokens, to :mod:`sglang_ext.kernels.gemv` the weight shapes and token counts at which ``eval.perf.bench_gemv``
measured it faster on this GPU model (:mod:`sglang_ext.kernels.gemv_wins`; on a model it does not list, none,
with a warning), or with ``SGLANG_EXT_SMALL_M_GEMV=all`` every one (to try it where nothing was measured):

* ``UnquantizedLinearMethod.apply``: every BF16 Linear (attention and DeltaNet projections, router, unfused
  shared expert, and whatever a quantized checkpoint keeps in BF16; not the shared expert's gate, a plain
  ``torch.nn.Linear`` on CUDA: ``SGLANG_EXT_FUSED_SHARED_GATE`` covers it when the expert is fused);
* ``LogitsProcessor._compute_lm_head``'s plain matmul: the BF16 lm_head;
* ``QuarkW8A8Int8.apply_weights``: this repository's Quark INT8 linears, both steps in one launch
  (:func:`~sglang_ext.kernels.gemv.int8_gemv` quantizes the rows as ``per_token_quant_int8`` does) where that
  was measured faster than SGLang's two (``int8+quant``), else SGLang's ``per_token_quant_int8`` and the GEMV
  for ``int8_scaled_mm`` where that was (``int8``).

Everything else keeps SGLang's path: more tokens, other GPUs and dtypes, and code torch.compile traces
(piecewise CUDA graphs), which the autotuned launch would not survive.

Under CUDA-graph capture the kernel allocates only from the caching allocator (its output and split-K
partials; the capture's pool) and never waits on the GPU. It does when it autotunes, on the first call of
each (N, K, M bucket); SGLang makes that call before capturing, since it runs every batch size twice eagerly
first (``FullCudaGraphBackend.capture_one``).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable

import torch
from sglang.kernels.ops.quantization.int8_kernel import per_token_quant_int8
from sglang.srt.layers.logits_processor import LogitsProcessor
from sglang.srt.layers.quantization.unquant import UnquantizedEmbeddingMethod, UnquantizedLinearMethod

from sglang_ext.kernels import gemv as kernels
from sglang_ext.kernels import gemv_wins
from sglang_ext.kernels.gemv import gemv, int8_gemv, int8_scaled_gemv
from sglang_ext.quantization.quark.w8a8_int8 import QuarkW8A8Int8

ENV = "SGLANG_EXT_SMALL_M_GEMV"
MEASURED, EVERY_POINT = "1", "all"  # its values: where bench_gemv measured a win; wherever the kernel takes it
ROUTED = "routes_small_m_gemv"  # marks an installed wrapper, so install() is idempotent
logger = logging.getLogger(__name__)
_every_point = False  # install() sets it from the variable


def mode() -> str | None:
    """MEASURED, EVERY_POINT, or None (off: unset, 0, or a value it does not know, which is logged)."""
    value = os.environ.get(ENV, "0")
    if value in (MEASURED, EVERY_POINT):
        return value
    if value != "0":
        logger.warning("%s=%s: expected %s (where measured faster) or %s (by token count alone); off", ENV, value,
                       MEASURED, EVERY_POINT)  # fmt: skip
    return None


def enabled() -> bool:
    return mode() is not None


@functools.cache
def _on_sm90(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device) == (9, 0)


@functools.cache
def _measured_wins(device: torch.device) -> frozenset[gemv_wins.Point] | None:
    return gemv_wins.load(torch.cuda.get_device_name(device))


@functools.cache
def _unmeasured(device: torch.device) -> None:
    logger.warning("%s=%s on %s, a GPU model %s does not list: SGLang's path everywhere; measure it with `python -m "
                   "eval.perf.bench_gemv --wins`, or route by token count alone with %s=%s", ENV, MEASURED,
                   torch.cuda.get_device_name(device), gemv_wins.WINS_FILE.name, ENV, EVERY_POINT)  # fmt: skip


def routes(x: torch.Tensor, weight: torch.Tensor, quantizing: bool = False) -> bool:
    """Whether the GEMV computes ``x @ weight^T``: 1 to MAX_M BF16 rows on CUDA sm90, a weight the kernel
    takes (BF16 or INT8), no torch.compile tracing, and a point (dtype, N, K, M) where the benchmark measured
    it faster than SGLang's path on this GPU model (with EVERY_POINT: any point); `quantizing`: the INT8 GEMV
    that quantizes x itself, against SGLang's quantization and int8_scaled_mm."""
    k = x.shape[-1]
    m = x.numel() // k
    if not (
        x.dtype == torch.bfloat16
        and weight.dtype in (torch.bfloat16, torch.int8)
        and 1 <= m <= kernels.MAX_M
        and x.stride(-1) == 1
        and weight.shape[-1] == k
        and kernels.supports(weight)
        and not torch.compiler.is_compiling()
        and _on_sm90(x.device)
    ):
        return False
    if _every_point:
        return True
    wins = _measured_wins(x.device)
    if wins is None:
        _unmeasured(x.device)
        return False
    dtype = ("int8+quant" if quantizing else "int8") if weight.dtype == torch.int8 else "bf16"
    return (dtype, weight.shape[0], k, m) in wins


def _route_unquantized(stock: Callable) -> Callable:
    def apply(self, layer: torch.nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        if routes(x, layer.weight):
            return gemv(x, layer.weight, bias)
        return stock(self, layer, x, bias)

    return apply


def _route_lm_head(stock: Callable) -> Callable:
    def compute_lm_head(self, hidden_states: torch.Tensor, lm_head: torch.nn.Module,
                        embedding_bias: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        # SGLang's plain-matmul branch: an unquantized head, not LoRA-wrapped, without float32 or RL on-policy
        # logits; like that branch, it adds no embedding bias.
        plain = (
            type(getattr(lm_head, "quant_method", None)) is UnquantizedEmbeddingMethod
            and not hasattr(lm_head, "set_lora")
            and not self.use_fp32_lm_head
            and self.rl_on_policy_target is None
        )
        if plain and routes(hidden_states, lm_head.weight):
            return gemv(hidden_states, lm_head.weight)
        return stock(self, hidden_states, lm_head, embedding_bias)

    return compute_lm_head


def _route_quark_int8(stock: Callable) -> Callable:
    def apply_weights(self, layer: torch.nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        # On the int8_scaled_mm path the weight is held as its [K, N] column-major view; .t() is the
        # checkpoint's [N, K] rows again, without a copy.
        if not self.use_kernel:
            return stock(self, layer, x, bias)
        weight = layer.weight.t()
        if routes(x, weight, quantizing=True):
            return int8_gemv(x, weight, layer.weight_scale, x.dtype, bias)
        if routes(x, weight):
            x_q, x_scale = per_token_quant_int8(x.contiguous())
            return int8_scaled_gemv(x_q, x_scale, weight, layer.weight_scale, x.dtype, bias)
        return stock(self, layer, x, bias)

    return apply_weights


ROUTES = (
    (UnquantizedLinearMethod, "apply", _route_unquantized),
    (LogitsProcessor, "_compute_lm_head", _route_lm_head),
    (QuarkW8A8Int8, "apply_weights", _route_quark_int8),
)


def install() -> bool:
    """Route the methods of ROUTES through the GEMV where :func:`routes` says so, if SGLANG_EXT_SMALL_M_GEMV is
    1 or all; returns whether it is on."""
    global _every_point
    if (how := mode()) is None:
        return False
    _every_point = how == EVERY_POINT
    for owner, name, route in ROUTES:
        stock = getattr(owner, name)
        if not getattr(stock, ROUTED, False):
            routed = functools.wraps(stock)(route(stock))
            setattr(routed, ROUTED, True)
            setattr(owner, name, routed)
    where = "at every weight shape" if _every_point else f"where {gemv_wins.WINS_FILE.name} lists a win for the GPU"
    logger.info("%s=%s: linears of 1 to %d BF16 tokens on sm90 run sglang_ext's GEMV %s", ENV, how, kernels.MAX_M, where)
    return True

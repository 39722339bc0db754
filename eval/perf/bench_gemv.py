"""sglang_ext's small-M GEMV against what SGLang 0.5.17 runs for the same linear, at the real layer shapes.

    python -m eval.perf.bench_gemv [--shapes qwen3.5-35b-a3b,qwen3.5-397b-a17b-tp4] [--m 1,2,4,8] [--out DIR]

For every distinct weight shape (N, K) of a model shape's dense linears as SGLang serves them (the attention,
DeltaNet, router, shared-expert and lm_head Linears of `sglang_ext.fixtures`' real shapes, q/k/v and the
other pairs fused as SGLang loads them), at each M:

* BF16: `sglang_ext.kernels.gemv.gemv` against `F.linear` (cuBLAS), what UnquantizedLinearMethod runs on Hopper;
* INT8 W8A8, for the linears the INT8 card quantizes, two ways: "int8", `int8_scaled_gemv` against sgl_kernel's
  `int8_scaled_mm`, both on the same per-token quantized activations; "int8+quant", SGLang's whole INT8 linear
  (`per_token_quant_int8` then `int8_scaled_mm`) against `int8_gemv`, which quantizes the BF16 rows itself.

Each op is timed as decode runs it, in CUDA-graph replays, cycling through copies of the weight that together
exceed four times the L2 cache, so that no call finds its weight there; at most 256 copies, so the smallest
weights (in_proj_ba, the shared-expert gate: under 1 MB) stay in L2 and their rows measure latency rather than
bandwidth. The GEMV's autotuning runs before capture. A row reports µs per call, the weight bytes per
second, their share of the HBM copy bandwidth measured here (`bench_decode.hbm_bandwidth_gbs`), and the
baseline's time over the GEMV's.
A second table adds the linears up per decode step of the full model (each weight shape times the number of
its linears), for a BF16 checkpoint and an INT8 one, with the shared expert unfused (fused, its two linears
run inside the MoE kernel instead). Prints both and writes bench_gemv.json; each row also goes to rows.jsonl
as it is measured, so a run cut short keeps what it measured.

`--wins [FILE]` records, for this GPU model, the points (dtype, N, K, M) where the GEMV was faster by at
least `gemv_wins.MARGIN` in sglang_ext/kernels/gemv_wins.json (or FILE, e.g. a copy under $OUT on the GPU
host): with SGLANG_EXT_SMALL_M_GEMV=1 that GPU then routes only those to the GEMV.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from eval.perf import byte_bound
from eval.perf.bench_decode import hbm_bandwidth_gbs
from sglang_ext.fixtures.model_config import SHAPES, model_config
from sglang_ext.fixtures.tensors import checkpoint_specs
from sglang_ext.formats.encoders import encoder
from sglang_ext.kernels import gemv_wins
from sglang_ext.kernels.gemv import MAX_M, gemv, int8_gemv, int8_scaled_gemv

REAL_SHAPES = ("qwen3.5-35b-a3b", "qwen3.5-397b-a17b-tp4")
# SGLang loads these checkpoint Linears into one module each (Qwen3_5MoeForConditionalGeneration's
# stacked_params_mapping), whose weight stacks their rows.
FUSED_INTO = {"q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj", "in_proj_qkv": "in_proj_qkvz",
              "in_proj_z": "in_proj_qkvz", "in_proj_b": "in_proj_ba", "in_proj_a": "in_proj_ba",
              "gate_proj": "gate_up_proj", "up_proj": "gate_up_proj"}  # fmt: skip
LAYER = re.compile(r"^model\.language_model\.layers\.\d+\.")
MAX_COPIES = 256


@dataclass(frozen=True)
class DenseLinear:
    """One weight shape of the dense linears a decode step runs."""

    n: int
    k: int
    modules: tuple[str, ...]  # within a layer ("linear_attn.in_proj_qkvz"), or "lm_head"
    per_step: int  # how many linears of this shape one decode step of the full model runs
    int8: bool  # the INT8 card (quark-w8a8-int8) quantizes them


def dense_linears(shape: str) -> list[DenseLinear]:
    """The decoder's and lm_head's Linears of `shape` at full depth, fused as SGLang serves them, by weight shape
    (routed experts, stored 3-D, are the MoE kernel's; MTP and ViT do not run in a decode step)."""
    quantized = encoder("quark-w8a8-int8").quantized
    served: dict[str, list] = {}  # served module -> [rows, K, int8]
    for spec in checkpoint_specs(model_config(shape)):
        if not spec.linear or not (LAYER.match(spec.module) or spec.module == "lm_head"):
            continue
        parent, _, leaf = spec.module.rpartition(".")
        rows, k = spec.shape
        entry = served.setdefault(f"{parent}.{FUSED_INTO.get(leaf, leaf)}" if parent else leaf, [0, k, False])
        entry[0] += rows
        entry[2] = bool(quantized.match(spec.module))
    groups: dict[tuple[int, int, bool], list[str]] = {}
    for name, (n, k, int8) in served.items():
        groups.setdefault((n, k, int8), []).append(LAYER.sub("", name))
    return [DenseLinear(n, k, tuple(sorted(set(names))), len(names), int8) for (n, k, int8), names in sorted(groups.items())]


@dataclass
class Row:
    shape: str
    modules: str
    n: int
    k: int
    dtype: str  # a gemv_wins.DTYPES entry: "bf16", "int8", or "int8+quant" (its activation quantization in the timings)
    m: int
    per_step: int
    baseline_us: float
    gemv_us: float
    speedup: float  # baseline time / GEMV time
    gemv_gbs: float
    gemv_of_copy: float
    baseline_of_copy: float


@dataclass
class StepTotal:
    shape: str
    checkpoint: str  # "bf16" or "int8"
    m: int
    baseline_ms: float
    gemv_ms: float
    speedup: float


def graph_us(op: Callable[[int], object], copies: int) -> float:
    """µs per call of op(i), i over range(copies), replayed as a CUDA graph."""
    import triton.testing

    return triton.testing.do_bench_cudagraph(lambda: [op(i) for i in range(copies)], rep=100) * 1e3 / copies


def copies_for(nbytes: int) -> int:
    l2 = torch.cuda.get_device_properties(torch.cuda.current_device()).L2_cache_size
    return max(1, min(MAX_COPIES, math.ceil(4 * l2 / nbytes)))


def bench_bf16(n: int, k: int, m: int) -> tuple[float, float, int]:
    """(F.linear µs, GEMV µs, weight bytes) for x [m, k] @ W [n, k]^T in BF16."""
    weight = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * k**-0.5
    weights = [weight] + [weight.clone() for _ in range(copies_for(weight.nbytes) - 1)]
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    baseline = graph_us(lambda i: F.linear(x, weights[i]), len(weights))
    ours = graph_us(lambda i: gemv(x, weights[i]), len(weights))
    return baseline, ours, weight.nbytes


def bench_int8(n: int, k: int, m: int) -> dict[str, tuple[float, float, int]]:
    """SGLang's W8A8 INT8 linear against ours, two ways, with the weight and scale bytes: "int8" on the same
    quantized activations (int8_scaled_mm against int8_scaled_gemv), "int8+quant" from BF16 rows, each whole
    (per_token_quant_int8 then int8_scaled_mm, against int8_gemv quantizing in its one launch)."""
    from sgl_kernel import int8_scaled_mm
    from sglang.kernels.ops.quantization.int8_kernel import per_token_quant_int8

    weight = torch.randint(-127, 128, (n, k), device="cuda", dtype=torch.int8)
    weights = [weight] + [weight.clone() for _ in range(copies_for(weight.nbytes) - 1)]
    w_scale = torch.rand(n, 1, device="cuda") / 100
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    x_q, x_scale = per_token_quant_int8(x)
    nbytes = weight.nbytes + w_scale.nbytes

    def sglang(i: int, x_q: torch.Tensor, x_scale: torch.Tensor) -> torch.Tensor:
        # int8_scaled_mm reads the weight column-major [K, N], as SGLang's W8A8 layers hold it
        return int8_scaled_mm(x_q, weights[i].t(), x_scale, w_scale, torch.bfloat16)

    return {
        "int8": (graph_us(lambda i: sglang(i, x_q, x_scale), len(weights)),
                 graph_us(lambda i: int8_scaled_gemv(x_q, x_scale, weights[i], w_scale, torch.bfloat16), len(weights)),
                 nbytes),
        "int8+quant": (graph_us(lambda i: sglang(i, *per_token_quant_int8(x)), len(weights)),
                       graph_us(lambda i: int8_gemv(x, weights[i], w_scale, torch.bfloat16), len(weights)), nbytes),
    }  # fmt: skip


def measure(shape: str, ms: list[int], copy_gbs: float, int8: bool, record: Callable[[Row], None] = lambda row: None) -> list[Row]:
    """Every weight shape of `shape` at each M (`record` sees each row as soon as it is measured)."""
    rows = []
    linears = dense_linears(shape)
    by_shape: dict[tuple[int, int], list[DenseLinear]] = {}
    for linear in linears:
        by_shape.setdefault((linear.n, linear.k), []).append(linear)
    cases = [("bf16", group) for group in by_shape.values()]
    cases += [("int8", [linear]) for linear in linears if linear.int8 and int8]
    for kind, group in cases:
        n, k = group[0].n, group[0].k
        modules = ", ".join(name for linear in group for name in linear.modules)
        for m in ms:
            timed = bench_int8(n, k, m) if kind == "int8" else {"bf16": bench_bf16(n, k, m)}
            for dtype, (baseline, ours, nbytes) in timed.items():
                gbs = nbytes / ours / 1e3
                rows.append(Row(shape, modules, n, k, dtype, m, sum(linear.per_step for linear in group), baseline,
                                ours, baseline / ours, gbs, gbs / copy_gbs, nbytes / baseline / 1e3 / copy_gbs))  # fmt: skip
                record(rows[-1])
                print(f"{shape} {modules} [{n}, {k}] {dtype} M={m}: {baseline:.1f} -> {ours:.1f} µs", flush=True)
    return rows


def step_totals(shape: str, rows: list[Row]) -> list[StepTotal]:
    """Per M: every dense linear of one decode step, BF16 for a BF16 checkpoint, INT8 where the INT8 one
    quantizes it (each whole, its activation quantization included); only where every shape was measured."""
    linears = dense_linears(shape)
    at = {(r.n, r.k, r.dtype, r.m): r for r in rows if r.shape == shape}
    totals = []
    for checkpoint in ("bf16", "int8"):
        for m in sorted({r.m for r in rows if r.shape == shape}):
            picks = [(linear.per_step, at.get((linear.n, linear.k, "int8+quant" if checkpoint == "int8" and linear.int8 else "bf16", m)))
                     for linear in linears]  # fmt: skip
            if all(row for _, row in picks):
                baseline = sum(count * row.baseline_us for count, row in picks) / 1e3
                ours = sum(count * row.gemv_us for count, row in picks) / 1e3
                totals.append(StepTotal(shape, checkpoint, m, baseline, ours, baseline / ours))
    return totals


def print_tables(rows: list[Row], totals: list[StepTotal], copy_gbs: float, device: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"small-M GEMV vs SGLang's path, {device} (copy {copy_gbs:.0f} GB/s), CUDA-graph µs per call")
    for column in ("shape", "linear", "N", "K", "dtype", "M", "per step", "baseline µs", "GEMV µs", "× baseline",
                   "GEMV GB/s", "GEMV of copy", "baseline of copy"):  # fmt: skip
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(r.shape, r.modules, str(r.n), str(r.k), r.dtype, str(r.m), str(r.per_step), f"{r.baseline_us:.1f}",
                      f"{r.gemv_us:.1f}", f"{r.speedup:.2f}", f"{r.gemv_gbs:.0f}", f"{r.gemv_of_copy:.0%}",
                      f"{r.baseline_of_copy:.0%}")  # fmt: skip
    steps = Table(title="dense linears per decode step of the full model")
    for column in ("shape", "checkpoint", "M", "baseline ms", "GEMV ms", "× baseline"):
        steps.add_column(column, justify="right")
    for t in totals:
        steps.add_row(t.shape, t.checkpoint, str(t.m), f"{t.baseline_ms:.3f}", f"{t.gemv_ms:.3f}", f"{t.speedup:.2f}")
    console = Console(width=200)
    console.print(table)
    console.print(steps)


def token_counts(text: str) -> list[int]:
    values = byte_bound.positive_ints(text)
    if max(values) > MAX_M:
        raise argparse.ArgumentTypeError(f"expected token counts from 1 to {MAX_M}, e.g. 1,2,4,8; got {text!r}")
    return values


def model_shapes(text: str) -> list[str]:
    names = [name for name in text.split(",") if name]
    unknown = [name for name in names if name not in SHAPES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown shape in {text!r}; shapes: {', '.join(SHAPES)}")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.perf.bench_gemv", description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", type=model_shapes, default=list(REAL_SHAPES))
    parser.add_argument("--m", type=token_counts, default=[1, 2, 4, 8], help="tokens per call (default 1,2,4,8)")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "runs")) / "bench_gemv")
    parser.add_argument("--wins", type=Path, nargs="?", const=gemv_wins.WINS_FILE, metavar="FILE",
                        help="record where the GEMV won on this GPU (default sglang_ext/kernels/gemv_wins.json)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: eval.perf.bench_gemv needs a CUDA GPU: it times kernels on one, and this machine has none\n"
              "fix: run it on the GPU host (bash tests/gpu/run_on_device.sh --run 'python -m eval.perf.bench_gemv')",
              file=sys.stderr)  # fmt: skip
        return 1
    device = torch.cuda.get_device_name()
    major, minor = torch.cuda.get_device_capability()
    int8 = 80 <= 10 * major + minor <= 90  # sgl_kernel's int8_scaled_mm, the INT8 baseline, runs on sm80-sm90 only
    copy_gbs = hbm_bandwidth_gbs()
    print(f"{device}: HBM copy bandwidth {copy_gbs:.0f} GB/s" + ("" if int8 else "; no int8_scaled_mm here, BF16 only"))
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "rows.jsonl").open("w") as measured:
        def record(row: Row) -> None:
            measured.write(json.dumps(asdict(row)) + "\n")
            measured.flush()

        rows = [row for shape in args.shapes for row in measure(shape, args.m, copy_gbs, int8, record)]
    totals = [total for shape in args.shapes for total in step_totals(shape, rows)]
    report = {"device": device, "hbm_gbs": copy_gbs, "rows": [asdict(r) for r in rows], "per_step": [asdict(t) for t in totals]}
    (args.out / "bench_gemv.json").write_text(json.dumps(report, indent=2) + "\n")
    print_tables(rows, totals, copy_gbs, device)
    if args.wins:
        entry = gemv_wins.record(device, rows, f"python -m eval.perf.bench_gemv, {time.strftime('%Y-%m-%d')}, "
                                 f"shapes {','.join(args.shapes)}, M {','.join(map(str, args.m))}", args.wins)  # fmt: skip
        won = sum(len(ms) for dtype in gemv_wins.DTYPES for ms in entry[dtype].values())
        print(f"{args.wins}: {device} routes {won} of {len({(r.dtype, r.n, r.k, r.m) for r in rows})} measured points to the GEMV")
    return 0


if __name__ == "__main__":
    sys.exit(main())

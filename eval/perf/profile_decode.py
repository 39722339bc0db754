"""Where a decode step's GPU time goes, per checkpoint format at real Qwen3.5 shapes: SGLang's one-batch
benchmark under the torch profiler, its kernels summed by what they compute.

    python -m eval.perf.profile_decode [--shape qwen3.5-35b-a3b] [--layers 20] [--formats bf16,quark-w8a8-int8]
                                  [--fse on,off] [--batch-sizes 1,64] [--steps 5] [--set FORMAT:KEY=VALUE ...]
                                  [--out DIR]

The checkpoints, SGLang options and cases are eval.perf.bench_decode's (same --out reuses its checkpoints). For
each case and batch size it profiles `--steps` decode steps (CUDA graphs replayed as when serving) and
reads the trace. Per step: the kernels launched; the time the GPU was busy (the union of kernel intervals,
so work overlapped on two streams counts once); the step's span from its first kernel to its last; the
span of the kernels its CUDA-graph replay ran ("graph": the forward pass on the GPU, free of the host work
between steps); and the kernel time of each group (routed MoE, DeltaNet, attention, dense GEMMs, norms,
sampling, other) with the kernels that weigh most, by name and, in the JSON, by launch (name, grid,
stream), and the rate each group reached on the bytes it must read (`eval.perf.byte_bound`: the MoE its
experts, the GEMMs the other weights, DeltaNet its state, attention the KV; GB/s against the HBM copy
bandwidth). A step whose busy time is far below its span waits on
the host; one with many short kernels is bound by kernel count rather than by bytes. Graph time is the
steadiest number to compare cases by, since host work between replays varies with what else the host
runs. Prints a table with graph-time ratios (against BF16, FSE on/off) and writes profile_decode.json;
traces stay in OUT/traces/<shape>-<layers>L/, and a rerun retakes only those missing or taken with other
SGLang options or --steps.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import statistics
import sys
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from eval.perf import bench_decode, byte_bound
from sglang_ext.fixtures.model_config import model_config

# First match wins; names are lower-cased. The MoE group holds routing too (top-k, align, sum).
GROUPS: tuple[tuple[str, str], ...] = (
    ("moe", r"fused_moe|moe_|marlin|topk|count_and_sort|append_shared"),
    ("deltanet", r"gated_delta|recurrent|causal_conv1d|gdn|l2norm|chunk_|solve_tril|kkt"),
    ("attention", r"attention|attn|_fwd_kernel|flash|rotary|rope|kv_cache|set_kv"),
    ("norm", r"rmsnorm|layernorm|layer_norm|rms_norm|norm"),  # before gemm: "gemma_rmsnorm"
    ("gemm", r"gemm|gemv|cutlass|xmma|nvjet|cublas|int8_scaled_mm|matmul|splitk|sm90_"),
    ("sampling", r"softmax|argmax|sort|sampl|logit|multinomial|cumsum"),
)


def group_of(kernel: str) -> str:
    name = kernel.lower()
    return next((group for group, pattern in GROUPS if re.search(pattern, name)), "other")


@dataclass
class StepProfile:
    case: str
    fmt: str
    fse: bool | None
    batch: int
    steps: int
    kernels_per_step: float
    busy_us: float  # union of kernel intervals, per step
    span_us: float  # first kernel start to last kernel end, per step
    graph_us: float | None  # median span of the kernels one cudaGraphLaunch ran; None: no graph replayed
    groups_us: dict[str, float] = field(default_factory=dict)  # summed kernel time per step
    top_kernels: list[tuple[str, float]] = field(default_factory=list)  # (name, µs per step)
    # The heaviest launches told apart by grid and stream (a GEMV's grid names its weight's N and K split;
    # the stream, whether it overlapped another kernel): (name, grid, stream, launches and µs per step).
    top_launches: list[tuple[str, str, int, float, float]] = field(default_factory=list)
    # Bytes the group must read over its kernel time (GB/s): MoE the experts, gemm the other weights, deltanet
    # its state, attention the KV (`byte_bound.step_bytes`); the copy bandwidth is the ceiling.
    group_gbs: dict[str, float] = field(default_factory=dict)
    graph_vs_bf16: float | None = None  # BF16 (FSE on) graph time / this one's, same batch size
    graph_fse_vs_unfused: float | None = None  # FSE-on rows: the same format unfused / fused, graph time


def union_length(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def summarise_trace(path: Path, case: bench_decode.Case, batch: int, steps: int) -> StepProfile:
    """The decode steps of one torch-profiler chrome trace, per step."""
    with gzip.open(path, "rt") if path.suffix == ".gz" else path.open() as handle:
        events = json.load(handle)["traceEvents"]
    kernels = [e for e in events if e.get("cat") == "kernel" and "dur" in e]
    if not kernels:
        raise ValueError(f"{path}: no GPU kernel in the trace (was the GPU profiled?)")
    intervals = [(float(e["ts"]), float(e["ts"]) + float(e["dur"])) for e in kernels]
    by_group: dict[str, float] = defaultdict(float)
    by_name: dict[str, float] = defaultdict(float)
    by_launch: dict[tuple[str, str, int], list[float]] = defaultdict(lambda: [0.0, 0.0])
    for e in kernels:
        by_group[group_of(e["name"])] += float(e["dur"]) / steps
        by_name[e["name"]] += float(e["dur"]) / steps
        args = e.get("args", {})
        launch = by_launch[e["name"], "x".join(map(str, args.get("grid", ()))), int(args.get("stream", -1))]
        launch[0] += 1 / steps
        launch[1] += float(e["dur"]) / steps
    top = sorted(by_name.items(), key=lambda item: -item[1])[:8]
    launches = sorted(((*key, count, us) for key, (count, us) in by_launch.items()), key=lambda row: -row[4])[:24]
    span = max(stop for _, stop in intervals) - min(start for start, _ in intervals)
    return StepProfile(case.label, case.fmt, case.fse, batch, steps, len(kernels) / steps,
                       union_length(intervals) / steps, span / steps,
                       graph_replay_us(events, kernels), dict(sorted(by_group.items(), key=lambda item: -item[1])),
                       top, launches)  # fmt: skip


def graph_replay_us(events: list[dict], kernels: list[dict]) -> float | None:
    """Median over replays of the span of the kernels one cudaGraphLaunch ran (they carry its correlation id)."""
    launches = {e["args"]["correlation"] for e in events if e.get("name") == "cudaGraphLaunch" and "args" in e}
    replays: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for e in kernels:
        if (correlation := e.get("args", {}).get("correlation")) in launches:
            replays[correlation].append((float(e["ts"]), float(e["ts"]) + float(e["dur"])))
    if not replays:
        return None
    return statistics.median(max(b for _, b in ks) - min(a for a, _ in ks) for ks in replays.values())


def trace_file(traces: Path, case: bench_decode.Case, batch: int) -> Path:
    """Where one_batch writes the decode trace of `case` at `batch` (its own naming, in 256 / out 16)."""
    return traces / f"{case.slug}_batch{batch}_input256_output16_decode.trace.json.gz"


def profile_case(checkpoint: Path, options: bench_decode.FormatOptions, case: bench_decode.Case, batches: list[int],
                 steps: int, traces: Path, setup: dict) -> None:  # fmt: skip
    traces.mkdir(parents=True, exist_ok=True)
    extra = ["--output-len", "16", "--profile", "--profile-stage", "decode", "--profile-steps", str(steps),
             "--profile-prefix", case.slug]  # fmt: skip
    bench_decode.one_batch(checkpoint, options.server_cli, case, batches, extra, traces / f"{case.slug}.log",
                           env={**options.env, "SGLANG_TORCH_PROFILER_DIR": str(traces)})  # fmt: skip
    if missing := [b for b in batches if not trace_file(traces, case, b).exists()]:
        raise RuntimeError(f"one_batch wrote no decode trace for {case.label} at batch {missing} (see {traces})")
    setup_file(traces, case).write_text(json.dumps(setup) + "\n")


def setup_file(traces: Path, case: bench_decode.Case) -> Path:
    """What a case's traces were taken with (SGLang options, steps): traces taken otherwise are retaken."""
    return traces / f"{case.slug}.setup.json"


def traced(traces: Path, case: bench_decode.Case, batches: list[int], setup: dict) -> bool:
    done = setup_file(traces, case)
    return (done.exists() and json.loads(done.read_text()) == setup
            and all(trace_file(traces, case, b).exists() for b in batches))  # fmt: skip


# one_batch as profiled here: 256 prompt tokens, then 16 decoded.
PROFILE_CONTEXT = 256 + 16 // 2


def with_group_bandwidth(profiles: list[StepProfile], shape: str, layers: int,
                         options: dict[str, bench_decode.FormatOptions]) -> list[StepProfile]:  # fmt: skip
    """Fill each profile's `group_gbs` from the bytes its format's checkpoint layout gives each group, the
    DeltaNet state as the format's SGLang options keep it."""
    config = model_config(shape, layers, bench_decode.vocab_size(shape))
    formats = dict.fromkeys(p.fmt for p in profiles)
    served = {fmt: bench_decode.as_served(config, options[fmt].server_cli) for fmt in formats}
    entries = {fmt: byte_bound.planned_entries(fmt, config) for fmt in formats}
    for p in profiles:
        step = byte_bound.step_bytes(entries[p.fmt], served[p.fmt], p.batch, PROFILE_CONTEXT, fse=bool(p.fse))
        needed = {"moe": step.experts, "gemm": step.dense, "deltanet": step.deltanet_state, "attention": step.kv}
        p.group_gbs = {g: needed[g] / (p.groups_us[g] * 1e3) for g in needed if p.groups_us.get(g)}
    return profiles


def with_graph_ratios(profiles: list[StepProfile]) -> list[StepProfile]:
    by = {(p.fmt, p.fse, p.batch): p for p in profiles}
    for p in profiles:
        baseline = by.get((bench_decode.BASELINE.fmt, bench_decode.BASELINE.fse, p.batch))
        unfused = by.get((p.fmt, False, p.batch)) if p.fse else None
        p.graph_vs_bf16 = bench_decode.speedup(baseline, p, "graph_us")
        p.graph_fse_vs_unfused = bench_decode.speedup(unfused, p, "graph_us")
    return profiles


def print_table(profiles: list[StepProfile]) -> None:
    from rich.console import Console
    from rich.table import Table

    groups = [g for g, _ in GROUPS] + ["other"]
    table = Table(title="decode step on the GPU (µs per step; torch profiler over CUDA-graph replays)")
    for column in ("case", "batch", "kernels", "span", "busy", "graph", "graph × BF16", "graph FSE on/off", *groups,
                   "top kernel"):  # fmt: skip
        table.add_column(column, justify="right")
    for p in profiles:
        name, us = p.top_kernels[0]
        table.add_row(p.case, str(p.batch), f"{p.kernels_per_step:.0f}", f"{p.span_us:.0f}", f"{p.busy_us:.0f}",
                      f"{p.graph_us:.0f}" if p.graph_us else "", bench_decode.ratio(p.graph_vs_bf16),
                      bench_decode.ratio(p.graph_fse_vs_unfused),
                      *(f"{p.groups_us.get(g, 0.0):.0f}" for g in groups), f"{name[:40]} {us:.0f}")  # fmt: skip
    console = Console(width=200)
    console.print(table)
    rates = Table(title="bytes each group must read over its kernel time (GB/s; the HBM copy bandwidth is the ceiling)")
    measured = ["moe", "gemm", "deltanet", "attention"]
    for column in ("case", "batch", *measured):
        rates.add_column(column, justify="right")
    for p in profiles:
        rates.add_row(p.case, str(p.batch), *(f"{p.group_gbs[g]:.0f}" if g in p.group_gbs else "" for g in measured))
    console.print(rates)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.perf.profile_decode", description=__doc__.split("\n\n")[0])
    bench_decode.add_checkpoint_arguments(parser, formats="bf16,quark-w8a8-int8")
    parser.add_argument("--fse", default="on,off", help="on, off or on,off, for the formats that can fuse it")
    parser.add_argument("--batch-sizes", type=byte_bound.positive_ints, default=[1, 64])
    parser.add_argument("--steps", type=int, default=5, help="decode steps profiled per batch size")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "runs")) / "bench_decode")
    args = parser.parse_args()
    fse = {"on": True, "off": False}
    if bad := [f for f in args.fse.split(",") if f not in fse]:
        parser.error(f"--fse {bad[0]}: expected on, off or on,off")
    wanted = {fse[f] for f in args.fse.split(",")}
    formats, batches = args.formats.split(","), args.batch_sizes
    options = bench_decode.format_options(parser, args)

    todo = [c for c in bench_decode.cases(formats, False) if c.fse is None or c.fse in wanted]
    args.out.mkdir(parents=True, exist_ok=True)
    traces = args.out / "traces" / f"{args.shape}-{args.layers}L"
    setup = {fmt: {**o.setup(), "steps": args.steps} for fmt, o in options.items()}
    pending, unmeasured = bench_decode.measurable([c for c in todo if not traced(traces, c, batches, setup[c.fmt])])

    def measure(case: bench_decode.Case, checkpoint: Path) -> None:
        profile_case(checkpoint, options[case.fmt], case, batches, args.steps, traces, setup[case.fmt])

    failures = {**unmeasured, **bench_decode.run_cases(args.out, args.shape, args.layers, pending, measure)}
    profiles = []
    for case in (c for c in todo if c.label not in failures):
        try:
            profiles += [summarise_trace(trace_file(traces, case, b), case, b, args.steps) for b in batches]
        except ValueError as error:  # a trace without GPU kernels
            failures[case.label] = str(error)
            print(f"{case.label}: FAILED\n{error}", flush=True)
    profiles = with_graph_ratios(with_group_bandwidth(profiles, args.shape, args.layers, options))
    report = {"shape": args.shape, "layers": args.layers, "profiles": [asdict(p) for p in profiles], "failures": failures}
    (args.out / "profile_decode.json").write_text(json.dumps(report, indent=2) + "\n")
    if profiles:
        print_table(profiles)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

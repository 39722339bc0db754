"""Serving throughput over a concurrency sweep with SGLang's own benchmark, bench_serving (`python -m
sglang.benchmark.serving`; 0.5.17 keeps `sglang.bench_serving` only as a deprecated alias), for the two
shapes of card 003, optionally against a baseline recipe's server measured in the same run.

Each (shape, concurrency) point runs bench_serving once per server, quantized then baseline, so slow drift
of the machine touches both alike. bench_serving appends one JSON record per run to --output-file; we read
request_throughput and output_throughput (output tokens/s) from it.

bench_serving waits up to 6 hours for a request (a constant in 0.5.17, no option), so each run gets a
deadline (--timeout): a point that does not finish, fails, or completes fewer requests than it sent ends
the sweep with what was measured so far written out and the point named, instead of a hung sweep.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import multiprocessing.context
import os
import re
import runpy
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from eval import server
from eval.results import console
from eval.server import Target
from launch.errors import LaunchError


def concurrency_list(text: str) -> list[int]:
    """argparse type of a sweep's concurrencies, "1,8,32"."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


@dataclass(frozen=True)
class Shape:
    name: str
    input_len: int
    output_len: int


# Card 003's shapes, the default. Every request has exactly these lengths (--random-range-ratio 1) and runs to
# its output length (bench_serving ignores EOS unless --disable-ignore-eos, which we never pass).
SHAPES = (Shape("in4000-out200", 4000, 200), Shape("in512-out128", 512, 128))
_SHAPE_NAME = re.compile(r"in(\d+)-out(\d+)")


def shape_list(text: str) -> tuple[Shape, ...]:
    """argparse type of prompt shapes, "in4000-out200,in128-out1024": input and output tokens per request."""
    shapes = []
    for name in (n.strip() for n in text.split(",") if n.strip()):
        match = _SHAPE_NAME.fullmatch(name)
        if not match or min(int(match[1]), int(match[2])) < 1:
            raise argparse.ArgumentTypeError(f"{name!r}: expected inN-outM with N, M ≥ 1, e.g. in128-out1024")
        shapes.append(Shape(name, int(match[1]), int(match[2])))
    if not shapes:
        raise argparse.ArgumentTypeError(f"expected prompt shapes such as in4000-out200,in512-out128; got {text!r}")
    return tuple(shapes)
PROMPTS_PER_CONCURRENCY = 3


@dataclass(frozen=True)
class Point:
    server: str  # "quantized" or "baseline"
    shape: str
    concurrency: int
    request_throughput: float  # requests/s
    output_throughput: float  # output tokens/s
    median_ttft_ms: float | None
    median_tpot_ms: float | None
    completed: int


@dataclass(frozen=True)
class Failure:
    server: str
    shape: str
    concurrency: int
    reason: str


# (command, seconds allowed) -> exit code; raises subprocess.TimeoutExpired past the deadline
Runner = Callable[[list[str], float], int]


def tokenizer_for(target: Target) -> str | None:
    """A local tokenizer for bench_serving; None lets bench_serving ask the server (/model_info)."""
    if target.recipe is None:
        return None
    model = target.recipe.recipe.model
    if model.fixture:
        from sglang_ext.fixtures import ensure_fixture

        return str(ensure_fixture(model.fixture))
    return model.path if model.path and Path(model.path).is_dir() else None


def bench_command(target: Target, shape: Shape, concurrency: int, output_file: Path, args: argparse.Namespace) -> list[str]:
    tokenizer = args.tokenizer or tokenizer_for(target)
    command = [
        sys.executable, "-m", "sglang.benchmark.serving",
        "--backend", args.backend,
        "--base-url", target.base_url,
        # bench_serving loads --model with AutoTokenizer only to warn about a missing chat template; given
        # the served name, that is a hub lookup which, on a host without network, retries for ~45 s per
        # run. A local tokenizer answers at once; requests still carry the served name.
        "--model", tokenizer or target.model,
        "--served-model-name", target.model,
        "--dataset-name", args.dataset,
        "--random-input-len", str(shape.input_len),
        "--random-output-len", str(shape.output_len),
        "--random-range-ratio", "1.0",
        "--num-prompts", str(PROMPTS_PER_CONCURRENCY * concurrency),
        "--max-concurrency", str(concurrency),
        "--request-rate", "inf",
        "--seed", str(args.seed),
        "--output-file", str(output_file),
    ]  # fmt: skip
    if tokenizer:
        command += ["--tokenizer", tokenizer]
    if args.dataset_path:
        command += ["--dataset-path", str(args.dataset_path)]
    # bench_serving warms up with the first prompt it then measures: unflushed, that request is a prefix-cache
    # hit and one TTFT of a concurrency-1 point times a dozen tokens of prefill (SGLang's own CI flushes too).
    return [*command, "--flush-cache"]


def read_point(path: Path, server_label: str, shape: str, concurrency: int) -> Point:
    """The last record bench_serving appended to its --output-file."""
    lines = path.read_text().splitlines() if path.exists() else []
    if not lines:
        raise LaunchError(f"bench_serving wrote no result to {path}", hint="its output above says why")
    record: dict[str, Any] = json.loads(lines[-1])
    return Point(
        server_label,
        shape,
        concurrency,
        record["request_throughput"],
        record["output_throughput"],
        record.get("median_ttft_ms"),
        record.get("median_tpot_ms"),
        record["completed"],
    )


def ratios(points: list[Point]) -> dict[tuple[str, int], dict[str, float]]:
    """quantized/baseline per (shape, concurrency), where both were measured."""
    by_key = {(p.server, p.shape, p.concurrency): p for p in points}
    out = {}
    for p in points:
        base = by_key.get(("baseline", p.shape, p.concurrency))
        if p.server == "quantized" and base:
            out[(p.shape, p.concurrency)] = {
                "request_throughput": p.request_throughput / base.request_throughput,
                "output_throughput": p.output_throughput / base.output_throughput,
            }
    return out


def shape_table(shape: str, points: list[Point], labels: dict[str, str]) -> Table:
    rows = [p for p in points if p.shape == shape]
    quotients = ratios(rows)
    table = Table(title=f"{shape}: throughput by concurrency", title_justify="left")
    table.add_column("concurrency", justify="right")
    for server_label in labels:
        table.add_column(f"{labels[server_label]} req/s", justify="right")
        table.add_column(f"{labels[server_label]} out tok/s", justify="right")
    if quotients:
        table.add_column("ratio req/s", justify="right")
        table.add_column("ratio out tok/s", justify="right")
    for c in sorted({p.concurrency for p in rows}):
        cells = [str(c)]
        for server_label in labels:
            p = next((p for p in rows if p.server == server_label and p.concurrency == c), None)
            cells += [f"{p.request_throughput:.2f}", f"{p.output_throughput:.1f}"] if p else ["-", "-"]
        if quotients:
            q = quotients.get((shape, c))
            cells += [f"{q['request_throughput']:.3f}", f"{q['output_throughput']:.3f}"] if q else ["-", "-"]
        table.add_row(*cells)
    return table


def plot(shape: str, points: list[Point], labels: dict[str, str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers
    import matplotlib.pyplot as plt

    fig, (ax_tok, ax_req) = plt.subplots(1, 2, figsize=(11, 4))
    for server_label, label in labels.items():
        rows = sorted((p for p in points if p.shape == shape and p.server == server_label), key=lambda p: p.concurrency)
        concurrency = [p.concurrency for p in rows]
        ax_tok.plot(concurrency, [p.output_throughput for p in rows], marker="o", label=label)
        ax_req.plot(concurrency, [p.request_throughput for p in rows], marker="o", label=label)
    for ax, ylabel in ((ax_tok, "output tokens/s"), (ax_req, "requests/s")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(shape)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@functools.cache
def _fork_server(module: str) -> multiprocessing.context.BaseContext:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([module])
    return context


def _run_module(module: str, argv: list[str]) -> None:
    # The preloaded copy was there for its imports; run a fresh one as __main__, as `python -m` would.
    sys.modules.pop(module, None)
    sys.argv = [module, *argv]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


def run_module(command: list[str], timeout_s: float) -> int:
    """`python -m MODULE ARGS...` as a child of a fork server that imported MODULE once.

    bench_serving imports most of SGLang (about 30 s per process on the H100 host, more than a point of
    the tiny model takes); forked from a server that holds those imports, every point still runs in a
    process of its own, which the deadline can kill, and starts in about a second.
    """
    _python, _m, module, *argv = command
    for stream in (sys.stdout, sys.stderr):
        stream.flush()  # the child writes to the same descriptors; keep the order of lines
    process = _fork_server(module).Process(target=_run_module, args=(module, argv))
    process.start()
    process.join(timeout_s)
    if process.is_alive():
        process.kill()
        process.join()
        raise subprocess.TimeoutExpired(command, timeout_s)
    return process.exitcode


def measure(runner: Runner, command: list[str], output_file: Path, server_label: str, shape: Shape, concurrency: int,
            timeout_s: float) -> Point | Failure:
    """One bench_serving run; a Failure says why it yields no trustworthy point."""
    try:
        returncode = runner(command, timeout_s)
    except subprocess.TimeoutExpired:
        return Failure(server_label, shape.name, concurrency, f"did not finish within {timeout_s:g} s (--timeout); stopped")
    if returncode != 0:
        return Failure(server_label, shape.name, concurrency, f"bench_serving exited with code {returncode}")
    try:
        point = read_point(output_file, server_label, shape.name, concurrency)
    except LaunchError as error:
        return Failure(server_label, shape.name, concurrency, str(error))
    sent = PROMPTS_PER_CONCURRENCY * concurrency
    if point.completed != sent:
        return Failure(server_label, shape.name, concurrency, f"{point.completed} of {sent} requests completed")
    return point


def server_labels(targets: dict[str, Target]) -> dict[str, str]:
    """Recipe names, or URLs; the same recipe on two ports is told apart by its address."""
    names = {k: (t.recipe.name if t.recipe else t.base_url) for k, t in targets.items()}
    if len(set(names.values())) < len(names):
        names = {k: f"{name} @ {targets[k].base_url.split('://')[-1]}" for k, name in names.items()}
    return names


def main(args: argparse.Namespace, target: Target, runner: Runner = run_module) -> int:
    targets = {"quantized": target}
    if args.baseline_recipe or args.baseline_base_url:
        targets["baseline"] = server.resolve(args.baseline_recipe, args.baseline_base_url, args.baseline_model)
    labels = server_labels(targets)
    if len({t.base_url for t in targets.values()}) < len(targets):
        raise LaunchError("the baseline is the same server as the one measured", hint="start the baseline on another port (`--set port=30001`)")
    for t in targets.values():
        server.check(t)
    keys = {t.api_key for t in targets.values()} - {None}
    if len(keys) > 1:
        raise LaunchError("the two servers want different API keys; bench_serving sends one (OPENAI_API_KEY)",
                          hint="serve both with the same key")  # fmt: skip
    if keys:  # bench_serving's processes, forked from here, send it as a Bearer token
        os.environ["OPENAI_API_KEY"] = keys.pop()
    out_dir: Path = args.output
    points: list[Point] = []
    failure: Failure | None = None
    for shape, c, server_label in ((s, c, k) for s in args.shapes for c in args.concurrency for k in targets):
        (out_dir / shape.name).mkdir(parents=True, exist_ok=True)
        output_file = out_dir / shape.name / f"{server_label}-c{c}.jsonl"
        command = bench_command(targets[server_label], shape, c, output_file, args)
        console.print(f"[bold]{shape.name} c={c} {labels[server_label]}[/]: {' '.join(command)}")
        result = measure(runner, command, output_file, server_label, shape, c, args.timeout)
        if isinstance(result, Failure):
            failure = result
            break
        points.append(result)
    document = {
        "servers": {k: {"label": labels[k], "base_url": t.base_url, "model": t.model} for k, t in targets.items()},
        "shapes": [asdict(s) for s in args.shapes],
        "prompts_per_concurrency": PROMPTS_PER_CONCURRENCY,
        "points": [asdict(p) for p in points],
        "ratios": [{"shape": s, "concurrency": c, **r} for (s, c), r in ratios(points).items()],
        "failure": asdict(failure) if failure else None,
    }
    (out_dir / "speed.json").write_text(json.dumps(document, indent=2) + "\n")
    for shape in args.shapes:
        if any(p.shape == shape.name for p in points):
            console.print(shape_table(shape.name, points, labels))
            plot(shape.name, points, labels, out_dir / f"{shape.name}.png")
    console.print(f"results: {out_dir / 'speed.json'} and one PNG per measured shape in {out_dir}")
    if failure:
        raise LaunchError(
            f"{labels[failure.server]} at {failure.shape} c={failure.concurrency}: {failure.reason}; the sweep stopped there",
            hint=f"bench_serving's output above and the server log say why; the points before it are in {out_dir / 'speed.json'}",
        )
    return 0

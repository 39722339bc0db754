"""Every speed benchmark at real Qwen3.5 shapes, one after another, from one command: eval.perf.bench_decode,
eval.perf.profile_decode and eval.perf.bench_serving (eval.perf.tune_moe first with --tune).

    python -m eval.perf.bench_suite [--shape qwen3.5-35b-a3b] [--layers 20] [--formats bf16,...]
                               [--set FORMAT:KEY=VALUE ...] [--concurrency 1,8,32,64] [--tune] [--out DIR]

Each step is its own process, given these options and the same --out: the real-shaped checkpoints are
written once per format and step, and every step resumes what it saved, so rerunning the suite after a
crash or a time limit goes on where it stopped. A step that fails is reported and the next one runs. Prints
a table of the steps and writes bench_suite.json (command, exit code, seconds, result file per step); each
step's own table and JSON are in --out beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from eval.perf import bench_decode
from eval.speed import concurrency_list
from launch import server


@dataclass
class Step:
    name: str  # the eval.perf module
    command: list[str]
    result: str  # the JSON it writes
    exit_code: int | None = None
    seconds: float | None = None


def steps(args: argparse.Namespace) -> list[Step]:
    common = ["--shape", args.shape, "--layers", str(args.layers), "--formats", args.formats,
              *(f"--set={item}" for item in args.sets), "--out", str(args.out)]  # fmt: skip
    planned = [
        ("bench_decode", [*common, "--stock-moe-configs"], args.out / "bench_decode.json"),
        ("profile_decode", common, args.out / "profile_decode.json"),
        ("bench_serving", [*common, *(["--concurrency", ",".join(map(str, args.concurrency))] if args.concurrency else [])],
         args.out / "bench_serving.json"),
    ]
    if args.tune:
        tune_out = args.out / "tune_moe"
        planned.insert(0, ("tune_moe", ["--shape", args.shape, "--out", str(tune_out)], tune_out / "tune_moe.json"))
    return [Step(name, [sys.executable, "-m", f"eval.perf.{name}", *argv], str(result)) for name, argv, result in planned]


def run(step: Step) -> None:
    print(f"\n=== {step.name}: {' '.join(step.command[1:])}", flush=True)
    started = time.perf_counter()
    step.exit_code = subprocess.run(step.command, env={**os.environ, "PYTHONPATH": server.repo_python_path()}).returncode
    step.seconds = time.perf_counter() - started


def print_table(done: list[Step]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="eval.perf.bench_suite")
    for column in ("step", "exit", "minutes", "result"):
        table.add_column(column, justify="right")
    for step in done:
        result = step.result if Path(step.result).exists() else "none written"
        table.add_row(step.name, str(step.exit_code), f"{step.seconds / 60:.1f}", result)
    Console(width=150).print(table)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m eval.perf.bench_suite", description=__doc__.split("\n\n")[0])
    bench_decode.add_checkpoint_arguments(parser)
    parser.add_argument("--concurrency", type=concurrency_list, help="bench_serving's sweep, e.g. 1,8,32,64 (default: its own, 1..64)")
    parser.add_argument("--tune", action="store_true", help="run eval.perf.tune_moe first (about 10 min per config file)")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "runs")) / "bench_decode")
    return parser


def main() -> int:
    parser = build_parser()
    args = parser.parse_args()
    bench_decode.format_options(parser, args)  # a bad --set is a usage error now, not in every step
    args.out.mkdir(parents=True, exist_ok=True)
    done = []
    for step in steps(args):
        run(step)
        done.append(step)
        (args.out / "bench_suite.json").write_text(json.dumps({"steps": [asdict(s) for s in done]}, indent=2) + "\n")
    print_table(done)
    return 0 if all(step.exit_code == 0 for step in done) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Serving throughput of each checkpoint format at real Qwen3.5 shapes, as a ratio against BF16 measured
in the same run: one SGLang server per case, swept by `python -m eval speed` (SGLang's bench_serving).

    python -m eval.perf.bench_serving [--shape qwen3.5-35b-a3b] [--layers 20] [--formats bf16,...]
                                 [--concurrency 1,2,4,8,16,32,64] [--set FORMAT:KEY=VALUE ...] [--out DIR]

The cases, checkpoints and SGLang options are eval.perf.bench_decode's (same --out reuses its checkpoints):
each format's tiny recipe pointed at the real-shaped checkpoint, once per fused-shared-expert setting
where the format has both. BF16 with FSE on runs first; every other case's output tok/s is divided by
BF16's at the same prompt shape and concurrency, and so is its per-request decode speed (1 / median TPOT).
`--stock-sglang` adds the baseline users start from: BF16 served by SGLang alone (no sglang_ext: the
stock Qwen3.5 model, SGLang's MoE configs, no kernels of ours) with its recipe as shipped (no --set items),
and every row's "× stock" against it.
Servers run one at a time on the recipe's port and are stopped (process group and all) before the next
starts. Each case's sweep stays in OUT/serving/<case>/ (speed.json, bench_serving records, server log, the
SGLang options it ran with), and a rerun skips cases whose sweep completed with the options it would use.
Prints one table and writes bench_serving.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from eval.perf import bench_decode
from eval.speed import SHAPES, Shape, concurrency_list
from launch import server
from launch.errors import LaunchError
from launch.recipe import LoadedRecipe, load_recipe


@dataclass
class ServingRow:
    case: str
    fmt: str
    fse: bool | None
    shape: str
    concurrency: int
    request_throughput: float
    output_throughput: float
    median_ttft_ms: float | None
    median_tpot_ms: float | None
    # Speed-ups at the same prompt shape and concurrency, by output tok/s and by per-request decode speed
    # (1 / median TPOT: steadier than output tok/s over a point's few requests, which TTFT and queueing sway).
    vs_bf16: float | None = None
    tpot_vs_bf16: float | None = None
    fse_vs_unfused: float | None = None  # FSE-on rows: fused against the same format unfused
    tpot_fse_vs_unfused: float | None = None
    vs_stock: float | None = None  # against BF16 served by SGLang alone (--stock-sglang)
    tpot_vs_stock: float | None = None


def case_overrides(case: bench_decode.Case, checkpoint: Path, sets: list[str]) -> list[str]:
    """The format's tiny recipe, served from `checkpoint` with the whole GPU and `case`'s FSE setting."""
    fse = ["disable-shared-experts-fusion=true"] if case.fse is False else []
    # A served checkpoint is no generated one: the fixture keys a tiny recipe sets (tiny-int8 its MTP layout) go.
    generated = ["model.fixture=null", "model.fixture_mtp_experts=null"]
    return [f"model.path={checkpoint}", *generated, bench_decode.MEM_FRACTION, *fse, *sets]


def speed_command(base_url: str, model: str, checkpoint: Path, concurrency: list[int], out: Path,
                  shapes: tuple[Shape, ...] = SHAPES) -> list[str]:  # fmt: skip
    """`python -m eval speed` against one server: random token ids (no dataset download), the
    checkpoint's own tokenizer, `shapes` (default card 003's)."""
    return [sys.executable, "-m", "eval", "speed", "--base-url", base_url, "--model", model, "--tokenizer",
            str(checkpoint), "--dataset", "random-ids", "--concurrency", ",".join(map(str, concurrency)),
            "--shapes", ",".join(s.name for s in shapes), "--output", str(out)]  # fmt: skip


BENCH_SERVING = "sglang.benchmark.serving"
STOCK = bench_decode.Case("bf16", None, stock_sglang=True)  # SGLang 0.5.17 alone serving the BF16 checkpoint


def require_importable(parser: argparse.ArgumentParser, module: str = BENCH_SERVING) -> None:
    """Fail before any server starts when `python -m eval speed` could not run SGLang's bench_serving: on an
    offline GPU host its `datasets` import is the usual gap, and each case would otherwise start a server
    for nothing."""
    done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        parser.error(f"{module} does not import here ({reason}); pip install the missing package, or on a host "
                     "without a package index carry the wheels of eval/gpu-wheels.txt in .gpu/w1/ for "
                     "tests/gpu/run_on_device.sh to install")  # fmt: skip


def case_recipe(case: bench_decode.Case, checkpoint: Path, sets: list[str]) -> LoadedRecipe:
    return load_recipe(bench_decode.tiny_recipe(case.fmt), case_overrides(case, checkpoint, sets))


def sweep(case: bench_decode.Case, loaded: LoadedRecipe, checkpoint: Path, concurrency: list[int], out: Path,
          while_serving: Callable[[str], Any] | None = None, shapes: tuple[Shape, ...] = SHAPES) -> Any:  # fmt: skip
    """Start the case's server, run eval speed against it (out/speed.json) at `shapes`, then
    `while_serving(base_url)` if given (its result is returned), stop the server. `case` needs only a `fmt` and a
    `label`."""
    try:  # a server already on the port would answer the health check and be measured instead
        server.check_port_free(loaded.recipe.host, loaded.recipe.port)
    except LaunchError as error:
        raise LaunchError(error.args[0], hint=f"--set {case.fmt}:port={loaded.recipe.port + 1}, or stop it") from None
    stock = getattr(case, "stock_sglang", False)  # `case` may be another benchmark's (bench_spec's)
    plan = server.plan(loaded, str(checkpoint), out / "logs")
    if stock:
        plan = replace(plan, env={k: v for k, v in plan.env.items() if k != server.EXTENSION_VARIABLE})
    command = speed_command(plan.base_url, loaded.recipe.model.served_name, checkpoint, concurrency, out, shapes)
    with server.running(plan, timeout_s=1200):
        done = subprocess.run(command, env={**os.environ, "PYTHONPATH": server.repo_python_path()})
        extra = while_serving(plan.base_url) if while_serving and done.returncode == 0 else None
    if done.returncode != 0:
        raise RuntimeError(f"eval speed failed for {case.label} (exit {done.returncode}); see {out}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "server_args.json").write_text(json.dumps(loaded.server_cli) + "\n")
    (out / "env.json").write_text(json.dumps(served_env(loaded, stock)) + "\n")
    return extra


def served_env(loaded: LoadedRecipe, stock: bool = False) -> dict[str, str]:
    """The variables that make a server what it is: the recipe's env items, and sglang_ext's package unless
    SGLang serves alone (not PYTHONPATH: it names this host's checkout)."""
    return {**loaded.recipe.env, **({} if stock else {server.EXTENSION_VARIABLE: server.EXTENSION_PACKAGE})}


def completed(folder: Path, server_cli: list[str], env: dict[str, str] | None = None) -> bool:
    """A sweep in `folder` that finished, run with these SGLang options and, where `env` is given, these
    variables on top of the caller's (a recipe's env.VAR items, sglang_ext loaded or not)."""
    speed, options, variables = folder / "speed.json", folder / "server_args.json", folder / "env.json"
    return (speed.exists() and json.loads(speed.read_text()).get("failure") is None
            and options.exists() and json.loads(options.read_text()) == server_cli
            and (env is None or saved_env(variables) == env))  # fmt: skip


def saved_env(variables: Path) -> dict[str, str]:
    """What a sweep's env.json says it ran with; a sweep saved before env.json ran with sglang_ext alone."""
    return json.loads(variables.read_text()) if variables.exists() else {server.EXTENSION_VARIABLE: server.EXTENSION_PACKAGE}


def rows_of(case: bench_decode.Case, speed_json: Path) -> list[ServingRow]:
    points = json.loads(speed_json.read_text())["points"]
    return [ServingRow(case.label, case.fmt, case.fse, p["shape"], p["concurrency"], p["request_throughput"],
                       p["output_throughput"], p["median_ttft_ms"], p["median_tpot_ms"]) for p in points]  # fmt: skip


def speedups(row: ServingRow, reference: ServingRow | None) -> tuple[float | None, float | None]:
    """`row` against `reference`: output tok/s, and per-request decode speed (the inverse ratio of TPOT)."""
    if reference is None:
        return None, None
    return row.output_throughput / reference.output_throughput, bench_decode.speedup(reference, row, "median_tpot_ms")


def with_ratios(rows: list[ServingRow]) -> list[ServingRow]:
    """Speed-ups against BF16 (FSE on), for FSE-on rows against the same format unfused, and against BF16
    served by SGLang alone where that ran."""
    served = [r for r in rows if r.case != STOCK.label]
    by = {(r.fmt, r.fse, r.shape, r.concurrency): r for r in served}
    stock = {(r.shape, r.concurrency): r for r in rows if r.case == STOCK.label}
    for r in rows:
        base = by.get((bench_decode.BASELINE.fmt, bench_decode.BASELINE.fse, r.shape, r.concurrency))
        unfused = by.get((r.fmt, False, r.shape, r.concurrency)) if r.fse and r in served else None
        r.vs_bf16, r.tpot_vs_bf16 = speedups(r, base)
        r.fse_vs_unfused, r.tpot_fse_vs_unfused = speedups(r, unfused)
        r.vs_stock, r.tpot_vs_stock = speedups(r, stock.get((r.shape, r.concurrency)))
    return rows


def paired(by_tok_s: float | None, by_tpot: float | None) -> str:
    if by_tok_s and by_tpot:
        return f"{bench_decode.ratio(by_tok_s)} ({bench_decode.ratio(by_tpot)})"
    return bench_decode.ratio(by_tok_s)


def print_table(rows: list[ServingRow], shape: str, layers: int) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"serving, {shape} with {layers} layers (bench_serving, random ids; "
                        "ratios: output tok/s (1 / TPOT))")
    with_stock = any(r.case == STOCK.label for r in rows)
    columns = ("case", "prompt shape", "concurrency", "req/s", "output tok/s", "median TTFT ms", "median TPOT ms",
               "× BF16", "FSE on/off", *(("× stock",) if with_stock else ()))  # fmt: skip
    for column in columns:
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(r.case, r.shape, str(r.concurrency), f"{r.request_throughput:.2f}", f"{r.output_throughput:.0f}",
                      f"{r.median_ttft_ms:.0f}" if r.median_ttft_ms else "",
                      f"{r.median_tpot_ms:.2f}" if r.median_tpot_ms else "",
                      paired(r.vs_bf16, r.tpot_vs_bf16), paired(r.fse_vs_unfused, r.tpot_fse_vs_unfused),
                      *((paired(r.vs_stock, r.tpot_vs_stock),) if with_stock else ()))  # fmt: skip
    Console(width=170).print(table)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.perf.bench_serving", description=__doc__.split("\n\n")[0])
    bench_decode.add_checkpoint_arguments(parser)
    parser.add_argument("--concurrency", type=concurrency_list, default="1,2,4,8,16,32,64", help="e.g. 1,8,32,64")
    parser.add_argument("--stock-sglang", action="store_true",
                        help="also serve BF16 by SGLang alone (no sglang_ext), the baseline of the × stock column")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "runs")) / "bench_decode")
    args = parser.parse_args()
    options = bench_decode.format_options(parser, args)
    todo = bench_decode.cases(args.formats.split(","), False)
    todo = [bench_decode.BASELINE, *(c for c in todo if c != bench_decode.BASELINE)]  # every ratio needs it, first
    if args.stock_sglang:
        if os.environ.get(server.EXTENSION_VARIABLE):
            parser.error(f"--stock-sglang: ${server.EXTENSION_VARIABLE} is set here, so SGLang would load it anyway; "
                         f"unset {server.EXTENSION_VARIABLE} and run again")  # fmt: skip
        todo.insert(1, STOCK)  # beside BF16, on its checkpoint

    # SGLang alone runs BF16's recipe as it ships (at real shapes, with its Hopper recipe's MoE runner): the
    # --set items tune this repository's servers, whose speed it is the baseline of.
    stock_sets = list(bench_decode.real_shape_sets(STOCK.fmt)) if args.shape != "tiny" else []
    sets = {c: stock_sets if c.stock_sglang else options[c.fmt].sets for c in todo}
    # The checkpoint path is model.path, not an SGLang option: a placeholder gives the same options.
    recipes = {c: case_recipe(c, Path("checkpoint"), sets[c]) for c in todo}
    server_cli = {c: loaded.server_cli for c, loaded in recipes.items()}
    env = {c: served_env(loaded, c.stock_sglang) for c, loaded in recipes.items()}
    folder = {c: args.out / "serving" / f"{args.shape}-{args.layers}L" / c.slug for c in todo}
    pending, unmeasured = bench_decode.measurable([c for c in todo if not completed(folder[c], server_cli[c], env[c])])
    if pending:
        require_importable(parser)

    def measure(case: bench_decode.Case, checkpoint: Path) -> None:
        sweep(case, case_recipe(case, checkpoint, sets[case]), checkpoint, args.concurrency, folder[case])

    failures = {**unmeasured, **bench_decode.run_cases(args.out, args.shape, args.layers, pending, measure)}
    rows = [row for c in todo if completed(folder[c], server_cli[c], env[c]) for row in rows_of(c, folder[c] / "speed.json")]
    rows = with_ratios(rows)
    report = {"shape": args.shape, "layers": args.layers, "rows": [asdict(r) for r in rows], "failures": failures}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_serving.json").write_text(json.dumps(report, indent=2) + "\n")
    if rows:
        print_table(rows, args.shape, args.layers)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

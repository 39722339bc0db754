"""Decode speed of each checkpoint format at real Qwen3.5 shapes, through SGLang's one-batch benchmark.

    python -m eval.perf.bench_decode [--shape qwen3.5-35b-a3b] [--layers 20] [--formats bf16,quark-w8a8-int8,...]
                                [--batch-sizes 1,8,32,64,128] [--set FORMAT:KEY=VALUE ...] [--out DIR]
                                [--stock-moe-configs] [--variant NAME=FORMAT:KEY=VALUE ...]

SGLang's options for each format come from its tiny recipe (recipes/tiny-*.yaml, the recipe whose
model.fixture is that format), then at real shapes what the real recipe adds that the tiny model cannot
take (`real_shape_sets`: the MoE runner of the format's Hopper recipe, e.g. ct-mxfp4 on Marlin), then
`--set FORMAT:KEY=VALUE`. For each format it writes a real-shaped random checkpoint on the GPU
(`sglang_ext.fixtures`, valid scales: no Inf/NaN reaching the kernels), then runs
`python -m sglang.benchmark.one_batch` on it, once per fused-shared-expert setting where the format
allows both. It prints one table and writes bench_decode.json:
median decode step latency and tok/s per batch size, per-layer milliseconds, the ratio against BF16 at the
same batch size from this same run, and a roofline: the weight bytes one decode step must read (every
dense weight, plus the routed experts a batch of that size touches on average under uniform routing)
divided by the HBM bandwidth measured here, and the fraction of it achieved. "+cache × BF16" is the speed-up
bound with the cache every format reads alike added to both sides (`eval.perf.byte_bound`: the DeltaNet state,
gigabytes per step from batch 32 up, and the KV).

Each case's numbers are saved under OUT/cases/ as soon as it finishes, with the shape, layer count and
SGLang options it ran with, and a later run with the same --out skips the cases saved with the options it
would use (--rerun to measure again): a crash or a time limit loses one case at most, and a sweep can be
split across commands. The table and bench_decode.json cover every saved case of this run's options,
BF16 ratios included.

The Triton fused-MoE formats (BF16, INT8) run with the configs sglang_ext ships (`eval.perf.tune_moe`, picked
up through `sglang_ext.moe_configs`); `--stock-moe-configs` also runs each of them, FSE on, with SGLang's
own config folder, and the table gets the tuned/stock ratio.

`--variant NAME=FORMAT:KEY=VALUE` measures what an SGLang option buys: the format's served case (FSE on where
it fuses) again with the option on top, as case "FORMAT fse (NAME)", and the table gives its speed against
the format's own options from the same run ("× default"). Items with one NAME add up, and one NAME may
cover several formats, e.g. `--variant compile=bf16:enable-torch-compile=true
--variant compile=quark-w8a8-int8:enable-torch-compile=true --variant fi=bf16:attention-backend=flashinfer`.
An item may set a recipe's environment variable instead, e.g. `--variant gemv=bf16:env.SGLANG_EXT_SMALL_M_GEMV=1`
(sglang_ext's small-M GEMV against SGLang's path, in one run).
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from launch import server
from eval.perf import byte_bound
from launch.errors import LaunchError
from launch.recipe import load_recipe, recipe_paths
from sglang_ext import moe_configs
from sglang_ext.fixtures import STAMP_FILE, write_fixture
from sglang_ext.fixtures.model_config import SHAPES, padded_vocab_size
from sglang_ext.formats.safetensors_headers import read_checkpoint

FSE_FORMATS = ("bf16", "quark-w8a8-int8", "quark-mxfp4-fse")  # shared expert in the routed precision
TRITON_MOE_FORMATS = ("bf16", "quark-w8a8-int8")  # the formats whose MoE runs SGLang's Triton fused kernel
MEM_FRACTION = "mem-fraction-static=0.8"  # one benchmark process owns the GPU
HOPPER = "sm90"  # these benchmarks' target; the MoE runner at real shapes is its recipe's
ONE_BATCH_PROMPT_IDS = 10_000  # sglang.benchmark.one_batch draws its synthetic prompt ids from [0, 10000)
SSM_DTYPE = "--mamba-ssm-dtype"  # SGLang's dtype of the DeltaNet recurrent state (float32 unless set)


@functools.cache
def _tiny_recipes() -> dict[str, str]:
    return {load_recipe(name).recipe.model.fixture: name for name in recipe_paths() if name.startswith("tiny-")}


def tiny_recipe(fmt: str) -> str:
    """The tiny recipe whose model.fixture is `fmt`: the SGLang options this repository serves it with."""
    if fmt not in _tiny_recipes():
        formats = ", ".join(_tiny_recipes())
        raise LaunchError(f"no tiny recipe serves format {fmt!r}", hint=f"formats with a tiny recipe: {formats}")
    return _tiny_recipes()[fmt]


@functools.cache
def real_shape_sets(fmt: str) -> tuple[str, ...]:
    """The MoE runner this repository's Hopper recipe serves `fmt` with, which its tiny recipe may leave out
    because the tiny model cannot take it (recipes/qwen3.5-35b-mxfp4-h100.yaml: ct-mxfp4 on Marlin, whose
    MXFP4 MoE pads hidden to a multiple of 256; SGLang's default would upcast the experts to BF16)."""
    for name in recipe_paths():
        recipe = load_recipe(name).recipe
        if recipe.checkpoint_format == fmt and HOPPER in recipe.hardware.archs:
            runner = recipe.server_args.get("moe-runner-backend")
            return (f"moe-runner-backend={runner}",) if runner else ()
    return ()


def recipe_options(fmt: str, sets: list[str]) -> FormatOptions:
    """SGLang options and environment for `fmt`: its tiny recipe's, the GPU's memory, then `sets` (KEY=VALUE,
    env.VAR=VALUE among them)."""
    recipe = load_recipe(tiny_recipe(fmt), [MEM_FRACTION, *sets])
    return FormatOptions(list(sets), recipe.server_cli, dict(recipe.recipe.env))


@dataclass(frozen=True)
class FormatOptions:
    sets: list[str]  # the --set KEY=VALUE items for this format: overrides of its tiny recipe
    server_cli: list[str]  # what they make of the recipe's SGLang options
    env: dict[str, str]  # the recipe's environment variables (env.VAR=VALUE): one_batch runs with them

    def setup(self) -> dict[str, object]:
        """What a saved case must have run with to count for these options."""
        return {"server_args": self.server_cli, **({"env": self.env} if self.env else {})}


@dataclass(frozen=True)
class Case:
    fmt: str
    fse: bool | None  # None: the format keeps the shared expert out of the MoE
    stock_moe_configs: bool = False
    variant: str = ""  # a --variant's NAME: the format's options with that variant's on top
    stock_sglang: bool = False  # served by SGLang alone: no sglang_ext (its model overrides, MoE configs, kernels)

    @property
    def label(self) -> str:
        return (self.fmt + {True: " fse", False: " no-fse", None: ""}[self.fse] + (" stock-cfg" if self.stock_moe_configs else "")
                + (" stock-sglang" if self.stock_sglang else "") + (f" ({self.variant})" if self.variant else ""))  # fmt: skip

    @property
    def slug(self) -> str:
        return self.label.replace(" (", "-").rstrip(")").replace(" ", "-")

    @property
    def options_key(self) -> str:
        """The key of its SGLang options (`format_options`, `variant_options`) and of the setup it is saved with."""
        return f"{self.fmt}:{self.variant}" if self.variant else self.fmt


BASELINE = Case("bf16", True)  # every "× BF16" ratio is against it, measured in the same run


@dataclass
class Row:
    case: str
    fmt: str
    fse: bool | None
    stock_moe_configs: bool
    batch: int
    decode_ms: float
    tok_s: float
    ms_per_layer: float
    floor_ms: float
    bandwidth_fraction: float
    vs_bf16: float | None = None
    floor_vs_bf16: float | None = None  # the speed-up over BF16 the weight bytes allow
    bound_ms: float | None = None  # floor_ms plus the cache every format reads alike (DeltaNet state, KV)
    bound_vs_bf16: float | None = None  # the speed-up over BF16 those bytes allow
    fse_vs_unfused: float | None = None
    tuned_vs_stock: float | None = None
    variant: str = ""
    vs_default: float | None = None  # a variant's speed-up over its format's own options


def hbm_bandwidth_gbs() -> float:
    """Device-to-device copy of 4 GiB: bytes read + written per second (GB/s)."""
    import torch

    x = torch.empty(4 << 30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        y.copy_(x)
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / 10
    del x, y
    torch.cuda.empty_cache()  # the 8 GiB go back to the GPU before the measured servers start
    return 2 * (4 << 30) / seconds / 1e9


def cases(formats: list[str], stock_moe_configs: bool, variants: Iterable[tuple[str, str]] = ()) -> list[Case]:
    """Each format FSE on and off where it fuses, with SGLang's stock MoE configs where asked, and each
    (format, variant NAME) as the format is served (FSE on where it fuses)."""
    out = []
    for fmt in formats:
        out += [Case(fmt, fse) for fse in ((True, False) if fmt in FSE_FORMATS else (None,))]
        if stock_moe_configs and fmt in TRITON_MOE_FORMATS:
            out.append(Case(fmt, fmt in FSE_FORMATS, stock_moe_configs=True))
        out += [Case(fmt, True if fmt in FSE_FORMATS else None, variant=name) for f, name in variants if f == fmt]
    return out


def vocab_size(shape: str) -> int:
    """The shape's vocab, grown where it lacks rows for one_batch's prompt ids (the tiny shape's 3k tokens:
    the embedding gather would read out of bounds)."""
    return max(SHAPES[shape].vocab_size or 0, padded_vocab_size(at_least=ONE_BATCH_PROMPT_IDS))


def checkpoint_path(out: Path, shape: str, layers: int, fmt: str, mtp_acceptance: float = 0.0) -> Path:
    """Where the real-shaped checkpoint of `fmt` (with a predictable MTP head at `mtp_acceptance`) lives under OUT."""
    return out / "checkpoints" / f"{shape}-{layers}L-{fmt}{f'-mtp{mtp_acceptance:g}' if mtp_acceptance else ''}"


def ensure_checkpoint(out: Path, shape: str, layers: int, fmt: str, mtp_acceptance: float = 0.0, device: str = "cuda") -> Path:
    """The real-shaped random checkpoint of `fmt` at `checkpoint_path`, written on `device` unless a complete one
    is there."""
    checkpoint = checkpoint_path(out, shape, layers, fmt, mtp_acceptance)
    if not (checkpoint / STAMP_FILE).exists():  # written last: a run cut off mid-write starts over
        started = time.perf_counter()
        # In a process of its own: the tens of GB it drew on the GPU stay in the writer's CUDA cache until that
        # process ends, and the servers measured next would start without them.
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as writer:
            writer.submit(write_fixture, checkpoint, fmt, shape=shape, num_layers=layers, vocab_size=vocab_size(shape),
                          device=device, mtp_acceptance=mtp_acceptance).result()  # fmt: skip
        print(f"{fmt}: wrote {checkpoint.name} in {time.perf_counter() - started:.0f} s", flush=True)
    return checkpoint


def run_cases(out: Path, shape: str, layers: int, pending: list[Case], measure: Callable[[Case, Path], None]) -> dict[str, str]:
    """`measure(case, checkpoint)` for each pending case, one format's checkpoint at a time: real-shaped
    checkpoints are tens of GB, so disk holds BF16 (every run's baseline) and one other at most. A case that
    fails is reported and the others go on; returns the failures by case label."""
    failures = {}
    for fmt in dict.fromkeys(c.fmt for c in pending):
        checkpoint = ensure_checkpoint(out, shape, layers, fmt)
        for case in (c for c in pending if c.fmt == fmt):
            started = time.perf_counter()
            try:
                measure(case, checkpoint)
            except (RuntimeError, LaunchError, subprocess.TimeoutExpired) as error:
                failures[case.label] = str(error)
                print(f"{case.label}: FAILED\n{error}", flush=True)
                continue
            print(f"{case.label}: done in {time.perf_counter() - started:.0f} s", flush=True)
        if fmt != "bf16":
            shutil.rmtree(checkpoint)
    return failures


def one_batch(checkpoint: Path, args: list[str], case: Case, batches: list[int], extra: list[str], log: Path,
              env: dict[str, str] | None = None) -> None:  # fmt: skip
    """SGLang's one-batch benchmark on `checkpoint` for `case` (in 256 / out 32 unless `extra` says
    otherwise), its output in `log`; raises RuntimeError with the log's tail when it fails."""
    command = [sys.executable, "-m", "sglang.benchmark.one_batch", "--model-path", str(checkpoint),
               "--batch-size", *map(str, batches), "--input-len", "256", "--output-len", "32",
               "--cuda-graph-bs-decode", *map(str, batches),  # capture only the measured sizes
               *args, *extra]  # fmt: skip
    if case.fse is False:
        command.append("--disable-shared-experts-fusion")
    env = {**os.environ, **(env or {}), **server.sglang_env()}
    if case.stock_moe_configs:
        env[moe_configs.ENV] = str(moe_configs.stock_config_dir())  # sglang_ext.moe_configs leaves a set one alone
    with log.open("w") as handle:
        done = subprocess.run(command, env=env, stdout=handle, stderr=subprocess.STDOUT, timeout=900)
    if done.returncode != 0:
        tail = log.read_text().splitlines()[-15:]
        raise RuntimeError(f"sglang.benchmark.one_batch failed for {case.label} ({log}):\n" + "\n".join(tail))


def run_case(checkpoint: Path, options: FormatOptions, case: Case, batches: list[int], out: Path) -> dict[int, dict]:
    result_file = out / f"{case.slug}.jsonl"
    result_file.unlink(missing_ok=True)
    one_batch(checkpoint, options.server_cli, case, batches, ["--result-filename", str(result_file)], out / f"{case.slug}.log",
              options.env)  # fmt: skip
    rows = [json.loads(line) for line in result_file.read_text().splitlines() if line.strip()]
    measured = {row["batch_size"]: row for row in rows}
    if missing := sorted(set(batches) - set(measured)):  # one_batch skips sizes its KV pool cannot hold
        raise RuntimeError(f"one_batch measured no batch size {missing} for {case.label} (see {out / case.slug}.log)")
    return measured


def as_served(config: dict, server_cli: list[str]) -> dict:
    """`config` with the DeltaNet state's dtype as a server started with `server_cli` keeps it (a copy)."""
    config = json.loads(json.dumps(config))
    if SSM_DTYPE in server_cli:
        config["text_config"]["mamba_ssm_dtype"] = server_cli[server_cli.index(SSM_DTYPE) + 1]
    return config


def case_rows(case: Case, measured: dict[int, dict], checkpoint: Path, layers: int, bandwidth_gbs: float,
              server_cli: list[str]) -> list[Row]:  # fmt: skip
    config = as_served(json.loads((checkpoint / "config.json").read_text()), server_cli)
    entries = read_checkpoint(checkpoint)
    rows = []
    for batch, row in sorted(measured.items()):
        latency = row["median_decode_latency"]
        step = byte_bound.step_bytes(entries, config, batch, byte_bound.ONE_BATCH_CONTEXT, fse=bool(case.fse))
        floor, bound = step.weights / (bandwidth_gbs * 1e9), step.total / (bandwidth_gbs * 1e9)
        rows.append(Row(case.label, case.fmt, case.fse, case.stock_moe_configs, batch, latency * 1e3, batch / latency,
                        latency * 1e3 / layers, floor * 1e3, floor / latency, variant=case.variant,
                        bound_ms=bound * 1e3))  # fmt: skip
    return rows


def speedup(reference: Any, row: Any, field: str) -> float | None:
    """How many times faster `row` is than `reference` by the time in `field` (ms, µs, TPOT); None where
    there is no reference or either lacks the time."""
    before, after = getattr(reference, field, None), getattr(row, field)
    return before / after if before and after else None


def with_ratios(rows: list[Row]) -> list[Row]:
    """Fill, at the same batch size: each row's speed-up over BF16 (FSE on, shipped configs, its own options)
    and the ones its weight bytes, and its weight and cache bytes, allow; for FSE-on rows the speed-up over the
    same format unfused; for the shipped-config rows of a format also measured with SGLang's stock configs, the
    tuned/stock ratio; and for a variant's rows the speed-up over the format's own options."""
    by = {(r.fmt, r.fse, r.stock_moe_configs, r.variant, r.batch): r for r in rows}
    for r in rows:
        baseline = by.get((BASELINE.fmt, BASELINE.fse, False, "", r.batch))
        unfused = by.get((r.fmt, False, r.stock_moe_configs, r.variant, r.batch)) if r.fse else None
        stock = by.get((r.fmt, r.fse, True, r.variant, r.batch)) if not r.stock_moe_configs else None
        default = by.get((r.fmt, r.fse, r.stock_moe_configs, "", r.batch)) if r.variant else None
        r.vs_bf16 = speedup(baseline, r, "decode_ms")
        r.floor_vs_bf16 = speedup(baseline, r, "floor_ms")
        r.bound_vs_bf16 = speedup(baseline, r, "bound_ms")
        r.fse_vs_unfused = speedup(unfused, r, "decode_ms")
        r.tuned_vs_stock = speedup(stock, r, "decode_ms")
        r.vs_default = speedup(default, r, "decode_ms")
    return rows


def save_case(path: Path, options_key: str, rows: list[Row], setup: dict, bandwidth_gbs: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"fmt": options_key, "setup": setup, "hbm_gbs": bandwidth_gbs,
                                "rows": [asdict(r) for r in rows]}, indent=2) + "\n")  # fmt: skip


def load_cases(folder: Path, setups: dict[str, dict]) -> dict[str, list[Row]]:
    """The saved cases, by file stem, measured with the setup (shape, layers, SGLang options) that
    `setups` gives for their format (or format:variant): a case saved under other options is not this run's."""
    found = {}
    for path in sorted(folder.glob("*.json")):
        saved = json.loads(path.read_text())
        if saved.get("setup") == setups.get(saved.get("fmt")):
            found[path.stem] = [Row(**row) for row in saved["rows"]]
    return found


ALL_FORMATS = "bf16,quark-w8a8-int8,quark-mxfp4-fse,modelopt-nvfp4,ct-mxfp4"


def add_checkpoint_arguments(parser: argparse.ArgumentParser, formats: str = ALL_FORMATS, several_depths: bool = False) -> None:
    """The options that pick the real-shaped checkpoints and SGLang's options per format (shared by the
    decode, profile, serving and speculative benchmarks; the last takes several layer counts)."""
    parser.add_argument("--shape", default="qwen3.5-35b-a3b")
    if several_depths:
        parser.add_argument("--layers", type=byte_bound.positive_ints, default=[8],
                            help="decoder layer counts, e.g. 4,16 (default 8); two or more fit a line per case")  # fmt: skip
    else:
        parser.add_argument("--layers", type=int, default=20, help="decoder layers (disk, memory); per-layer ms reported")
    parser.add_argument("--formats", default=formats)
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="FORMAT:KEY=VALUE",
                        help="an SGLang option for one format on top of its tiny recipe")  # fmt: skip


NO_GPU = "not measured: measuring needs a CUDA GPU and SGLang 0.5.17"


def measurable(pending: list[Case]) -> tuple[list[Case], dict[str, str]]:
    """The pending cases this machine can measure, and the rest as failures by case label: without a CUDA
    GPU, none. The results already in --out are reported either way."""
    import torch

    if not pending or torch.cuda.is_available():
        return pending, {}
    print(f"error: {', '.join(c.label for c in pending)}: {NO_GPU}; reporting what --out already holds\n"
          "fix: rerun with the same --out on a GPU machine to measure the rest", file=sys.stderr)  # fmt: skip
    return [], {case.label: NO_GPU for case in pending}


def format_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, FormatOptions]:
    """Per format (every format, --formats or not): `real_shape_sets` unless --shape is tiny, then the --set
    FORMAT:KEY=VALUE items, and the SGLang options they give; a malformed item, an unknown format or an
    option the recipe rejects is a usage error, before any GPU work."""
    if bad := [item for item in args.sets if ":" not in item]:
        parser.error(f"--set {bad[0]}: expected FORMAT:KEY=VALUE, e.g. ct-mxfp4:moe-runner-backend=marlin")
    pairs = [item.split(":", 1) for item in args.sets]
    formats = dict.fromkeys([*args.formats.split(","), *ALL_FORMATS.split(","), *(name for name, _ in pairs)])
    options = {}
    try:
        for fmt in formats:
            real = real_shape_sets(fmt) if args.shape != "tiny" else ()
            sets = [*real, *(kv for name, kv in pairs if name == fmt)]
            options[fmt] = recipe_options(fmt, sets)
    except LaunchError as error:
        parser.error(str(error))
    return options


VARIANT = re.compile(r"(?P<name>[a-z0-9][a-z0-9-]*)=(?P<fmt>[^:=]+):(?P<kv>[^=]+=.*)")


def variant_options(parser: argparse.ArgumentParser, args: argparse.Namespace, options: dict[str, FormatOptions]) -> dict[str, FormatOptions]:
    """Per `--variant NAME=FORMAT:KEY=VALUE` (format, NAME): the format's options with that NAME's items on
    top, keyed "FORMAT:NAME"; a malformed item, a format outside --formats or an option the recipe rejects is
    a usage error, before any GPU work."""
    grouped: dict[tuple[str, str], list[str]] = {}
    for item in args.variants:
        if not (match := VARIANT.fullmatch(item)):
            parser.error(f"--variant {item}: expected NAME=FORMAT:KEY=VALUE (NAME of a-z, 0-9, -), e.g. compile=bf16:enable-torch-compile=true")
        if match["fmt"] not in args.formats.split(","):
            parser.error(f"--variant {item}: format {match['fmt']!r} is not among --formats {args.formats}; its baseline would not run")
        grouped.setdefault((match["fmt"], match["name"]), []).append(match["kv"])
    out = {}
    for (fmt, name), items in grouped.items():
        sets = [*options[fmt].sets, *items]
        try:
            out[f"{fmt}:{name}"] = recipe_options(fmt, sets)
        except LaunchError as error:
            parser.error(f"--variant {name}={fmt}:{' '.join(items)}: {error}")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.perf.bench_decode", description=__doc__.split("\n\n")[0])
    add_checkpoint_arguments(parser)
    parser.add_argument("--batch-sizes", type=byte_bound.positive_ints, default=[1, 8, 32, 64, 128])
    parser.add_argument("--stock-moe-configs", action="store_true",
                        help="also run BF16 and INT8 (FSE on) with SGLang's stock fused-MoE configs")
    parser.add_argument("--variant", dest="variants", action="append", default=[], metavar="NAME=FORMAT:KEY=VALUE",
                        help="also run FORMAT with this SGLang option on top, as case NAME, against its own options")  # fmt: skip
    parser.add_argument("--rerun", action="store_true", help="measure cases already saved in --out again")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "runs")) / "bench_decode")
    args = parser.parse_args()
    formats = args.formats.split(",")
    batches = args.batch_sizes
    options = format_options(parser, args)
    options.update(variant_options(parser, args, options))
    variants = [tuple(key.split(":", 1)) for key in options if ":" in key]
    setups = {key: {"shape": args.shape, "layers": args.layers, **o.setup()} for key, o in options.items()}

    args.out.mkdir(parents=True, exist_ok=True)
    saved = args.out / "cases"
    done = load_cases(saved, setups)
    todo = [c for c in cases(formats, args.stock_moe_configs, variants) if args.rerun or c.slug not in done]
    todo, unmeasured = measurable(todo)
    if todo:
        bandwidth = hbm_bandwidth_gbs()
        print(f"HBM bandwidth (copy): {bandwidth:.0f} GB/s; {len(todo)} cases to run", flush=True)

    def measure(case: Case, checkpoint: Path) -> None:
        measured = run_case(checkpoint, options[case.options_key], case, batches, args.out)
        rows = case_rows(case, measured, checkpoint, args.layers, bandwidth, options[case.options_key].server_cli)
        save_case(saved / f"{case.slug}.json", case.options_key, rows, setups[case.options_key], bandwidth)

    failures = {**unmeasured, **run_cases(args.out, args.shape, args.layers, todo, measure)}
    rows = with_ratios([row for rows in load_cases(saved, setups).values() for row in rows])
    report = {"shape": args.shape, "layers": args.layers, "rows": [asdict(r) for r in rows], "failures": failures}
    (args.out / "bench_decode.json").write_text(json.dumps(report, indent=2) + "\n")
    print_table(rows, args.shape, args.layers)
    return 1 if failures else 0


def ratio(value: float | None) -> str:
    return f"{value:.2f}" if value else ""


def print_table(rows: list[Row], shape: str, layers: int) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"decode, {shape} with {layers} layers (sglang.benchmark.one_batch, in 256 / out 32)")
    columns = ("case", "batch", "ms/step", "tok/s", "ms/layer", "× BF16", "floor × BF16", "+cache × BF16", "FSE on/off",
               "tuned/stock cfg", "× default", "floor ms", "of floor")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(r.case, str(r.batch), f"{r.decode_ms:.2f}", f"{r.tok_s:.0f}", f"{r.ms_per_layer:.3f}", ratio(r.vs_bf16),
                      ratio(r.floor_vs_bf16), ratio(r.bound_vs_bf16), ratio(r.fse_vs_unfused), ratio(r.tuned_vs_stock), ratio(r.vs_default), f"{r.floor_ms:.2f}",
                      f"{r.bandwidth_fraction:.0%}")  # fmt: skip
    Console(width=200).print(table)


if __name__ == "__main__":
    sys.exit(main())

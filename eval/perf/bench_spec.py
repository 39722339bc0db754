"""Speculative decoding (NEXTN/MTP) speed-up against the MTP head's acceptance, at real Qwen3.5 shapes.

    python -m eval.perf.bench_spec [--shape qwen3.5-35b-a3b] [--layers 8[,16,...]] [--formats bf16]
                              [--acceptance 0.5,0.75,0.9] [--spec 5,1,6 [3,1,4 ...]] [--concurrency 1,4,10]
                              [--set FORMAT:KEY=VALUE ...] [--out DIR]

For each format and layer count, real-shaped random checkpoints whose MTP head agrees with the greedy main
model at each share P (`sglang_ext/fixtures/predictable_mtp.py`; the main model is the same at every P) are
served by the format's tiny recipe with card 001's cache settings (page size 64, extra_buffer): once without
speculative decoding, then with NEXTN at each P and draft shape (steps, topk, draft tokens). `python -m eval
speed` sweeps each server (SGLang's bench_serving, card 003's two prompt shapes); the server's average accept
length is read from /get_server_info after the sweep. The table gives per-request decode speed (1 / median
TPOT) and output tok/s as ratios against MTP off at the same layers, prompt shape and concurrency, beside
the measured accept length and the speed-up the weight bytes give (`step_bytes_ratio`), so a user reads off
what their model's accept length buys (the real Qwen3.5-397B's is ~3.3, P ≈ 0.75 at 5 steps).

With two or more layer counts, each case's median TPOT is fitted with a line in the layer count and projected
to the shape's full depth (60 layers for the 397B, 40 for the 35B): a projection, printed as one.

Each case's sweep stays in OUT/spec/<shape>-<layers>L/<case>/; a rerun with the same --out skips finished cases,
so a sweep can be split across commands and the table covers every saved case of the options asked for.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from eval.perf import bench_decode, bench_serving, byte_bound
from eval import speed
from launch.recipe import load_recipe
from sglang_ext.fixtures.model_config import SHAPES
from sglang_ext.formats.safetensors_headers import StoredEntry, read_checkpoint

CARD_001_CACHE = ("page-size=64", "mamba-radix-cache-strategy=extra_buffer")
# Card 003's shapes, whose prefills share each request's lifetime with its decoding at concurrency > 1, and one
# where decoding outweighs prefill eight to one, so 1 / TPOT is the decode speed.
DEFAULT_SHAPES = (*speed.SHAPES, speed.Shape("in128-out1024", 128, 1024))


@dataclass(frozen=True)
class SpecCase:
    fmt: str
    layers: int
    acceptance: float  # the checkpoint's MTP head; with steps None it only sets which checkpoint serves
    steps: tuple[int, int, int] | None  # NEXTN (num-steps, eagle-topk, num-draft-tokens); None: off

    @property
    def label(self) -> str:
        return f"{self.fmt} mtp-off" if self.steps is None else f"{self.fmt} NEXTN {'/'.join(map(str, self.steps))} P={self.acceptance:g}"

    @property
    def name(self) -> str:
        return f"{self.label}, {self.layers} layers"

    @property
    def slug(self) -> str:
        return self.label.replace(" ", "-").replace("/", "-").replace("=", "")

    def sets(self) -> list[str]:
        if self.steps is None:
            return []
        steps, topk, drafts = self.steps
        return ["speculative-algorithm=NEXTN", f"speculative-num-steps={steps}", f"speculative-eagle-topk={topk}",
                f"speculative-num-draft-tokens={drafts}"]  # fmt: skip


@dataclass
class SpecRow:
    case: str
    fmt: str
    layers: int
    acceptance: float | None
    steps: tuple[int, int, int] | None
    shape: str
    concurrency: int
    output_throughput: float
    median_tpot_ms: float | None
    accept_length: float | None
    bytes_ratio: float | None = None  # the 1 / TPOT speed-up over MTP off if both read weights at one bandwidth
    tpot_vs_off: float | None = None
    tok_s_vs_off: float | None = None


@dataclass
class ProjectedRow:
    case: str
    fmt: str
    steps: tuple[int, int, int] | None
    shape: str
    concurrency: int
    layers_measured: list[int]
    layers: int
    median_tpot_ms: float
    tpot_vs_off: float | None = None


def accept_length(base_url: str) -> float | None:
    with urllib.request.urlopen(f"{base_url}/get_server_info", timeout=30) as response:
        info = json.loads(response.read())
    states = info.get("internal_states") or [{}]
    return states[0].get("avg_spec_accept_length")


def step_bytes_ratio(entries: list[StoredEntry], config: dict, steps: tuple[int, int, int], accept: float, batch: int) -> float:
    """How many times faster than plain decoding NEXTN is if every forward reads its weights at one bandwidth:
    `accept` tokens per step against the weight bytes of one step (the checkpoint's `entries`). A bound where
    decoding is bandwidth-bound; at batch 1, where a plain step is mostly fixed cost, NEXTN can beat it. SGLang's EAGLE
    worker (topk 1) verifies `draft tokens` per request through the target, extends the draft over them (which
    gives the first draft token), and runs `num-steps - 1` more draft forwards (eagle_worker_v2.draft_forward);
    verifying touches as many more routed experts as it carries tokens, and every draft forward reads the
    lm_head."""
    num_steps, _, draft_tokens = steps
    verified = batch * draft_tokens

    def read(tokens: int, draft: bool = False) -> float:
        return byte_bound.weight_bytes(entries, config, tokens, draft=draft)

    spec_step = read(verified) + read(verified, draft=True) + (num_steps - 1) * read(batch, draft=True)
    return accept * read(batch) / spec_step


def sweep(case: SpecCase, checkpoint: Path, sets: list[str], concurrency: list[int], shapes: tuple[speed.Shape, ...], out: Path) -> None:
    """The format's tiny recipe serving `checkpoint` with the whole GPU, `sets` (eval.perf.bench_decode's per-format
    options at real shapes) and the case's NEXTN options, swept by eval speed at `shapes`; then its accept length."""
    overrides = bench_serving.case_overrides(bench_decode.Case(case.fmt, None), checkpoint, [*CARD_001_CACHE, *sets, *case.sets()])
    loaded = load_recipe(bench_decode.tiny_recipe(case.fmt), overrides)
    measured = bench_serving.sweep(case, loaded, checkpoint, concurrency, out, accept_length if case.steps else None, shapes)
    (out / "accept_length.json").write_text(json.dumps({"accept_length": measured}) + "\n")


def swept(folder: Path, shapes: tuple[speed.Shape, ...]) -> bool:
    """A finished sweep in `folder` at these prompt shapes."""
    if not (folder / "accept_length.json").exists():
        return False
    return [s["name"] for s in json.loads((folder / "speed.json").read_text()).get("shapes", [])] == [s.name for s in shapes]


def rows_of(case: SpecCase, folder: Path, checkpoint: Path) -> list[SpecRow]:
    """The case's saved sweep; the byte ratio where its checkpoint is still on disk."""
    points = json.loads((folder / "speed.json").read_text())["points"]
    measured = json.loads((folder / "accept_length.json").read_text())["accept_length"]
    ratio = None
    if case.steps and measured and (checkpoint / "config.json").exists():
        config, entries = json.loads((checkpoint / "config.json").read_text()), read_checkpoint(checkpoint)
        ratio = functools.partial(step_bytes_ratio, entries, config, case.steps, measured)
    return [SpecRow(case.label, case.fmt, case.layers, case.acceptance if case.steps else None, case.steps, p["shape"],
                    p["concurrency"], p["output_throughput"], p["median_tpot_ms"], measured,
                    ratio(p["concurrency"]) if ratio else None) for p in points]  # fmt: skip


def with_ratios(rows: list[SpecRow]) -> list[SpecRow]:
    off = {(r.fmt, r.layers, r.shape, r.concurrency): r for r in rows if r.steps is None}
    for r in rows:
        base = off.get((r.fmt, r.layers, r.shape, r.concurrency))
        if base is not None:
            r.tok_s_vs_off = r.output_throughput / base.output_throughput
            r.tpot_vs_off = bench_decode.speedup(base, r, "median_tpot_ms")
    return rows


def projected(rows: list[SpecRow], layers: int) -> list[ProjectedRow]:
    """Each case's median TPOT at `layers`, from a least-squares line through its measured layer counts (two
    at least), and the projected speed-up over MTP off projected the same way."""
    import numpy as np

    measured: dict[tuple, dict[int, float]] = {}
    for r in rows:
        if r.median_tpot_ms:
            measured.setdefault((r.case, r.fmt, r.steps, r.shape, r.concurrency), {})[r.layers] = r.median_tpot_ms
    out = []
    for (case, fmt, steps, shape, concurrency), tpot in measured.items():
        if len(tpot) < 2:
            continue
        slope, intercept = np.polyfit(list(tpot), list(tpot.values()), 1)
        out.append(ProjectedRow(case, fmt, steps, shape, concurrency, sorted(tpot), layers, float(intercept + slope * layers)))
    off = {(p.fmt, p.shape, p.concurrency): p for p in out if p.steps is None}
    for p in out:
        base = off.get((p.fmt, p.shape, p.concurrency))
        if base is not None and base.median_tpot_ms > 0 and p.median_tpot_ms > 0:  # a line can cross zero
            p.tpot_vs_off = base.median_tpot_ms / p.median_tpot_ms
    return out


def print_tables(rows: list[SpecRow], projection: list[ProjectedRow], shape: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=190)
    table = Table(title=f"NEXTN speed-up vs MTP off, {shape} (bench_serving; ratios: 1 / TPOT, tok/s; "
                        "bytes: the 1 / TPOT ratio at one bandwidth, `step_bytes_ratio`)")  # fmt: skip
    for column in ("case", "layers", "prompt shape", "concurrency", "accept length", "median TPOT ms", "output tok/s",
                   "× off (1/TPOT)", "× off (tok/s)", "bytes ratio"):  # fmt: skip
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(r.case, str(r.layers), r.shape, str(r.concurrency), f"{r.accept_length:.2f}" if r.accept_length else "-",
                      f"{r.median_tpot_ms:.2f}" if r.median_tpot_ms else "", f"{r.output_throughput:.0f}",
                      bench_decode.ratio(r.tpot_vs_off), bench_decode.ratio(r.tok_s_vs_off), bench_decode.ratio(r.bytes_ratio))  # fmt: skip
    console.print(table)
    if projection:
        table = Table(title=f"projection to {projection[0].layers} layers: a line through each case's median TPOT at the layer counts measured")
        for column in ("case", "prompt shape", "concurrency", "layers measured", "projected TPOT ms", "× off (1/TPOT)"):
            table.add_column(column, justify="right")
        for p in projection:
            table.add_row(p.case, p.shape, str(p.concurrency), ",".join(map(str, p.layers_measured)),
                          f"{p.median_tpot_ms:.2f}", bench_decode.ratio(p.tpot_vs_off))  # fmt: skip
        console.print(table)


def _shares(text: str) -> list[float]:
    values = [float(v) for v in text.split(",") if v.strip()]
    if not values or not all(0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected shares in (0, 1], e.g. 0.5,0.75,0.9; got {text!r}")
    return values


def _steps(text: str) -> tuple[int, int, int]:
    parts = tuple(int(v) for v in text.split(","))
    if len(parts) != 3 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected num-steps,eagle-topk,num-draft-tokens, e.g. 5,1,6; got {text!r}")
    return parts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.perf.bench_spec", description=__doc__.split("\n\n")[0])
    bench_decode.add_checkpoint_arguments(parser, formats="bf16", several_depths=True)
    parser.add_argument("--acceptance", type=_shares, default="0.5,0.75,0.9", help="MTP head shares P (default 0.5,0.75,0.9)")
    parser.add_argument("--spec", type=_steps, nargs="+", default=[(5, 1, 6)],
                        help="NEXTN draft shapes steps,topk,draft-tokens (default card 001's 5,1,6), e.g. 5,1,6 3,1,4")  # fmt: skip
    parser.add_argument("--concurrency", type=speed.concurrency_list, default="1,4,10", help="default 1,4,10 (card 001's max running)")
    parser.add_argument("--prompt-shapes", type=speed.shape_list, default=",".join(s.name for s in DEFAULT_SHAPES),
                        help="inN-outM,... (default card 003's two and in128-out1024, where decoding outweighs prefill)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "runs")) / "bench_spec")
    args = parser.parse_args(argv)
    options = bench_decode.format_options(parser, args)
    todo = [case for layers in args.layers for fmt in args.formats.split(",")
            for case in (SpecCase(fmt, layers, args.acceptance[0], None),
                         *(SpecCase(fmt, layers, p, s) for p in args.acceptance for s in args.spec))]  # fmt: skip
    folder = {c: args.out / "spec" / f"{args.shape}-{c.layers}L" / c.slug for c in todo}
    checkpoint = {c: bench_decode.checkpoint_path(args.out, args.shape, c.layers, c.fmt, c.acceptance) for c in todo}
    waiting = [c for c in todo if not swept(folder[c], args.prompt_shapes)]
    pending, unmeasured = bench_decode.measurable(waiting)
    failures = {c.name: unmeasured[c.label] for c in waiting if c not in pending}
    if pending:
        bench_serving.require_importable(parser)
    for case in pending:
        bench_decode.ensure_checkpoint(args.out, args.shape, case.layers, case.fmt, case.acceptance)
        try:
            sweep(case, checkpoint[case], options[case.fmt].sets, args.concurrency, args.prompt_shapes, folder[case])
        except RuntimeError as error:
            failures[case.name] = str(error)
    done = [c for c in todo if swept(folder[c], args.prompt_shapes)]
    rows = with_ratios([row for c in done for row in rows_of(c, folder[c], checkpoint[c])])
    projection = projected(rows, SHAPES[args.shape].num_layers)
    report = {"shape": args.shape, "layers": args.layers, "rows": [asdict(r) for r in rows],
              "projection": [asdict(p) for p in projection], "failures": failures}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_spec.json").write_text(json.dumps(report, indent=2) + "\n")
    if rows:
        print_tables(rows, projection, args.shape)
    for label, why in failures.items():
        print(f"not measured: {label}: {why}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

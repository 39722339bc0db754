"""Speculative decoding (NEXTN/MTP) speed-up against the MTP head's acceptance, at real Qwen3.5 shapes.

    python -m eval.perf.bench_spec [--shape qwen3.5-35b-a3b] [--layers 8] [--formats bf16] [--acceptance 0.5,0.75,0.9]
                              [--spec 5,1,6] [--concurrency 1,4,10] [--out DIR]

For each format, real-shaped random checkpoints whose MTP head agrees with the greedy main model at each
share P (`sglang_ext/fixtures/predictable_mtp.py`; the main model is the same at every P) are served by the
format's tiny recipe with card 001's cache settings (page size 64, extra_buffer): once without speculative
decoding, then with NEXTN at each P. `python -m eval speed` sweeps each server (SGLang's bench_serving,
card 003's two prompt shapes); the server's average accept length is read from /get_server_info after the
sweep. The table gives per-request decode speed (1 / median TPOT) and output tok/s as ratios against MTP
off at the same shape and concurrency, beside the measured accept length, so a user reads off the speed-up
their model's accept length buys (the real Qwen3.5-397B's is ~3.3, P ≈ 0.75 at 5 steps).

Each case's sweep stays in OUT/spec/<case>/; a rerun with the same --out skips finished cases.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from eval.perf import bench_decode, bench_serving
from eval.speed import concurrency_list
from launch.recipe import load_recipe

CARD_001_CACHE = ("page-size=64", "mamba-radix-cache-strategy=extra_buffer")


@dataclass(frozen=True)
class SpecCase:
    fmt: str
    acceptance: float  # the checkpoint's MTP head; with steps None it only sets which checkpoint serves
    steps: tuple[int, int, int] | None  # NEXTN (num-steps, eagle-topk, num-draft-tokens); None: off

    @property
    def label(self) -> str:
        return f"{self.fmt} mtp-off" if self.steps is None else f"{self.fmt} NEXTN {'/'.join(map(str, self.steps))} P={self.acceptance:g}"

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
    acceptance: float | None
    shape: str
    concurrency: int
    output_throughput: float
    median_tpot_ms: float | None
    accept_length: float | None
    tpot_vs_off: float | None = None
    tok_s_vs_off: float | None = None


def accept_length(base_url: str) -> float | None:
    with urllib.request.urlopen(f"{base_url}/get_server_info", timeout=30) as response:
        info = json.loads(response.read())
    states = info.get("internal_states") or [{}]
    return states[0].get("avg_spec_accept_length")


def sweep(case: SpecCase, checkpoint: Path, sets: list[str], concurrency: list[int], out: Path) -> None:
    """The format's tiny recipe serving `checkpoint` with the whole GPU, `sets` (eval.perf.bench_decode's per-format
    options at real shapes) and the case's NEXTN options, swept by eval speed; then its accept length."""
    overrides = bench_serving.case_overrides(bench_decode.Case(case.fmt, None), checkpoint, [*CARD_001_CACHE, *sets, *case.sets()])
    loaded = load_recipe(bench_decode.tiny_recipe(case.fmt), overrides)
    measured = bench_serving.sweep(case, loaded, checkpoint, concurrency, out, accept_length if case.steps else None)
    (out / "accept_length.json").write_text(json.dumps({"accept_length": measured}) + "\n")


def rows_of(case: SpecCase, folder: Path) -> list[SpecRow]:
    points = json.loads((folder / "speed.json").read_text())["points"]
    measured = json.loads((folder / "accept_length.json").read_text())["accept_length"]
    return [SpecRow(case.label, case.fmt, case.acceptance if case.steps else None, p["shape"], p["concurrency"],
                    p["output_throughput"], p["median_tpot_ms"], measured) for p in points]  # fmt: skip


def with_ratios(rows: list[SpecRow]) -> list[SpecRow]:
    off = {(r.fmt, r.shape, r.concurrency): r for r in rows if r.acceptance is None}
    for r in rows:
        base = off.get((r.fmt, r.shape, r.concurrency))
        if base is not None:
            r.tok_s_vs_off = r.output_throughput / base.output_throughput
            r.tpot_vs_off = bench_decode.speedup(base, r, "median_tpot_ms")
    return rows


def print_table(rows: list[SpecRow], shape: str, layers: int) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"NEXTN speed-up vs MTP off, {shape} with {layers} layers (bench_serving; ratios: 1 / TPOT, tok/s)")
    for column in ("case", "prompt shape", "concurrency", "accept length", "median TPOT ms", "output tok/s", "× off (1/TPOT)", "× off (tok/s)"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(r.case, r.shape, str(r.concurrency), f"{r.accept_length:.2f}" if r.accept_length else "-",
                      f"{r.median_tpot_ms:.2f}" if r.median_tpot_ms else "", f"{r.output_throughput:.0f}",
                      bench_decode.ratio(r.tpot_vs_off), bench_decode.ratio(r.tok_s_vs_off))  # fmt: skip
    Console(width=170).print(table)


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
    bench_decode.add_checkpoint_arguments(parser, formats="bf16")
    parser.add_argument("--acceptance", type=_shares, default="0.5,0.75,0.9", help="MTP head shares P (default 0.5,0.75,0.9)")
    parser.add_argument("--spec", type=_steps, default="5,1,6", help="NEXTN steps,topk,draft tokens (default card 001's 5,1,6)")
    parser.add_argument("--concurrency", type=concurrency_list, default="1,4,10", help="default 1,4,10 (card 001's max running)")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "runs")) / "bench_spec")
    args = parser.parse_args(argv)
    options = bench_decode.format_options(parser, args)
    formats = args.formats.split(",")
    todo = [case for fmt in formats for case in (SpecCase(fmt, args.acceptance[0], None),
                                                 *(SpecCase(fmt, p, args.spec) for p in args.acceptance))]  # fmt: skip
    folder = {c: args.out / "spec" / f"{args.shape}-{args.layers}L" / c.slug for c in todo}
    pending, failures = bench_decode.measurable([c for c in todo if not (folder[c] / "accept_length.json").exists()])
    if pending:
        bench_serving.require_importable(parser)
    for case in pending:
        checkpoint = bench_decode.ensure_checkpoint(args.out, args.shape, args.layers, case.fmt, case.acceptance)
        try:
            sweep(case, checkpoint, options[case.fmt].sets, args.concurrency, folder[case])
        except RuntimeError as error:
            failures[case.label] = str(error)
    rows = with_ratios([row for c in todo if (folder[c] / "accept_length.json").exists() for row in rows_of(c, folder[c])])
    report = {"shape": args.shape, "layers": args.layers, "rows": [asdict(r) for r in rows], "failures": failures}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_spec.json").write_text(json.dumps(report, indent=2) + "\n")
    if rows:
        print_table(rows, args.shape, args.layers)
    for label, why in failures.items():
        print(f"not measured: {label}: {why}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

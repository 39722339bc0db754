"""python -m sglang_ext.inspect PATH [--json FILE] [--max-problems N]

Check a Qwen3.5-MoE checkpoint directory against its own config.json without loading a weight: detect
the quantization scheme, verify every tensor SGLang's Qwen3.5-MoE loader will ask for is there with the
right dtype and shape, and that nothing is left over. Prints what is stored (tensor groups x precision,
bytes), what the config keeps unquantized and, on failure, each problem. Exit status 0 when the
checkpoint matches, 1 when it does not.
"""

import argparse
import json
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from sglang_ext.formats.check import Report, check_checkpoint

GROUP_ORDER = (
    "routed experts", "shared expert", "attention", "DeltaNet", "router", "embeddings", "norms", "MTP",
    "vision", "other",
)  # fmt: skip


def _size(nbytes: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    raise AssertionError("unreachable")


def _summary_table(report: Report) -> Table:
    precisions = sorted({precision for _, precision in report.summary})
    table = Table(title=f"{report.path}: {report.scheme}, {report.tensors:,} tensors")
    table.add_column("group")
    for precision in precisions:
        table.add_column(precision, justify="right")
    for group in GROUP_ORDER:
        cells = [report.summary.get((group, precision)) for precision in precisions]
        if any(cells):
            table.add_row(group, *(f"{c[0]:,} / {_size(c[1])}" if c else "" for c in cells))
    totals = [sum(c[1] for (_, p), c in report.summary.items() if p == precision) for precision in precisions]
    table.add_row("[bold]bytes[/bold]", *(f"[bold]{_size(total)}[/bold]" for total in totals))
    return table


def render(report: Report, console: Console, max_problems: int) -> None:
    if report.summary:
        console.print(_summary_table(report))
    if report.mtp_experts:
        console.print(f"MTP layer's routed experts: {report.mtp_experts}")
    if report.quantized or report.excluded:
        def listing(counts: dict[str, int]) -> str:
            return ", ".join(f"{group} ({counts[group]})" for group in GROUP_ORDER if group in counts) or "none"

        console.print(f"quantized Linear modules: {listing(report.quantized)}")
        console.print(f"kept unquantized by the config: {listing(report.excluded)}")
    if report.ok:
        console.print(f"[green]OK[/green]: every tensor the {report.scheme} layout needs is present, nothing left over")
        return
    console.print(f"[red]{len(report.problems)} problem(s)[/red]:")
    for problem in report.problems[:max_problems]:
        console.print(f"  {problem.tensor or report.path}: {problem.message}", soft_wrap=True, markup=False)
    if len(report.problems) > max_problems:
        console.print(f"  ... and {len(report.problems) - max_problems} more (--max-problems, or --json for all)")


def _at_least_one(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; give how many problems to print, e.g. 40") from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"{count}: give at least 1 problem to print (--json FILE keeps them all)")
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sglang_ext.inspect", description=__doc__.split("\n\n")[1])
    parser.add_argument("path", type=Path, help="checkpoint directory (config.json + *.safetensors)")
    parser.add_argument("--json", type=Path, help="also write the full report as JSON here")
    parser.add_argument("--max-problems", type=_at_least_one, default=40, help="problems to print (default 40)")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    report = check_checkpoint(args.path)
    console = Console(highlight=False)
    render(report, console, args.max_problems)
    console.print(f"checked in {time.perf_counter() - started:.2f} s (headers only)", style="dim")
    if args.json:
        try:
            args.json.write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
        except OSError as error:
            parser.error(f"--json {args.json}: cannot write it ({error.strerror or error}); give a file path in a writable directory")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())

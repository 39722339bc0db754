"""What an evaluation leaves behind: results.json, summary.md, a table on the terminal, and a verdict against
the recipe's `expected` entry for the task."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from launch.recipe import LoadedRecipe

EXIT_OUTSIDE_TOLERANCE = 3
# A run on fewer questions than the source's is judged within its tolerance plus this many of the sample's
# standard errors: a model that scores the source's value on all of them lands there about 95% of the time.
SAMPLE_STDERRS = 2
console = Console(width=None if sys.stdout.isatty() else 160)


@dataclass(frozen=True)
class Metric:
    value: float
    stderr: float | None = None


@dataclass(frozen=True)
class Verdict:
    status: str  # "pass", "fail", or "none" (no expected value, or too little to judge by)
    text: str
    metric: str | None = None
    measured: float | None = None
    expected: float | None = None
    tolerance: float | None = None  # as applied: the recipe's, widened for a sample of the questions
    questions: int | None = None  # how many the measurement rests on

    @property
    def exit_code(self) -> int:
        return EXIT_OUTSIDE_TOLERANCE if self.status == "fail" else 0


def output_dir(given: Path | None, recipe: str | None, task: str) -> Path:
    if given is not None:
        return given
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / "eval" / f"{recipe or 'server'}-{task}-{stamp}"


def judge(recipe: LoadedRecipe | None, task: str, metrics: dict[str, Metric], questions: int | None = None) -> Verdict:
    """The run's `metrics` (over `questions` questions) against the recipe's expected entry for `task`."""
    entries = [e for e in recipe.recipe.expected if e.task == task] if recipe else []
    if not entries:
        who = f"recipe {recipe.name}" if recipe else "this run (no --recipe)"
        return Verdict("none", f"no expected {task} value for {who}: nothing to compare")
    e = entries[0]
    if e.metric not in metrics:
        return Verdict("fail", f"the run produced no '{e.metric}' (has: {', '.join(metrics)})", e.metric)
    measured = metrics[e.metric]
    on, tolerance, widened = (f" on {questions} questions" if questions else ""), e.tolerance, ""
    if questions and e.questions and questions < e.questions:
        on = f" on {questions} of the source's {e.questions} questions"
        if not measured.stderr:
            return Verdict("none", f"no verdict: {e.metric} = {measured.value:.4g}{on}, a sample without a standard error "
                           f"to judge it by; ask all {e.questions} (no --limit) to compare with {e.value:g} ({e.source})",
                           e.metric, measured.value, e.value, questions=questions)  # fmt: skip
        tolerance = e.tolerance + SAMPLE_STDERRS * measured.stderr
        widened = f" widened to ± {tolerance:.3g} by {SAMPLE_STDERRS} × the sample's standard error {measured.stderr:.3g}"
    inside = abs(measured.value - e.value) <= tolerance
    text = (
        f"{e.metric} = {measured.value:.4g}{on}, expected {e.value:g} ± {e.tolerance:g}{widened} ({e.source}): "
        + ("inside tolerance" if inside else f"OUTSIDE tolerance (exit code {EXIT_OUTSIDE_TOLERANCE})")
    )
    return Verdict("pass" if inside else "fail", text, e.metric, measured.value, e.value, tolerance, questions)


def metrics_table(title: str, metrics: dict[str, Metric]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("metric", "value", "± stderr"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for name, m in metrics.items():
        table.add_row(name, f"{m.value:.4f}", "" if m.stderr is None else f"{m.stderr:.4f}")
    return table


def summary_markdown(title: str, config: dict[str, Any], metrics: dict[str, Metric], verdict: Verdict) -> str:
    lines = [f"# {title}", "", "| metric | value | ± stderr |", "| --- | ---: | ---: |"]
    lines += [f"| {n} | {m.value:.4f} | {'' if m.stderr is None else f'{m.stderr:.4f}'} |" for n, m in metrics.items()]
    lines += ["", f"**Verdict:** {verdict.text}", "", "## Configuration", ""]
    lines += [f"- {k}: `{v}`" for k, v in config.items()]
    return "\n".join(lines) + "\n"


def write(
    out_dir: Path,
    title: str,
    config: dict[str, Any],
    metrics: dict[str, Metric],
    verdict: Verdict,
    extra: dict[str, Any] | None = None,
) -> None:
    """results.json and summary.md in out_dir; the metrics table and verdict on the terminal."""
    out_dir.mkdir(parents=True, exist_ok=True)
    document = {
        "title": title,
        "created": datetime.now().isoformat(timespec="seconds"),
        "config": config,
        "metrics": {name: asdict(m) for name, m in metrics.items()},
        "verdict": asdict(verdict),
        **(extra or {}),
    }
    (out_dir / "results.json").write_text(json.dumps(document, indent=2, ensure_ascii=False, default=str) + "\n")
    (out_dir / "summary.md").write_text(summary_markdown(title, config, metrics, verdict))
    console.print(metrics_table(title, metrics))
    style = {"pass": "green", "fail": "bold red", "none": "yellow"}[verdict.status]
    console.print(f"[{style}]{verdict.text}[/]")
    console.print(f"results: {out_dir / 'results.json'}, {out_dir / 'summary.md'}")

"""GSM8K, 5-shot, chat template with the shots as turns, greedy: the InferenceX recipe the cards report.

Metrics are lm-eval's own: exact_match under the strict-match filter (the final "#### N" line) and the
flexible-extract filter (the last number in the answer), in percent.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import yaml

from eval import harness, results, server
from eval.server import Target
from launch.errors import LaunchError

TASK_YAML = Path(__file__).resolve().parent / "tasks" / "gsm8k.yaml"
SPLITS = ("train", "test")  # the 5 shots come from train, the questions from test
NUM_FEWSHOT = 5


def task_config(data_dir: Path | None) -> dict[str, Any]:
    """The shipped task; with data_dir, read from its train.jsonl/test.jsonl instead of the hub."""
    config = yaml.safe_load(TASK_YAML.read_text())
    if data_dir is None:
        return config
    files = {split: data_dir / f"{split}.jsonl" for split in SPLITS}
    missing = [str(f) for f in files.values() if not f.is_file()]
    if missing:
        raise LaunchError(
            f"--data-dir {data_dir} lacks {', '.join(missing)}",
            hint="point it at a folder with GSM8K's train.jsonl and test.jsonl (fields question, answer)",
        )
    config.update(
        dataset_path="json",
        dataset_name=None,
        dataset_kwargs={"data_files": {split: str(f.resolve()) for split, f in files.items()}},
    )
    return config


def main(args: argparse.Namespace, target: Target) -> int:
    s = dataclasses.replace(harness.settings(args, target), num_fewshot=NUM_FEWSHOT)
    out_dir = args.output
    config = task_config(args.data_dir)
    server.check(target)
    lm_results, journal = harness.run(config, target, s, out_dir)
    metrics = harness.task_metrics(lm_results, "gsm8k")
    samples = harness.sample_records(lm_results, journal)
    verdict = results.judge(target.recipe, "gsm8k", metrics, questions=len(samples))
    run_config = harness.run_config(
        "gsm8k (eval/tasks/gsm8k.yaml, InferenceX's)", target, s, journal, lm_results,
        data=str(args.data_dir) if args.data_dir else "openai/gsm8k main (hub)",
    )
    results.write(
        out_dir,
        f"GSM8K — {run_config['recipe'] or target.base_url}",
        run_config,
        metrics,
        verdict,
        {"samples": samples},
    )
    return verdict.exit_code

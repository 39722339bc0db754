"""MMLU-Pro as card 001 reports it: lm-eval's stock `mmlu_pro` group (5-shot chain of thought, the answer
letter read by its custom-extract filter), through the same chat-completions path as GSM8K."""

from __future__ import annotations

import argparse

from eval import harness, results, server
from eval.server import Target

TASK = "mmlu_pro"


def main(args: argparse.Namespace, target: Target) -> int:
    s = harness.settings(args, target)
    server.check(target)
    lm_results, journal = harness.run(TASK, target, s, args.output)
    metrics = harness.task_metrics(lm_results, TASK)
    samples = harness.sample_records(lm_results, journal)
    verdict = results.judge(target.recipe, TASK, metrics, questions=len(samples))
    run_config = harness.run_config(
        f"{TASK} (lm-eval stock, hub dataset TIGER-Lab/MMLU-Pro)", target, s, journal, lm_results
    )
    title = f"MMLU-Pro — {run_config['recipe'] or target.base_url}"
    results.write(args.output, title, run_config, metrics, verdict, {"samples": samples})
    return verdict.exit_code

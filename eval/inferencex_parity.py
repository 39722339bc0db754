"""python -m eval.inferencex_parity --base-url URL --model NAME --inferencex DIR --data-dir GSM8K [--limit 50]

Does `python -m eval gsm8k` score a server exactly as InferenceX does? Runs both against the same server and
questions and compares them question by question:

* ours: `python -m eval gsm8k --think --max-tokens M` (InferenceX sends no `enable_thinking`, so the chat
  template's default, thinking on, is what it asks for);
* InferenceX: the lm-eval command line of `run_lm_eval` (benchmarks/benchmark_lib.sh) with its
  `utils/evals/gsm8k.yaml` and its `utils/evals/patches/lm_eval_sitecustomize.py` on PYTHONPATH, taken
  unchanged from a checkout at DIR, except that the task reads GSM8K from --data-dir instead of the hub.
  `max_tokens` is InferenceX's own rule: the context length minus 4096 (half of it when smaller).

Differences by design, which this comparison removes: `python -m eval gsm8k` sends the recipe's
`eval.think` (the cards score with thinking off) and the recipe's `eval.max_tokens`; InferenceX leaves
thinking to the template and sizes the answer from the context length. lm-eval is the installed one on both
sides (InferenceX pins lm-eval b315ef3; this repository pins 0.4.13).

Prints a table (score by metric, questions whose answer, extraction or verdict differ) and writes
parity.json; exit 0 when every question matches.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from launch.server import repo_python_path

TASK_YAML = Path("utils/evals/gsm8k.yaml")
SITECUSTOMIZE = Path("utils/evals/patches/lm_eval_sitecustomize.py")
FILTERS = ("strict-match", "flexible-extract")


def inferencex_max_tokens(context_len: int) -> int:
    """benchmark_lib.sh run_lm_eval: `eval_context_len > 4096 ? eval_context_len - 4096 : eval_context_len / 2`,
    capped at 16384."""
    return min(context_len - 4096 if context_len > 4096 else context_len // 2, 16384)


def _local_task(inferencex: Path, data_dir: Path, out: Path) -> Path:
    task = yaml.safe_load((inferencex / TASK_YAML).read_text())
    files = {split: str((data_dir / f"{split}.jsonl").resolve()) for split in ("train", "test")}
    task.update(dataset_path="json", dataset_name=None, dataset_kwargs={"data_files": files})
    path = out / "gsm8k.yaml"
    path.write_text(yaml.safe_dump(task, sort_keys=False))
    return path


def inferencex_command(args: argparse.Namespace, task: Path, out: Path) -> list[str]:
    """run_lm_eval's lm_eval invocation, flag for flag (benchmark_lib.sh at InferenceX 843c6254f)."""
    model_args = (f"model={args.model},base_url={args.base_url}/v1/chat/completions,api_key=EMPTY,eos_string=</s>,"
                  f"max_retries=5,num_concurrent={args.concurrency},timeout=1800,tokenized_requests=False,"
                  f"max_length={args.context_len}")  # fmt: skip
    return [sys.executable, "-m", "lm_eval", "--model", "local-chat-completions", "--apply_chat_template",
            "--tasks", str(task), "--output_path", str(out), "--log_samples", "--model_args", model_args,
            "--gen_kwargs", f"max_tokens={inferencex_max_tokens(args.context_len)},temperature=0,top_p=1",
            "--limit", str(args.limit)]  # fmt: skip


def ours_command(args: argparse.Namespace, out: Path) -> list[str]:
    return [sys.executable, "-m", "eval", "gsm8k", "--base-url", args.base_url, "--model", args.model,
            "--data-dir", str(args.data_dir), "--limit", str(args.limit), "--think",
            "--max-tokens", str(inferencex_max_tokens(args.context_len)), "--concurrency", str(args.concurrency),
            "--output", str(out)]  # fmt: skip


def _run(command: list[str], log: Path, env: dict[str, str]) -> None:
    with log.open("w") as handle:
        done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, **env})
    if done.returncode not in (0, 3):  # 3: `python -m eval` ran, the score is off the (absent) expectation
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise SystemExit(f"error: {command[2]} exited {done.returncode}; {log}:\n{tail}")


def read_ours(out: Path) -> dict[int, dict[str, Any]]:
    doc = json.loads((out / "results.json").read_text())
    return {s["doc_id"]: {"response": s["response"]["content"] or s["response"]["reasoning_content"] or "",
                          **{f: (s["filters"][f]["extracted"], s["filters"][f]["correct"]) for f in FILTERS}}
            for s in doc["samples"]}  # fmt: skip


def read_inferencex(out: Path) -> dict[int, dict[str, Any]]:
    (samples,) = out.rglob("samples_gsm8k_*.jsonl")
    found: dict[int, dict[str, Any]] = {}
    for line in samples.read_text().splitlines():
        sample = json.loads(line)
        record = found.setdefault(sample["doc_id"], {"response": sample["resps"][0][0]})
        extracted = sample["filtered_resps"][0] if sample["filtered_resps"] else None
        record[sample["filter"]] = (extracted, bool(sample["exact_match"]))
    return found


def compare(ours: dict[int, dict], theirs: dict[int, dict]) -> dict[str, Any]:
    questions = sorted(set(ours) | set(theirs))
    differ = {field: [q for q in questions if (ours.get(q) or {}).get(field) != (theirs.get(q) or {}).get(field)]
              for field in ("response", *FILTERS)}  # fmt: skip
    score = {side: {f: 100 * sum(rows[q][f][1] for q in rows) / max(len(rows), 1) for f in FILTERS}
             for side, rows in (("ours", ours), ("inferencex", theirs))}  # fmt: skip
    return {"questions": len(questions), "differ": differ, "score": score,
            "identical": not any(differ.values()) and set(ours) == set(theirs)}  # fmt: skip


def print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"GSM8K, {report['questions']} questions: python -m eval gsm8k vs InferenceX's lm_eval command")
    for column in ("", "python -m eval gsm8k", "InferenceX", "questions that differ"):
        table.add_column(column)
    for f in FILTERS:
        table.add_row(f"exact_match,{f}", f"{report['score']['ours'][f]:.2f}", f"{report['score']['inferencex'][f]:.2f}",
                      str(len(report["differ"][f])))  # fmt: skip
    table.add_row("answer text", "", "", str(len(report["differ"]["response"])))
    Console(width=140).print(table)
    print("PARITY: identical answers, extractions and verdicts" if report["identical"] else
          f"DIFFER: {json.dumps(report['differ'])}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.inferencex_parity", description=__doc__.split("\n\n")[1])
    p.add_argument("--base-url", required=True)
    p.add_argument("--model", required=True, help="served model name")
    p.add_argument("--inferencex", type=Path, required=True, help="an InferenceX checkout (its utils/evals/ is read)")
    p.add_argument("--data-dir", type=Path, required=True, help="GSM8K train.jsonl and test.jsonl")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--context-len", type=int, default=4608, help="InferenceX's EVAL_MAX_MODEL_LEN (default 4608: 512 answer tokens)")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "runs")) / "inferencex-parity")
    args = p.parse_args(argv)
    missing = [str(args.inferencex / f) for f in (TASK_YAML, SITECUSTOMIZE) if not (args.inferencex / f).is_file()]
    missing += [str(args.data_dir / f) for f in ("train.jsonl", "test.jsonl") if not (args.data_dir / f).is_file()]
    if missing:
        p.error(f"missing {', '.join(missing)}: --inferencex is an InferenceX checkout, --data-dir GSM8K's jsonl files")
    args.base_url = args.base_url.rstrip("/")
    args.out.mkdir(parents=True, exist_ok=True)
    patch = args.out / "inferencex-patch"
    patch.mkdir(exist_ok=True)
    (patch / "sitecustomize.py").write_text((args.inferencex / SITECUSTOMIZE).read_text())
    offline = {"HF_DATASETS_OFFLINE": "1", "OPENAI_API_KEY": "EMPTY"}
    _run(ours_command(args, args.out / "ours"), args.out / "ours.log", {**offline, "PYTHONPATH": repo_python_path()})
    task = _local_task(args.inferencex, args.data_dir, args.out)
    pythonpath = os.pathsep.join([str(patch), repo_python_path()])
    _run(inferencex_command(args, task, args.out / "inferencex"), args.out / "inferencex.log", {**offline, "PYTHONPATH": pythonpath})
    report = compare(read_ours(args.out / "ours"), read_inferencex(args.out / "inferencex"))
    (args.out / "parity.json").write_text(json.dumps(report, indent=2) + "\n")
    print_report(report)
    return 0 if report["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())

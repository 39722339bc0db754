"""Run an lm-eval generation task against the server the way InferenceX does, and keep every answer.

InferenceX (benchmarks/benchmark_lib.sh, run_lm_eval) runs
  lm_eval --model local-chat-completions --apply_chat_template --model_args ...,tokenized_requests=False
          --gen_kwargs max_tokens=N,temperature=0,top_p=1
at an lm-eval commit whose CLI turns on fewshot_as_multiturn with --apply_chat_template; this is the same
call through `lm_eval.simple_evaluate`, with fewshot_as_multiturn spelled out.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import requests

from eval.chat_model import JournaledChatCompletions, ServerReplyError
from eval.journal import JOURNAL_NAME, Journal
from eval.results import Metric
from eval.server import Target
from launch.errors import LaunchError


@dataclass(frozen=True)
class Settings:
    max_tokens: int
    concurrency: int
    think: bool
    limit: int | None = None
    num_fewshot: int | None = None  # None: the task's own
    max_retries: int = 5
    timeout_s: int = 1800

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def settings(args: Any, target: Target) -> Settings:
    """Command-line values, else the recipe's `eval` section."""
    defaults = target.recipe.recipe.eval if target.recipe else None
    pick = lambda given, field: given if given is not None else getattr(defaults, field, None)  # noqa: E731
    values = {f: pick(getattr(args, f), f) for f in ("max_tokens", "concurrency", "think")}
    missing = [f"--{f.replace('_', '-')}" for f, v in values.items() if v is None]
    if missing:
        raise LaunchError(f"no recipe to take {', '.join(missing)} from", hint="pass --recipe or those options")
    return Settings(**values, limit=args.limit, max_retries=args.max_retries, timeout_s=args.timeout)


def chat_model(target: Target, journal: Journal, s: Settings) -> JournaledChatCompletions:
    return JournaledChatCompletions(
        journal=journal,
        enable_thinking=s.think,
        model=target.model,
        base_url=f"{target.base_url}/v1/chat/completions",
        tokenizer_backend=None,
        tokenized_requests=False,
        eos_string="</s>",
        num_concurrent=s.concurrency,
        max_retries=s.max_retries,
        timeout=s.timeout_s,
        header={"Authorization": f"Bearer {target.api_key}"} if target.api_key else None,
    )


def evaluate_kwargs(task: str | dict[str, Any], s: Settings) -> dict[str, Any]:
    return {
        "tasks": [task],
        "num_fewshot": s.num_fewshot,
        "apply_chat_template": True,
        "fewshot_as_multiturn": True,
        "gen_kwargs": {"max_tokens": s.max_tokens, "temperature": 0, "top_p": 1},
        "limit": s.limit,
        "log_samples": True,
    }


def run(task: str | dict[str, Any], target: Target, s: Settings, out_dir: Path) -> tuple[dict[str, Any], Journal]:
    import lm_eval
    from lm_eval.tasks import TaskManager

    journal = Journal(out_dir / JOURNAL_NAME)
    if journal.answers:
        print(f"resuming: {len(journal.answers)} answers in {journal.path} are not asked again")
    try:
        results = lm_eval.simple_evaluate(
            model=chat_model(target, journal, s), task_manager=TaskManager(), **evaluate_kwargs(task, s)
        )
    except (ServerReplyError, aiohttp.ClientError, asyncio.TimeoutError, requests.RequestException) as err:
        _close_progress_bars()
        detail = str(err) or type(err).__name__
        if isinstance(err, (asyncio.TimeoutError, requests.Timeout)):
            detail = f"no answer within {s.timeout_s}s (--timeout)"
        kept = (f"{len(journal.answers)} answers are kept in {journal.path}; fix the server, then rerun with --resume {out_dir} "
                "to send only the rest") if journal.answers else "no answer came back; fix the server, then rerun"  # fmt: skip
        raise LaunchError(f"requests to {target.base_url} kept failing ({s.max_retries} tries): {detail}", hint=kept) from None
    finally:
        journal.close()
    return results, journal


def _close_progress_bars() -> None:
    # lm-eval's "Requesting API" bar is left open when a request fails; closed, it ends its line, so the
    # error starts on a line of its own and no bar is redrawn after it.
    from tqdm import tqdm

    for bar in list(tqdm._instances):
        bar.close()


def run_config(task: str, target: Target, s: Settings, journal: Journal, results: dict[str, Any],
               **described: Any) -> dict[str, Any]:
    """What a chat-completions lm-eval run was asked to do, for results.json and summary.md."""
    return {
        "recipe": target.recipe.name if target.recipe else None,
        "base_url": target.base_url,
        "model": target.model,
        "task": task,
        **described,
        "apply_chat_template": True,
        "fewshot_as_multiturn": True,
        "temperature": 0,
        "top_p": 1,
        **s.as_dict(),
        "answers_reused_from_journal": journal.reused,
        "lm_eval_version": results.get("lm_eval_version"),
    }


def task_metrics(results: dict[str, Any], task: str) -> dict[str, Metric]:
    """lm-eval's numbers for `task` ('exact_match,strict-match', ...), as percentages like the cards."""
    row = results["results"][task]
    return {
        key: Metric(100 * value, None if row.get(stderr) in (None, "N/A") else 100 * row[stderr])
        for key, value in row.items()
        if isinstance(value, float) and "_stderr," not in key
        for stderr in [key.replace(",", "_stderr,", 1)]
    }


def sample_records(results: dict[str, Any], journal: Journal) -> list[dict[str, Any]]:
    """One record per question: the messages sent, the server's whole answer, and per filter the extracted
    answer and whether lm-eval scored it correct (lm-eval logs one sample per question and filter)."""
    replies = {_messages_key(r.get("messages")): journal.answers[k] for k, r in journal.requests.items()}
    records: dict[tuple[str, int], dict[str, Any]] = {}
    for task, samples in results.get("samples", {}).items():
        for sample in samples:
            record = records.get((task, sample["doc_id"]))
            if record is None:
                prompt = sample["arguments"][0][0]  # lm-eval's JsonChatStr, a 1-tuple: the chat as JSON text
                messages = json.loads(prompt if isinstance(prompt, str) else prompt[0])
                choice = (replies.get(_messages_key(messages)) or {}).get("choices", [{}])[0]
                message = choice.get("message") or {}
                record = records[(task, sample["doc_id"])] = {
                    "task": task,
                    "doc_id": sample["doc_id"],
                    "doc": sample["doc"],
                    "messages": messages,
                    "response": {
                        "content": message.get("content"),
                        "reasoning_content": message.get("reasoning_content"),
                        "finish_reason": choice.get("finish_reason"),
                    },
                    "target": sample["target"],
                    "filters": {},
                }
            metric = sample["metrics"][0]
            record["filters"][sample["filter"]] = {
                "extracted": sample["filtered_resps"][0] if sample["filtered_resps"] else None,
                "correct": bool(sample[metric]),
            }
    return list(records.values())


def _messages_key(messages: Any) -> str:
    return json.dumps(messages, sort_keys=True, ensure_ascii=False)

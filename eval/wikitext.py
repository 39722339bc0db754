"""Wikitext-2 perplexity through the server, scored like lm-eval's `wikitext` task.

lm-eval's task is document level: each article is detokenized, cut into rolling windows of the model's
context (lm_eval.utils.get_rolling_token_windows, a prefix token before the first window, one token of
context carried over), and every token's log-probability is summed per document. word_perplexity is
exp(-Σ logprob / Σ words), words counted in the original article as lm-eval does. We do the same against
SGLang's native API: /tokenize for token ids, /v1/models for the context length, and /generate with
return_logprob, logprob_start_len 0 and max_new_tokens 0 for the prompt's per-token log-probabilities.
"""

from __future__ import annotations

import argparse
import math
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from lm_eval.api.metrics import bits_per_byte, weighted_perplexity
from lm_eval.tasks.wikitext.preprocess_wikitext import wikitext_detokenizer
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from eval import results, server
from eval.results import Metric
from eval.server import Target
from launch.errors import LaunchError

TASK = "wikitext2"  # the name recipes use in `expected`
RAW_FILE = "wiki.test.raw"  # the test split of wikitext-2-raw-v1 as published
# The Qwen3.5 tokenizer's EOS, which lm-eval puts before each document (its prefix_token_id)
DEFAULT_PREFIX_TOKEN = "<|im_end|>"
# An article starts at a top-level heading line " = Title = " (sections are " = = Section = = ")
ARTICLE_HEADING = re.compile(r"^ = [^=].* = $")


@dataclass(frozen=True)
class DocumentScore:
    loglikelihood: float
    tokens: int
    words: int
    bytes: int


def split_articles(raw: str) -> list[str]:
    """wiki.test.raw -> one string per article, as in EleutherAI/wikitext_document_level."""
    articles: list[list[str]] = []
    for line in raw.splitlines(keepends=True):
        if ARTICLE_HEADING.match(line.rstrip("\n")) or not articles:
            articles.append([])
        articles[-1].append(line)
    return ["".join(lines) for lines in articles if "".join(lines).strip()]


def load_articles(data_dir: Path | None) -> list[str]:
    if data_dir is None:
        import datasets

        try:
            return list(datasets.load_dataset("EleutherAI/wikitext_document_level", "wikitext-2-raw-v1", split="test")["page"])
        except OSError as err:  # offline, or the hub refused: datasets raises ConnectionError
            raise LaunchError(f"cannot fetch wikitext-2 from the hub: {err}", hint="pass --data-dir with wikitext-2-raw-v1's wiki.test.raw") from None
    path = data_dir / RAW_FILE
    if not path.is_file():
        raise LaunchError(f"--data-dir {data_dir} has no {RAW_FILE}", hint="point it at wikitext-2-raw-v1 (wiki.test.raw)")
    return split_articles(path.read_text())


def tokenize(target: Target, text: str) -> list[int]:
    return server.get_json(f"{target.base_url}/tokenize", {"model": target.model, "prompt": text, "add_special_tokens": False}, api_key=target.api_key)["tokens"]


def context_length(target: Target) -> int:
    """The server's context length. SGLang lists it as max_model_len in /v1/models; /tokenize's
    max_model_len is the tokenizer's model_max_length, which can exceed a --context-length the server runs
    with (the tiny fixture: 32768 vs 8192), so it is only the answer for servers that list none."""
    listing = server.get_json(f"{target.base_url}/v1/models", api_key=target.api_key)
    listed = next((m.get("max_model_len") for m in listing.get("data", []) if m.get("id") == target.model), None)
    if listed:
        return listed
    return server.get_json(f"{target.base_url}/tokenize", {"model": target.model, "prompt": "", "add_special_tokens": False}, api_key=target.api_key)["max_model_len"]


def longest_prompt(target: Target) -> int:
    """The most tokens one /generate prompt may hold: one less than SGLang's `max_req_input_len` from
    /server_info (its context minus a few reserved tokens: 8186 of 8192; the scheduler refuses a prompt of
    that length or more), else one less than the context length."""
    try:
        info = server.get_json(f"{target.base_url}/server_info", api_key=target.api_key)
    except LaunchError:  # not SGLang, or an SGLang without the endpoint
        info = {}
    limit = info.get("max_req_input_len") or context_length(target)
    return limit - 1


def window_loglikelihood(target: Target, context: list[int], continuation: list[int]) -> float:
    body = {
        "input_ids": context + continuation,
        "sampling_params": {"max_new_tokens": 0, "temperature": 0},
        "return_logprob": True,
        "logprob_start_len": 0,
    }
    logprobs = server.get_json(f"{target.base_url}/generate", body, timeout=600, api_key=target.api_key)["meta_info"]["input_token_logprobs"]
    return sum(entry[0] for entry in logprobs[-len(continuation) :])


def score_document(target: Target, page: str, prefix_token: int, max_seq_len: int) -> DocumentScore:
    tokens = tokenize(target, wikitext_detokenizer({"page": page}))
    windows = map(make_disjoint_window, get_rolling_token_windows(tokens, prefix_token, max_seq_len, 1))
    loglikelihood = sum(window_loglikelihood(target, ctx, cont) for ctx, cont in windows)
    # words and bytes of the article before detokenization, as lm-eval's process_results counts them
    return DocumentScore(loglikelihood, len(tokens), len(re.split(r"\s+", page)), len(page.encode("utf-8")))


def perplexities(scores: list[DocumentScore]) -> dict[str, Metric]:
    total_ll = sum(s.loglikelihood for s in scores)
    return {
        "word_perplexity": Metric(weighted_perplexity([(s.loglikelihood, s.words) for s in scores])),
        "byte_perplexity": Metric(weighted_perplexity([(s.loglikelihood, s.bytes) for s in scores])),
        "bits_per_byte": Metric(bits_per_byte([(s.loglikelihood, s.bytes) for s in scores])),
        "token_perplexity": Metric(math.exp(-total_ll / sum(s.tokens for s in scores))),
    }


def main(args: argparse.Namespace, target: Target) -> int:
    local = load_articles(args.data_dir) if args.data_dir is not None else None  # a bad --data-dir first
    server.check(target)  # before the hub is asked for the dataset
    articles = (local if local is not None else load_articles(None))[: args.limit]
    prefix_ids = tokenize(target, args.prefix_token)
    max_model_len = context_length(target)
    max_prompt = longest_prompt(target)
    if len(prefix_ids) != 1:
        raise LaunchError(f"--prefix-token {args.prefix_token!r} is {len(prefix_ids)} tokens, not one", hint="pass the tokenizer's EOS or BOS")
    # A window is sent whole: max_seq_len scored tokens plus the one token of context before them.
    max_seq_len = max_prompt - 1
    concurrency = args.concurrency or (target.recipe.recipe.eval.concurrency if target.recipe else 8)
    with ThreadPoolExecutor(concurrency) as pool:
        jobs = pool.map(lambda page: score_document(target, page, prefix_ids[0], max_seq_len), articles)
        scores = list(tqdm(jobs, total=len(articles), desc="wikitext documents"))
    metrics = perplexities(scores)
    verdict = results.judge(target.recipe, TASK, metrics)
    config = {
        "recipe": target.recipe.name if target.recipe else None,
        "base_url": target.base_url,
        "model": target.model,
        "data": str(args.data_dir) if args.data_dir else "EleutherAI/wikitext_document_level wikitext-2-raw-v1 test (hub)",
        "documents": len(scores),
        "tokens": sum(s.tokens for s in scores),
        "server_context_length": max_model_len,
        "window_tokens": max_seq_len,
        "prefix_token": args.prefix_token,
        "concurrency": concurrency,
    }
    per_document = [vars(s) for s in scores]
    title = f"wikitext-2 perplexity — {config['recipe'] or target.base_url}"
    results.write(args.output, title, config, metrics, verdict, {"documents": per_document})
    return verdict.exit_code

"""python -m eval TASK — reproduce a recipe's published numbers against its running server.

  python -m eval gsm8k --recipe R [--limit N]          GSM8K 5-shot, InferenceX's recipe; verdict vs the card
  python -m eval mmlu-pro --recipe R                   lm-eval's mmlu_pro; verdict vs the card
  python -m eval wikitext --recipe R                   wikitext-2 word/token perplexity; verdict vs the card
  python -m eval speed --recipe A [--baseline-recipe B] --concurrency 1,2,4,8
  python -m eval chat --recipe R [PROMPT]              stream a chat (reasoning dim), or a REPL without PROMPT

The server is the one `python -m launch R` started (the recipe's host and port) unless --base-url says
otherwise. Exit codes: 0 done (inside tolerance, or nothing to compare), 1 error, 2 usage,
3 score outside the recipe's expected tolerance.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from eval import arguments, results, server
from eval.journal import JOURNAL_NAME  # not eval.harness: `speed` runs without lm-eval
from eval.speed import SHAPES, concurrency_list, shape_list
from launch.errors import LaunchError

COMMANDS = {  # subcommand -> module with main(args, target)
    "gsm8k": "eval.gsm8k",
    "mmlu-pro": "eval.mmlu_pro",
    "wikitext": "eval.wikitext",
    "speed": "eval.speed",
    "chat": "eval.chat",
}


def _server_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", help="recipe name or YAML path: server address, model name, defaults, expected score")
    p.add_argument("--base-url", help="server to evaluate (default: http://HOST:PORT from the recipe)")
    p.add_argument("--model", help="served model name (default: the recipe's model.served_name)")


def _output_options(p: argparse.ArgumentParser, resumable: bool) -> None:
    p.add_argument("--output", type=Path, help="output folder (default: runs/eval/RECIPE-TASK-TIMESTAMP/)")
    if resumable:
        p.add_argument("--resume", type=Path, metavar="DIR",
                       help="continue an interrupted run in DIR: answers in DIR/responses.jsonl are not asked again")


def _lm_eval_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--limit", type=int, help="only the first N questions")
    p.add_argument("--think", action=argparse.BooleanOptionalAction, default=None,
                   help="chat_template_kwargs.enable_thinking (default: the recipe's eval.think)")
    p.add_argument("--concurrency", type=int, help="requests in flight (default: the recipe's eval.concurrency)")
    p.add_argument("--max-tokens", type=int, help="generation budget per answer (default: the recipe's eval.max_tokens)")
    p.add_argument("--max-retries", type=int, default=5, help="tries per request before giving up (default 5)")
    p.add_argument("--timeout", type=int, default=1800, help="seconds to wait for one answer (default 1800)")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = top.add_subparsers(dest="command", required=True, metavar="{" + ",".join(COMMANDS) + "}")

    p = sub.add_parser("gsm8k", help="GSM8K 5-shot through lm-eval (InferenceX's task)")
    _server_options(p)
    _lm_eval_options(p)
    _output_options(p, resumable=True)
    p.add_argument("--data-dir", type=Path, help="folder with GSM8K train.jsonl and test.jsonl (default: hub openai/gsm8k)")

    p = sub.add_parser("mmlu-pro", help="MMLU-Pro through lm-eval's mmlu_pro task")
    _server_options(p)
    _lm_eval_options(p)
    _output_options(p, resumable=True)

    p = sub.add_parser("wikitext", help="wikitext-2 perplexity from the server's prompt log-probabilities")
    _server_options(p)
    _output_options(p, resumable=False)
    p.add_argument("--data-dir", type=Path, help="folder with wikitext-2-raw-v1's wiki.test.raw (default: the hub)")
    p.add_argument("--limit", type=int, help="only the first N documents")
    p.add_argument("--concurrency", type=int, help="documents in flight (default: the recipe's eval.concurrency)")
    p.add_argument("--prefix-token", default="<|im_end|>", help="token put before each document (lm-eval: EOS)")

    p = sub.add_parser("speed", help="throughput sweep with sglang.bench_serving, optionally vs a baseline")
    _server_options(p)
    _output_options(p, resumable=False)
    p.add_argument("--concurrency", type=concurrency_list, default=[1, 2, 4, 8, 16, 32, 64], help="e.g. 1,2,4,8 (default 1..64)")
    p.add_argument("--shapes", type=shape_list, default=SHAPES, metavar="inN-outM,...",
                   help="prompt shapes: input and output tokens per request (default card 003's in4000-out200,in512-out128)")
    p.add_argument("--baseline-recipe", help="the unquantized recipe, served on another port")
    p.add_argument("--baseline-base-url", help="baseline server (default: from --baseline-recipe)")
    p.add_argument("--baseline-model", help="baseline served model name (default: from --baseline-recipe)")
    p.add_argument("--backend", default="sglang-oai", choices=["sglang-oai", "sglang"], help="bench_serving backend")
    p.add_argument("--dataset", default="random", choices=["random", "random-ids"],
                   help="random: ShareGPT text cut to length (needs --dataset-path offline); random-ids: random token ids")
    p.add_argument("--dataset-path", type=Path, help="ShareGPT JSON for --dataset random (default: bench_serving downloads it)")
    p.add_argument("--tokenizer", help="tokenizer path for bench_serving (default: the recipe's checkpoint or fixture)")
    p.add_argument("--seed", type=int, default=1, help="bench_serving's prompt sampling seed")
    p.add_argument("--timeout", type=float, default=1800,
                   help="seconds one bench_serving run (one point) may take before it is stopped and reported (default 1800)")

    p = sub.add_parser("chat", help="chat with the server (OpenAI SDK, streaming)")
    _server_options(p)
    p.add_argument("--think", action=argparse.BooleanOptionalAction, default=None, help="enable_thinking (default: the server's)")
    p.add_argument("prompt", nargs="?", help="ask once and exit; without it, an interactive chat")
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        arguments.check(args)
        target = server.resolve(args.recipe, args.base_url, args.model, ask_server=args.command == "chat")
        if getattr(args, "resume", None) is not None:
            if not (args.resume / JOURNAL_NAME).is_file():
                raise LaunchError(f"--resume {args.resume}: no {JOURNAL_NAME} there", hint="pass the folder of the interrupted run")
            args.output = args.resume
        elif getattr(args, "output", None) is not None and (args.output / JOURNAL_NAME).exists():
            raise LaunchError(
                f"{args.output} already holds a run", hint=f"continue it with --resume {args.output}, or pick another --output"
            )
        if "output" in args:
            args.output = results.output_dir(args.output, target.recipe.name if target.recipe else None, args.command)
        return importlib.import_module(COMMANDS[args.command]).main(args, target)
    except LaunchError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code


if __name__ == "__main__":
    sys.exit(main())

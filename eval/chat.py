"""A terminal chat with the server through the official OpenAI SDK, streaming; the model's reasoning
(SGLang's reasoning_content) is shown dim, apart from the answer."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import openai
from rich.console import Console

from eval import server
from eval.server import Target

console = Console(highlight=False)


def stream_reply(client: Any, model: str, messages: list[dict[str, str]], think: bool | None) -> str:
    extra = {} if think is None else {"chat_template_kwargs": {"enable_thinking": think}}
    stream = client.chat.completions.create(model=model, messages=messages, stream=True, extra_body=extra)
    answer: list[str] = []
    in_reasoning = False
    for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        reasoning = getattr(delta, "reasoning_content", None) or (delta.model_extra or {}).get("reasoning_content")
        if reasoning:
            in_reasoning = True
            console.print(reasoning, style="dim", end="")
        if delta.content:
            if in_reasoning:
                console.print()
                in_reasoning = False
            answer.append(delta.content)
            console.print(delta.content, end="")
    console.print()
    return "".join(answer)


def main(args: argparse.Namespace, target: Target) -> int:
    model = target.model
    client = openai.OpenAI(base_url=f"{target.base_url}/v1", api_key=target.api_key or "EMPTY", max_retries=1)
    messages: list[dict[str, str]] = []
    try:
        if args.prompt:
            stream_reply(client, model, [{"role": "user", "content": args.prompt}], args.think)
            return 0
        server.check(target)  # before the first prompt, not after the user has typed a question
        console.print(f"[bold]{model}[/] at {target.base_url} — Ctrl-D or Ctrl-C to leave")
        while True:
            messages.append({"role": "user", "content": input("> ")})
            messages.append({"role": "assistant", "content": stream_reply(client, model, messages, args.think)})
    except (EOFError, KeyboardInterrupt):
        console.print()
        return 0
    except openai.OpenAIError as err:  # connection and HTTP errors: one line, not a traceback
        print(f"error: {target.base_url}: {err}", file=sys.stderr)
        return 1

"""lm-eval's `local-chat-completions` model, with every answer journaled and thinking switchable.

Requests are built by lm-eval exactly as for `--model local-chat-completions`; this subclass only changes
how a request reaches the server: it looks the exact body up in the run's journal first (resume), records
each new answer before using it, and turns bad replies (HTTP errors, non-JSON) into `ServerReplyError`,
which lm-eval's retry loop retries and the harness reports.
"""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

import requests
from lm_eval.models.openai_completions import LocalChatCompletion

from eval.journal import Journal


class ServerReplyError(Exception):
    pass


def decode_reply(url: str, status: int, text: str) -> dict[str, Any]:
    if status >= 400:
        raise ServerReplyError(f"{url} answered HTTP {status}: {text[:300]}")
    try:
        reply = json.loads(text)
    except json.JSONDecodeError:
        raise ServerReplyError(f"{url} answered HTTP {status} with a body that is not JSON: {text[:200]!r}") from None
    if not isinstance(reply, dict) or not isinstance(reply.get("choices"), list):
        raise ServerReplyError(f"{url} answered without 'choices': {text[:200]!r}")
    return reply


def answer_text(message: dict[str, Any]) -> str:
    # InferenceX's lm-eval patch (utils/evals/patches/lm_eval_sitecustomize.py): when a thinking model spends
    # its whole budget reasoning, content is empty and the reasoning is scored instead.
    return message.get("content") or message.get("reasoning_content") or ""


class JournaledChatCompletions(LocalChatCompletion):
    def __init__(self, *, journal: Journal, enable_thinking: bool | None, **kwargs: Any):
        super().__init__(**kwargs)
        self.journal = journal
        self.enable_thinking = enable_thinking

    def _create_payload(self, messages: list[dict], **kwargs: Any) -> dict:
        payload = super()._create_payload(messages, **kwargs)
        if self.enable_thinking is not None:
            payload["chat_template_kwargs"] = {"enable_thinking": self.enable_thinking}
        return payload

    def _body(self, messages: Any, generate: bool, gen_kwargs: dict | None) -> dict[str, Any]:
        # eos is passed on both paths (stock lm-eval passes it only on the synchronous one) so that a
        # resumed run finds its answers whatever --concurrency it uses.
        return self._create_payload(
            self.create_message(messages),
            generate=generate,
            gen_kwargs=copy.deepcopy(gen_kwargs),
            seed=self._seed,
            eos=self.eos_string,
        )

    @staticmethod
    def parse_generations(outputs: dict | list[dict], **kwargs: Any) -> list[str]:
        replies = outputs if isinstance(outputs, list) else [outputs]
        return [
            answer_text(choice.get("message") or {})
            for reply in replies
            for choice in sorted(reply["choices"], key=lambda c: c.get("index", 0))
        ]

    def model_call(self, messages: Any, *, generate: bool = True, gen_kwargs: dict | None = None, **kwargs: Any) -> dict:
        body = self._body(messages, generate, gen_kwargs)
        reply = self.journal.lookup(body)
        if reply is None:
            response = requests.post(self.base_url, json=body, headers=self.header, timeout=self.timeout)
            reply = decode_reply(self.base_url, response.status_code, response.text)
            self.journal.record(body, reply)
        return reply

    async def get_batched_requests(self, *args: Any, **kwargs: Any) -> list:
        # lm-eval runs one task per request and, when one fails for good, leaves the rest retrying against the
        # dead server; each would end in a "Task exception was never retrieved" traceback. At the first failure
        # every other request is stopped and its outcome collected, so the harness reports the failure once.
        loop = asyncio.get_running_loop()
        stopped = False

        def quiet_once_stopped(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            if not (stopped and isinstance(context.get("exception"), Exception)):
                loop.default_exception_handler(context)

        loop.set_exception_handler(quiet_once_stopped)
        try:
            return await super().get_batched_requests(*args, **kwargs)
        except Exception:
            stopped = True
            others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)
            raise

    async def amodel_call(
        self,
        session: Any,
        sem: asyncio.Semaphore,
        messages: Any,
        *,
        generate: bool = True,
        gen_kwargs: dict | None = None,
        **kwargs: Any,
    ) -> list[str]:
        body = self._body(messages, generate, gen_kwargs)
        reply = self.journal.lookup(body)
        if reply is None:
            async with sem, session.post(self.base_url, json=body, headers=self.header) as response:
                reply = decode_reply(self.base_url, response.status, await response.text())
            self.journal.record(body, reply)
        return self.parse_generations(reply)

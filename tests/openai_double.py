"""An OpenAI-compatible stand-in for an SGLang server, for the eval tests.

It serves /health, /v1/models, /v1/chat/completions (streaming too), /tokenize and /generate on 127.0.0.1 at a
free port, records every request body it receives, refuses requests without its API key when given one (as
SGLang's --api-key does), and misbehaves on demand (HTTP 500s, malformed JSON, slow answers, dying mid-run) so
that tests can check what the eval tools do about it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# answer(messages) -> the assistant's content, or (reasoning_content, content)
Answerer = Callable[[list[dict[str, Any]]], "str | tuple[str, str]"]


@dataclass
class Faults:
    fail_after: int | None = None  # answer this many chat requests, then 500 for good
    fail_first: int = 0  # 500 for the first N chat requests, then answer
    malformed: bool = False  # 200 with a body that is not JSON
    delay_s: float = 0.0  # sleep before answering each chat request
    die_after: int | None = None  # answer this many chat requests, then hang up and stop listening (kill -9)


@dataclass
class OpenAIDouble:
    answer: Answerer
    model: str = "tiny-qwen3.5-moe"
    faults: Faults = field(default_factory=Faults)
    # /generate and /tokenize: a whitespace tokenizer whose vocabulary grows as words arrive, and a fixed
    # logprob per token id, so a test can compute the expected perplexity by hand.
    max_model_len: int = 4096
    max_req_input_len: int | None = None  # SGLang's /server_info field; None: no such endpoint
    logprob_of: Callable[[int], float] = lambda token_id: -1.0
    api_key: str | None = None  # as SGLang's --api-key: every request but /health must carry "Bearer KEY"
    chat_bodies: list[dict[str, Any]] = field(default_factory=list)
    refused: int = 0  # requests answered 401 for a missing or wrong key
    generate_bodies: list[dict[str, Any]] = field(default_factory=list)
    vocab: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._server = _QuietServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> OpenAIDouble:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def token_ids(self, text: str) -> list[int]:
        with self._lock:
            return [self.vocab.setdefault(word, len(self.vocab) + 1) for word in text.split(" ")]

    def _die(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _chat_reply(self, body: dict[str, Any]) -> tuple[int, bytes, str] | None:
        """(status, body, content type), or None: hang up without an answer."""
        with self._lock:
            self.chat_bodies.append(body)
            n = len(self.chat_bodies)
        faults = self.faults
        if faults.die_after is not None and n > faults.die_after:
            threading.Thread(target=self._die, daemon=True).start()
            return None
        if faults.delay_s:
            time.sleep(faults.delay_s)
        if n <= faults.fail_first or (faults.fail_after is not None and n > faults.fail_after):
            return 500, b'{"error": {"message": "injected failure"}}', "application/json"
        if faults.malformed:
            return 200, b"<html>not json", "text/html"
        if body.get("model") != self.model:
            message = f"The model `{body.get('model')}` does not exist."
            return 404, json.dumps({"object": "error", "message": message}).encode(), "application/json"
        reply = self.answer(body["messages"])
        reasoning, content = reply if isinstance(reply, tuple) else (None, reply)
        message = {"role": "assistant", "content": content, "reasoning_content": reasoning}
        data = {
            "id": f"chatcmpl-{n}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        }
        return 200, json.dumps(data).encode(), "application/json"

    def _stream_chunks(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        with self._lock:
            self.chat_bodies.append(body)
        reply = self.answer(body["messages"])
        reasoning, content = reply if isinstance(reply, tuple) else (None, reply)
        deltas = [{"role": "assistant", "content": ""}]
        deltas += [{"reasoning_content": piece} for piece in _pieces(reasoning or "")]
        deltas += [{"content": piece} for piece in _pieces(content)]
        chunks = [{"choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
        chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        for chunk in chunks:
            chunk.update(id="chatcmpl-s", object="chat.completion.chunk", created=0, model=self.model)
        return chunks

    def _generate(self, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.generate_bodies.append(body)
        ids = body["input_ids"]
        start = body.get("logprob_start_len", -1)
        logprobs = [[None if i == 0 else self.logprob_of(t), t, None] for i, t in enumerate(ids)][max(start, 0):]
        return {"text": "", "meta_info": {"prompt_tokens": len(ids), "input_token_logprobs": logprobs}}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        double = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _send(self, status: int, payload: bytes, content_type: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _authorized(self) -> bool:
                if double.api_key is None or self.headers.get("Authorization") == f"Bearer {double.api_key}":
                    return True
                with double._lock:
                    double.refused += 1
                self._send(401, b'{"error": {"message": "Invalid API Key"}}')
                return False

            def do_GET(self) -> None:
                if self.path == "/health":
                    self._send(200, b"")
                elif not self._authorized():
                    return
                elif self.path == "/v1/models":
                    models = {"object": "list", "data": [{"id": double.model, "object": "model", "owned_by": "sglang"}]}
                    self._send(200, json.dumps(models).encode())
                elif self.path == "/server_info" and double.max_req_input_len:
                    self._send(200, json.dumps({"max_req_input_len": double.max_req_input_len}).encode())
                else:
                    self._send(404, b'{"detail": "Not Found"}')

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if not self._authorized():
                    return
                if self.path == "/v1/chat/completions" and body.get("stream"):
                    self._stream(body)
                elif self.path == "/v1/chat/completions":
                    reply = double._chat_reply(body)
                    if reply is None:
                        self.close_connection = True
                    else:
                        self._send(*reply)
                elif self.path == "/tokenize":
                    tokens = double.token_ids(body["prompt"])
                    reply = {"tokens": tokens, "count": len(tokens), "max_model_len": double.max_model_len}
                    self._send(200, json.dumps(reply).encode())
                elif self.path == "/generate":
                    self._send(200, json.dumps(double._generate(body)).encode())
                else:
                    self._send(404, b'{"detail": "Not Found"}')

            def _stream(self, body: dict[str, Any]) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                for chunk in double._stream_chunks(body):
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.write(b"data: [DONE]\n\n")
                self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        return Handler


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that timed out and hung up is part of the tests, not news


def _pieces(text: str, size: int = 4) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]

"""The tiny recipe through the real launcher and real SGLang on a GPU: one command to a healthy server, an
OpenAI chat completion, and a clean stop of every server process on SIGTERM."""

import json
import os
import signal
import socket
import time
import urllib.request
from pathlib import Path

import pytest

from tests.gpu.conftest import start_launcher

pytestmark = pytest.mark.gpu


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return response.status, json.loads(response.read())


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_tiny_recipe_serves_chat_completions_and_stops_cleanly(tmp_path: Path):
    port = _free_port()
    launcher, _, ready_s = start_launcher("tiny-bf16", port, tmp_path)
    (record,) = tmp_path.glob("tiny-bf16-*/launch.json")
    server_pid = json.loads(record.read_text())["pid"]
    base = f"http://127.0.0.1:{port}"
    try:
        body = {"model": "tiny-qwen3.5-moe", "messages": [{"role": "user", "content": "What is 7*6?"}],
                "max_tokens": 32, "temperature": 0}
        status, first = _post(f"{base}/v1/chat/completions", body)
        _, second = _post(f"{base}/v1/chat/completions", body)
        assert status == 200
        assert first["choices"][0]["message"]["content"] is not None
        assert first["usage"]["completion_tokens"] > 0
        assert first["choices"][0]["message"]["content"] == second["choices"][0]["message"]["content"], "greedy differs"

        from openai import OpenAI

        client = OpenAI(base_url=f"{base}/v1", api_key="EMPTY")
        streamed = client.chat.completions.create(model="tiny-qwen3.5-moe", messages=body["messages"],
                                                  max_tokens=16, temperature=0, stream=True)
        chunks = [c for c in streamed if c.choices and c.choices[0].delta.content]
        assert chunks, "no streamed content"
        print(f"\nready after {ready_s:.1f} s; HTTP {status}; completion_tokens={first['usage']['completion_tokens']}; "
              f"streamed chunks={len(chunks)}; reply={first['choices'][0]['message']['content']!r}")
    finally:
        launcher.send_signal(signal.SIGTERM)
        launcher.wait(timeout=90)
    deadline = time.monotonic() + 30
    while _group_alive(server_pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _group_alive(server_pid), "server processes outlived the launcher"
    assert launcher.returncode == 130

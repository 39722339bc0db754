"""An append-only record of every answered request, so an interrupted evaluation resumes where it stopped.

Each line is {"key", "request", "response"} where key is a hash of the exact request body. A line is
flushed and fsynced before the answer is used, so a crash, Ctrl-C or `kill -9` loses at most the requests
in flight; a torn last line (killed mid-write) is ignored on reading. Rerunning with the same output
directory sends only the requests that have no line yet.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import IO, Any

JOURNAL_NAME = "responses.jsonl"  # in an evaluation's output folder


def request_key(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class Journal:
    def __init__(self, path: Path):
        self.path = path
        self.answers: dict[str, dict[str, Any]] = {}
        self.requests: dict[str, dict[str, Any]] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue
                self.answers[entry["key"]] = entry["response"]
                self.requests[entry["key"]] = entry["request"]
        self.reused = 0
        self._file: IO[str] | None = None  # opened with the first answer: a run that fails before one leaves no file

    def _open(self) -> IO[str]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        file = self.path.open("a")
        if file.tell() and not self.path.read_bytes().endswith(b"\n"):
            file.write("\n")  # end a torn last line so the next record starts on its own line
        return file

    def lookup(self, body: dict[str, Any]) -> dict[str, Any] | None:
        answer = self.answers.get(request_key(body))
        self.reused += answer is not None
        return answer

    def record(self, body: dict[str, Any], response: dict[str, Any]) -> None:
        key = request_key(body)
        self._file = self._file or self._open()
        self._file.write(json.dumps({"key": key, "request": body, "response": response}, ensure_ascii=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.answers[key] = response
        self.requests[key] = body

    def close(self) -> None:
        if self._file:
            self._file.close()

"""One SGLang server started by this repository's launcher (`python -m launch RECIPE --set ...`) for a GPU
script: wait until it is ready, post to it, stop it and everything it spawned."""

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Server:
    base_url: str
    ready_s: float
    log_dir: Path
    launcher_lines: list[str]  # what the launcher printed until ready (plan, memory, substitutions)

    def post(self, path: str, body: dict, timeout: float = 600) -> object:
        request = urllib.request.Request(f"{self.base_url}{path}", json.dumps(body).encode(), {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())

    def log_text(self) -> str:
        logs = sorted(self.log_dir.glob("*/server.log"))
        return logs[-1].read_text(errors="replace") if logs else ""


class ServerDidNotStart(RuntimeError):
    pass


def gpu_unavailable() -> str | None:
    """Why no server can start here (no GPU, no SGLang), or None."""
    if shutil.which("nvidia-smi") is None and shutil.which("rocm-smi") is None:
        return "no GPU on this machine"
    if importlib.util.find_spec("sglang") is None:
        return "SGLang is not installed (tests/gpu/run_on_device.sh installs the offline bundle)"
    probe = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True) if shutil.which("nvidia-smi") else None
    if probe is not None and probe.returncode != 0:
        return f"nvidia-smi sees no GPU: {probe.stderr.strip()}"
    return None


_HANDED_OUT: set[int] = set()
_HANDING_OUT = threading.Lock()


def free_port() -> int:
    """A port free now and not handed to another server of this process: servers started side by side
    would otherwise be given one port between its release here and their binds."""
    with _HANDING_OUT:
        while True:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            if port not in _HANDED_OUT:
                _HANDED_OUT.add(port)
                return port


@contextlib.contextmanager
def served(recipe: str, sets: list[str], log_dir: Path, timeout_s: int = 600, flags: tuple[str, ...] = (),
           env: dict[str, str] | None = None) -> Iterator[Server]:  # fmt: skip
    """The launcher serving `recipe` with `--set` items `sets` (and launcher `flags`, e.g. `--stand-in sm90`)
    on a free port, with `env` on top of this process's environment; stopped (SIGTERM to the launcher, which
    stops its process group) on exit.
    ServerDidNotStart carries the launcher's last lines."""
    port = free_port()
    command = [sys.executable, "-m", "launch", recipe, "--log-dir", str(log_dir), "--timeout", str(timeout_s), *flags,
               *[arg for item in (f"port={port}", *sets) for arg in ("--set", item)]]  # fmt: skip
    started = time.monotonic()
    launcher = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, **(env or {})})  # fmt: skip
    lines: list[str] = []
    try:
        for line in launcher.stdout:
            lines.append(line)
            if "ready" in line and "at http://" in line:
                break
        if launcher.poll() is not None:
            raise ServerDidNotStart(" | ".join(line.strip() for line in lines[-12:]))
        yield Server(f"http://127.0.0.1:{port}", time.monotonic() - started, log_dir, lines)
    finally:
        launcher.send_signal(signal.SIGTERM)
        try:
            launcher.wait(90)
        except subprocess.TimeoutExpired:
            launcher.kill()

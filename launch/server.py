"""Start SGLang for a recipe, wait until it is healthy, and stop it (and everything it spawned) reliably.

The server runs in its own process group with a parent-death signal, so Ctrl-C, SIGTERM, or a crash of the
launcher never leaves GPU-holding processes behind. Its log goes to a file as it is written, so nothing is
lost when it dies during start.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from rich.console import Console

from launch.errors import LaunchError
from launch.recipe import LoadedRecipe

REPO_ROOT = Path(__file__).resolve().parent.parent
# SGLang imports this package in every server process (its external-model hook), which is how
# sglang_ext's overrides reach the scheduler and worker processes that SGLang spawns.
EXTENSION_PACKAGE = "sglang_ext.models"
STOP_GRACE_S = 20

console = Console(stderr=True)


@dataclass(frozen=True)
class ServerPlan:
    command: list[str]
    env: dict[str, str]  # only what the launcher sets on top of the caller's environment
    base_url: str
    log_path: Path


def repo_python_path() -> str:
    """PYTHONPATH for a child process that imports this repository's packages, installed or not."""
    return os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)


def sglang_env() -> dict[str, str]:
    """What an SGLang process needs on top of the caller's environment to load sglang_ext."""
    return {"SGLANG_EXTERNAL_MODEL_PACKAGE": EXTENSION_PACKAGE, "PYTHONPATH": repo_python_path()}


def plan(loaded: LoadedRecipe, model_path: str, log_dir: Path, python: str = sys.executable) -> ServerPlan:
    recipe = loaded.recipe
    command = [python, "-m", "sglang.launch_server", "--model-path", model_path]
    command += ["--served-model-name", recipe.model.served_name]
    if recipe.model.revision:
        command += ["--revision", recipe.model.revision]
    command += loaded.server_cli
    if "host" not in recipe.server_args:
        command += ["--host", recipe.host]
    if "port" not in recipe.server_args:
        command += ["--port", str(recipe.port)]
    env = {**recipe.env, **sglang_env()}
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return ServerPlan(command, env, f"http://{recipe.host}:{recipe.port}", log_dir / f"{loaded.name}-{stamp}" / "server.log")


def render(server: ServerPlan) -> str:
    env = "\n".join(f"export {k}={shlex.quote(v)}" for k, v in server.env.items())
    args = shlex.join(server.command).replace(" --", " \\\n    --")
    return f"{env}\n{args}"


def check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            raise LaunchError(
                f"port {port} on {host} is already in use",
                hint=f"pick another with --set port={port + 1}, or stop what listens there (`ss -ltnp 'sport = :{port}'`)",
            )


def _die_with_parent() -> None:
    """Runs in the child before exec: new process group, and SIGTERM if the launcher dies (Linux)."""
    os.setsid()
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log written)"


def stop(process: subprocess.Popen) -> None:
    """SIGTERM the whole process group, SIGKILL whatever is left after a grace period."""
    if process.poll() is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # stragglers of an exited leader
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _healthy(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/health", timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def _wait_healthy(process: subprocess.Popen, server: ServerPlan, timeout_s: float) -> None:
    start = time.monotonic()
    with console.status("") as status:
        while True:
            elapsed = time.monotonic() - start
            if process.poll() is not None:
                raise LaunchError(
                    f"SGLang exited with code {process.returncode} during start; last log lines "
                    f"({server.log_path}):\n{tail(server.log_path)}",
                    hint="the log above names the cause; the full log is kept at the path shown",
                )
            if _healthy(server.base_url):
                return
            if elapsed > timeout_s:
                raise LaunchError(
                    f"SGLang did not answer {server.base_url}/health within {timeout_s:.0f} s; last log lines:\n"
                    f"{tail(server.log_path)}",
                    hint="large checkpoints load slowly: raise --timeout; the server was stopped",
                )
            last = tail(server.log_path, 1).strip()[-100:]
            status.update(f"[bold]starting SGLang[/] {elapsed:4.0f}s / {timeout_s:.0f}s  [dim]{last}[/]")
            time.sleep(1.0)


def _raise_interrupt(signum, _frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def running(server: ServerPlan, timeout_s: float) -> Iterator[subprocess.Popen]:
    """Start the server, yield once `/health` answers, and stop the whole process group on exit."""
    server.log_path.parent.mkdir(parents=True, exist_ok=True)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    with server.log_path.open("ab", buffering=0) as log:
        try:
            process = subprocess.Popen(
                server.command,
                env={**os.environ, **server.env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        except OSError as err:
            signal.signal(signal.SIGTERM, previous)
            raise LaunchError(f"cannot start {server.command[0]}: {err.strerror}")
        # For tools that attach to this server later (evals) and for post-mortems.
        (server.log_path.parent / "launch.json").write_text(json.dumps(
            {"pid": process.pid, "base_url": server.base_url, "command": server.command, "env": server.env}, indent=2
        ))
        try:
            _wait_healthy(process, server, timeout_s)
            yield process
        finally:
            with _signals_held():
                stop(process)
            signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM ignored: a second one (a supervisor's timeout, an impatient user) arriving while the
    server is being stopped would otherwise cut `stop` short between its SIGTERM and its SIGKILL, and a server
    slow to shut down would outlive the launcher with its GPU memory."""
    held = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in held.items():
            signal.signal(sig, handler)


def usage_examples(base_url: str, served_name: str) -> str:
    return f"""\
curl {base_url}/v1/chat/completions -H 'Content-Type: application/json' \\
  -d '{{"model": "{served_name}", "messages": [{{"role": "user", "content": "What is 7*6?"}}], "max_tokens": 64}}'

from openai import OpenAI
client = OpenAI(base_url="{base_url}/v1", api_key="EMPTY")
reply = client.chat.completions.create(model="{served_name}", messages=[{{"role": "user", "content": "What is 7*6?"}}])
print(reply.choices[0].message.content)"""

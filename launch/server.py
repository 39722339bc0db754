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
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from launch import startup
from launch.errors import LaunchError
from launch.memory import draft_model_path_args
from launch.recipe import LoadedRecipe

REPO_ROOT = Path(__file__).resolve().parent.parent
# SGLang imports this package in every server process (its external-model hook), which is how
# sglang_ext's overrides reach the scheduler and worker processes that SGLang spawns.
EXTENSION_PACKAGE = "sglang_ext.models"
EXTENSION_VARIABLE = "SGLANG_EXTERNAL_MODEL_PACKAGE"  # SGLang imports the package it names
STOP_GRACE_S = 20

console = Console(stderr=True)


@dataclass(frozen=True)
class ServerPlan:
    command: list[str]
    env: dict[str, str]  # only what the launcher sets on top of the caller's environment
    base_url: str
    log_path: Path
    secret_from: str | None = None  # the environment variable whose value the command carries (API key)
    health: bool = True  # answers HTTP at all (a non-zero-rank node of a multi-node server does not)
    ready_path: str = "/health"  # 200 here means ready (a router: once it lists a model, i.e. has a worker)


def repo_python_path() -> str:
    """PYTHONPATH for a child process that imports this repository's packages, installed or not."""
    return os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)


def sglang_env() -> dict[str, str]:
    """What an SGLang process needs on top of the caller's environment to load sglang_ext."""
    return {EXTENSION_VARIABLE: EXTENSION_PACKAGE, "PYTHONPATH": repo_python_path()}


def plan(loaded: LoadedRecipe, model_path: str, log_dir: Path, python: str = sys.executable, *,
         host: str | None = None, port: int | None = None, extra: tuple[str, ...] = (), label: str = "server") -> ServerPlan:  # fmt: skip
    """The SGLang command of a recipe: on its own host and port, or on `host`/`port` (a replica behind the
    router), with `extra` arguments (multi-node placement, GPU offset) and the recipe's API key if set."""
    recipe = loaded.recipe
    host, port = host or recipe.host, port or recipe.port
    command = [python, "-m", "sglang.launch_server", "--model-path", model_path]
    command += ["--served-model-name", recipe.model.served_name]
    if recipe.model.revision:
        command += ["--revision", recipe.model.revision]
    command += loaded.options.to_cli({k: v for k, v in recipe.server_args.items() if k not in ("host", "port")})
    command += [*draft_model_path_args(recipe.server_args, model_path), "--host", host, "--port", str(port), *extra]
    key = api_key(loaded)
    if key:
        command += ["--api-key", key]
    env = {**recipe.env, **sglang_env()}
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    log_path = log_dir / f"{loaded.name}-{stamp}" / f"{label}.log"
    return ServerPlan(command, env, f"http://{host}:{port}", log_path, recipe.api_key_env if key else None)


def api_key(loaded: LoadedRecipe) -> str | None:
    """The key clients must send (SGLang's --api-key), from the environment variable the recipe names."""
    return os.environ.get(loaded.recipe.api_key_env) or None


LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def check_exposure(loaded: LoadedRecipe) -> None:
    """A server bound beyond this machine answers anyone who reaches the port: refuse it without an API key."""
    host = loaded.recipe.host
    if host in LOCAL_HOSTS or host.startswith("127.") or api_key(loaded):
        return
    variable = loaded.recipe.api_key_env
    raise LaunchError(
        f"{loaded.where('server_args', 'host')}: host {host} serves beyond this machine, and ${variable} (the "
        "recipe's api_key_env) holds no API key, so anyone who can reach the port could use the server",
        hint=f"export {variable}=<a secret> (clients then send it as their OpenAI api_key; python -m eval reads it "
        f"too), or bind this machine only with --set host=127.0.0.1",
    )


def render(server: ServerPlan) -> str:
    """The plan as shell lines; an API key appears as the variable that holds it, never its value."""
    env = "\n".join(f"export {k}={shlex.quote(v)}" for k, v in server.env.items())
    args = shlex.join(server.command).replace(" --", " \\\n    --")
    if server.secret_from:
        key = os.environ[server.secret_from]
        args = args.replace(f"--api-key {shlex.quote(key)}", f'--api-key "${server.secret_from}"')
    return f"{env}\n{args}" if env else args


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


def _program(server: ServerPlan) -> str:
    """What the plan runs, for messages: the module of `python -m MODULE`, else the executable."""
    return server.command[2] if server.command[1:2] == ["-m"] else Path(server.command[0]).name


def _healthy(server: ServerPlan) -> bool:
    headers = {"Authorization": f"Bearer {os.environ[server.secret_from]}"} if server.secret_from else {}
    try:
        request = urllib.request.Request(f"{server.base_url}{server.ready_path}", headers=headers)
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def _listens(process: subprocess.Popen, port: int) -> bool:
    """Whether the server started here, or a process it spawned, is the one listening on `port`."""
    import psutil

    try:
        root = psutil.Process(process.pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return False
    for member in tree:
        try:  # psutil before 6.0 (what a GPU image may ship) names it connections()
            connections = member.net_connections(kind="tcp") if hasattr(member, "net_connections") else member.connections(kind="tcp")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port for c in connections):
            return True
    return False


def _log_end(path: Path, size: int = 65536) -> str:
    try:
        with path.open("rb") as log:
            log.seek(max(0, path.stat().st_size - size))
            return log.read().decode(errors="replace")
    except OSError:
        return ""


def _wait_healthy(process: subprocess.Popen, server: ServerPlan, timeout_s: float) -> None:
    """Poll until ready, naming the start-up phase on the terminal and, as each begins, in startup.log
    beside the server log; SGLang's own per-phase timings end that file once the server is ready."""
    start = time.monotonic()
    phases = server.log_path.with_name("startup.log")
    current = None
    with console.status("") as status, phases.open("a") as record:
        while True:
            elapsed = time.monotonic() - start
            if process.poll() is not None:
                raise LaunchError(
                    f"{_program(server)} exited with code {process.returncode} during start; last log lines "
                    f"({server.log_path}):\n{tail(server.log_path)}",
                    hint="the log above names the cause; the full log is kept at the path shown",
                )
            if _healthy(server):
                port = urllib.parse.urlsplit(server.base_url).port
                if port and not _listens(process, port):
                    raise LaunchError(
                        f"{server.base_url} answers, but not from the {_program(server)} started here: another process "
                        f"took port {port} while it started (its log: {server.log_path})",
                        hint="start it again on another port (--set port=...); the server started here was stopped",
                    )
                spent = startup.timings(_log_end(server.log_path))
                record.write(f"{elapsed:6.0f} s  ready" + (f"; SGLang's start-up timings (s): {spent}" if spent else "") + "\n")
                return
            if elapsed > timeout_s:
                raise LaunchError(
                    f"{_program(server)} did not answer {server.base_url}{server.ready_path} within {timeout_s:.0f} s; last log lines:\n"
                    f"{tail(server.log_path)}",
                    hint="large checkpoints load slowly: raise --timeout; the server was stopped",
                )
            now = startup.phase(_log_end(server.log_path)) or current
            if now and (current is None or now.split(" ")[:3] != current.split(" ")[:3]):
                record.write(f"{elapsed:6.0f} s  {now}\n")
                record.flush()
            current = now
            shown = escape(current) if current else f"[dim]{escape(tail(server.log_path, 1).strip()[-100:])}[/]"
            status.update(f"[bold]starting SGLang[/] {elapsed:4.0f}s / {timeout_s:.0f}s  {shown}")
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
            if server.health:
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

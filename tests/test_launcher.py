import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launch import __main__ as cli
from launch import hardware, server
from launch.errors import LaunchError
from launch.hardware import Machine, parse_nvidia_smi
from launch.recipe import load_recipe
from tests.conftest import REPO, all_recipe_names

H100 = Machine(parse_nvidia_smi("NVIDIA H100 80GB HBM3, 81559, 9.0"), "nvidia-smi", "0.5.17")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launch", *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_list_shows_every_recipe():
    done = run_cli("--list")
    assert done.returncode == 0, done.stderr
    squashed = "".join(done.stdout.split())
    for name in all_recipe_names():
        assert "".join(name.split()) in squashed or name[:10] in done.stdout


@pytest.mark.parametrize("name", all_recipe_names())
def test_dry_run_prints_the_exact_command(name):
    done = run_cli(name, "--dry-run")
    assert done.returncode == 0, done.stderr
    loaded = load_recipe(name)
    command = " ".join(done.stdout.replace("\\\n", " ").split())
    assert "-m sglang.launch_server --model-path" in command
    assert f"--served-model-name {loaded.recipe.model.served_name}" in command
    assert "export SGLANG_EXTERNAL_MODEL_PACKAGE=sglang_ext.models" in done.stdout
    for key, value in loaded.recipe.env.items():
        assert f"export {key}={value}" in done.stdout
    for token in loaded.server_cli:
        assert token in command


def test_set_reaches_the_command():
    done = run_cli("tiny-bf16", "--dry-run", "--set", "port=31234", "--set", "mem-fraction-static=0.5")
    assert done.returncode == 0, done.stderr
    assert "--port 31234" in done.stdout and "--mem-fraction-static 0.5" in done.stdout


def test_errors_are_one_message_without_traceback():
    done = run_cli("no-such-recipe")
    assert done.returncode == 1
    assert "unknown recipe 'no-such-recipe'" in done.stderr and "Traceback" not in done.stderr
    done = run_cli("tiny-bf16", "--dry-run", "--set", "attention-backend=flash")
    assert done.returncode == 1 and "must be one of" in done.stderr and "Traceback" not in done.stderr


def _args(*argv: str):
    return cli._parser().parse_args(list(argv))


def test_wrong_hardware_refuses(monkeypatch):
    monkeypatch.setattr(hardware, "detect", lambda: H100)
    with pytest.raises(LaunchError, match="does not fit this machine: needs AMD GPUs"):
        cli.launch(_args("qwen3.5-397b-mxfp4-fse-mi355x"))


def test_sglang_missing_or_wrong_version_refuses(monkeypatch):
    monkeypatch.setattr(cli, "_model_path", lambda loaded, materialize: "/models/x")
    monkeypatch.setattr(hardware, "detect", lambda: Machine(H100.gpus, "nvidia-smi", None))
    with pytest.raises(LaunchError, match="SGLang is not installed"):
        cli.launch(_args("qwen3.6-35b-int8-h100"))
    monkeypatch.setattr(hardware, "detect", lambda: Machine(H100.gpus, "nvidia-smi", "0.5.20"))
    with pytest.raises(LaunchError, match=r"runs on SGLang 0.5.17 or 0.5.23; this environment has 0.5.20") as caught:
        cli.launch(_args("qwen3.6-35b-int8-h100"))
    assert "pip install 'sglang==0.5.17' or pip install 'sglang==0.5.23'" in str(caught.value)
    monkeypatch.setattr(hardware, "detect", lambda: Machine(H100.gpus, "nvidia-smi", "0.5.23"))
    with pytest.raises(LaunchError, match=r"runs on SGLang 0.5.17; this environment has 0.5.23"):
        cli.launch(_args("qwen3.6-35b-int8-h100", "--set", "sglang.version=0.5.17"))


@pytest.mark.parametrize("installed, says", [
    (None, "SGLang: not installed here; the command is 0.5.17's (the recipe names 0.5.17 and 0.5.23)"),
    ("0.5.17", "SGLang 0.5.17: served on NVIDIA H100/H200 by this project's GPU suites"),
    ("0.5.23+rocm700", "SGLang 0.5.23+rocm700: tested on CPU only"),
    ("0.5.20", "SGLang 0.5.20: not one the recipe names (0.5.17 and 0.5.23); the command is 0.5.17's"),
])  # fmt: skip
def test_the_launcher_says_which_sglang_it_found_and_what_that_means(monkeypatch, capsys, installed, says):
    monkeypatch.setattr(hardware, "detect", lambda: Machine([], "none", installed))
    assert cli.launch(_args("qwen3.6-35b-int8-h100", "--dry-run")) == 0
    assert says in capsys.readouterr().err


def test_port_in_use_refuses():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(LaunchError, match=f"port {port} on 127.0.0.1 is already in use"):
            server.check_port_free("127.0.0.1", port)


def _plan(tmp_path: Path, command: list[str], port: int) -> server.ServerPlan:
    return server.ServerPlan(command, {}, f"http://127.0.0.1:{port}", tmp_path / "run" / "server.log")


def test_server_dying_during_start_shows_its_last_log_lines(tmp_path):
    script = "import sys; print('loading'); print('RuntimeError: CUDA out of memory', flush=True); sys.exit(3)"
    plan = _plan(tmp_path, [sys.executable, "-c", script], free_port())
    with pytest.raises(LaunchError) as caught:
        with server.running(plan, timeout_s=30):
            pass
    assert "exited with code 3" in str(caught.value) and "CUDA out of memory" in str(caught.value)
    assert plan.log_path.read_text().startswith("loading")


def test_start_timeout_stops_the_server(tmp_path):
    plan = _plan(tmp_path, [sys.executable, "-c", "import time; time.sleep(600)"], free_port())
    with pytest.raises(LaunchError, match="did not answer"):
        with server.running(plan, timeout_s=2):
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split()[2] != "Z"


def _wait_dead(pid: int, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return False


def test_leaving_the_context_stops_the_whole_process_group(tmp_path):
    port, pidfile = free_port(), tmp_path / "pids"
    plan = _plan(tmp_path, [sys.executable, str(REPO / "tests" / "health_stub.py"), str(port), str(pidfile)], port)
    with server.running(plan, timeout_s=30) as process:
        grandchild = int(pidfile.read_text())
        assert _alive(grandchild)
    assert process.poll() is not None
    assert _wait_dead(grandchild)
    phases = [line.split(" s  ", 1)[1] for line in plan.log_path.with_name("startup.log").read_text().splitlines()]
    assert phases == ["loading weights", "capturing prefill CUDA graphs (a host's first start compiles their kernels: minutes)",
                      "ready; SGLang's start-up timings (s): load_weight=1.50, cuda_graph={prefill=1.50}"]  # fmt: skip


def test_prepare_starts_the_server_until_ready_then_stops_it_and_its_children(tmp_path, capsys):
    port, pidfile = free_port(), tmp_path / "pids"
    plan = _plan(tmp_path, [sys.executable, str(REPO / "tests" / "health_stub.py"), str(port), str(pidfile)], port)
    assert cli._serve([("server", plan)], "m", 30, prepare=True) == 0
    assert _wait_dead(int(pidfile.read_text()))
    said = " ".join(capsys.readouterr().err.split())
    assert "prepared: ready after" in said and "now stopped" in said and "startup.log" in said
    assert plan.log_path.with_name("startup.log").read_text().splitlines()[-1].split(" s  ", 1)[1].startswith("ready")
    assert cli._parser().parse_args(["tiny-bf16", "--prepare"]).prepare


def _launcher_of(command: list[str], port: int, tmp_path: Path, stop_grace_s: float = 20) -> subprocess.Popen:
    """A process that serves `command` through server.running, as python -m launch does, and says when it is
    ready and when it has stopped."""
    program = f"""
import time
from pathlib import Path
from launch import server
server.STOP_GRACE_S = {stop_grace_s}
plan = server.ServerPlan({command!r}, {{}}, 'http://127.0.0.1:{port}', Path({str(tmp_path / 'log' / 'server.log')!r}))
try:
    with server.running(plan, timeout_s=30):
        print('ready', flush=True)
        time.sleep(600)
except KeyboardInterrupt:
    print('stopped', flush=True)
"""
    return subprocess.Popen([sys.executable, "-c", program], cwd=REPO, stdout=subprocess.PIPE, text=True)


def test_sigterm_to_the_launcher_stops_the_server_tree(tmp_path):
    port, pidfile = free_port(), tmp_path / "pids"
    launcher = _launcher_of([sys.executable, str(REPO / "tests" / "health_stub.py"), str(port), str(pidfile)], port, tmp_path)
    assert launcher.stdout.readline().strip() == "ready"
    grandchild = int(pidfile.read_text())
    launcher.send_signal(signal.SIGTERM)
    assert launcher.stdout.readline().strip() == "stopped"
    launcher.wait(timeout=30)
    assert _wait_dead(grandchild)


@pytest.mark.parametrize("port", ["70000", "0", "-1"])
def test_a_port_outside_tcp_range_is_refused(port):
    done = run_cli("tiny-bf16", "--dry-run", "--set", f"port={port}")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"--set port={port}: server_args.port: 'port' must be 1..65535" in " ".join(done.stderr.split())


@pytest.mark.parametrize("path", ["/nonexistent/x", "./models/x", "not/a/hub/id"])
def test_a_model_path_that_is_neither_a_directory_nor_a_hub_id_is_refused(path):
    done = run_cli("tiny-bf16", "--dry-run", "--set", "model.fixture=null", "--set", f"model.path={path}")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    message = " ".join(done.stderr.split())
    assert f"--set model.path={path}: model.path: {path} is neither a checkpoint directory" in message


def test_a_hub_id_or_an_existing_directory_is_accepted(tmp_path: Path):
    for path in ("Qwen/Qwen3.6-35B-A3B", str(tmp_path)):
        done = run_cli("tiny-bf16", "--dry-run", "--set", "model.fixture=null", "--set", f"model.path={path}")
        assert done.returncode == 0, done.stderr
        assert f"--model-path {path}" in done.stdout


def test_a_second_signal_while_stopping_still_kills_a_server_slow_to_exit(tmp_path):
    port, pidfile = free_port(), tmp_path / "pids"
    stubborn = (f"import runpy, signal, sys; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                f"sys.argv = ['stub', '{port}', {str(pidfile)!r}]; runpy.run_path({str(REPO / 'tests' / 'health_stub.py')!r})")  # fmt: skip
    launcher = _launcher_of([sys.executable, "-c", stubborn], port, tmp_path, stop_grace_s=3)
    assert launcher.stdout.readline().strip() == "ready"
    grandchild = int(pidfile.read_text())  # ignores SIGTERM too, as a server stuck in its shutdown would
    launcher.send_signal(signal.SIGTERM)
    time.sleep(1)  # inside stop(): SIGTERM sent, waiting out the grace period
    launcher.send_signal(signal.SIGTERM)
    assert launcher.stdout.readline().strip() == "stopped"
    launcher.wait(timeout=30)
    assert _wait_dead(grandchild)


def test_a_port_answered_by_another_process_is_not_taken_for_the_server(tmp_path):
    """Two servers handed one port (a race between picking a free port and binding it): the one that loses
    the bind must not be declared ready on the strength of the other's /health."""
    import http.server
    import threading

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        plan = _plan(tmp_path, [sys.executable, "-c", "import time; time.sleep(600)"], other.server_address[1])
        with pytest.raises(LaunchError, match=f"answers, but not from the .* started here: another process took port {other.server_address[1]}"):
            with server.running(plan, timeout_s=30):
                pass
    finally:
        other.shutdown()

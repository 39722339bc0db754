"""Beyond one process on one host: multi-node and replicated recipes (their commands, checked with SGLang's and
smg's own parsers), the exposure guard, API keys reaching the servers and the eval clients, and smg's real
router in front of two OpenAI-compatible stand-ins."""

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from launch import __main__ as cli
from launch import hardware, server, topology
from launch.errors import LaunchError
from launch.hardware import Machine, parse_nvidia_smi
from launch.memory import share_gpu
from launch.recipe import load_recipe
from launch.sglang_options import parse_with_sglang
from openai_double import OpenAIDouble
from tests.conftest import REPO
from tests.gpu import replicas as rehearsal
from tests.gpu.serving import gpu_unavailable

KEY_VAR = "SGLANG_API_KEY"
H200 = Machine(parse_nvidia_smi("NVIDIA H200, 143771, 9.0"), "nvidia-smi", "0.5.17")


def launch(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != KEY_VAR} | (env or {})
    return subprocess.run([sys.executable, "-m", "launch", *argv], cwd=REPO, capture_output=True, text=True, timeout=300, env=environ)


def commands(stdout: str) -> dict[str, list[str]]:
    """The printed plans by their '# label' headers, each as argv (line continuations joined)."""
    import shlex

    plans, label = {}, "server"
    for block in stdout.replace("\\\n", " ").splitlines():
        if block.startswith("# "):
            label = block[2:]
        elif "-m " in block:
            plans[label] = shlex.split(block)
    return plans


@pytest.mark.parametrize(("sets", "message"), [
    (["topology.nodes=2", "topology.replicas=2"], "set nodes or replicas, not both"),
    (["topology.replicas=0"], "Input should be greater than or equal to 1"),
    (["topology.router_policy=fastest"], "topology.router_policy"),
    (["topology.replicas=2", "topology.replicas_per_gpu=3"], r"replicas_per_gpu \(3\) is more than the replicas \(2\)"),
    (["api-key=secret"], "set by the recipe's api_key_env"),
    (["nnodes=2"], "set by the recipe's topology.nodes"),
    (["api_key_env=2BAD"], "api_key_env"),
])  # fmt: skip
def test_topology_fields_are_validated(sets: list[str], message: str) -> None:
    with pytest.raises(LaunchError, match=message):
        load_recipe("tiny-bf16", sets)


def test_every_node_of_a_multi_node_recipe_gets_sglangs_own_flags() -> None:
    done = launch("tiny-bf16", "--dry-run", "--set", "topology.nodes=2", "--set", "tp-size=2", "--dist-init-addr", "10.0.0.1:5000")
    assert done.returncode == 0, done.stderr
    plans = commands(done.stdout)
    assert list(plans) == ["node 0", "node 1"]
    for rank, argv in enumerate(plans.values()):
        parsed = parse_with_sglang(argv[argv.index("sglang.launch_server") + 1 :])
        assert (parsed.nnodes, parsed.node_rank, parsed.dist_init_addr, parsed.tp_size) == (2, rank, "10.0.0.1:5000", 2)
    one = launch("tiny-bf16", "--dry-run", "--set", "topology.nodes=2", "--node-rank", "1", "--dist-init-addr", "10.0.0.1:5000")
    assert list(commands(one.stdout)) == ["server"] and "--node-rank 1" in " ".join(one.stdout.split())


@pytest.mark.parametrize(("argv", "message"), [
    (["--set", "topology.nodes=2", "--dry-run"], "give --dist-init-addr HEAD:PORT"),
    (["--set", "topology.nodes=2", "--dry-run", "--dist-init-addr", "10.0.0.1:5000", "--node-rank", "2"], "ranks 0 to 1"),
    (["--set", "topology.nodes=2", "--dry-run", "--dist-init-addr", "head"], "expected HOST:PORT"),
    (["--dry-run", "--node-rank", "0"], "runs on one host"),
])  # fmt: skip
def test_bad_multi_node_arguments_are_one_clear_error(argv: list[str], message: str) -> None:
    done = launch("tiny-bf16", *argv)
    assert done.returncode == 1 and message in " ".join(done.stderr.split()) and "Traceback" not in done.stderr


def test_replicas_get_their_own_gpus_and_ports_and_the_router_fronts_them() -> None:
    from smg.launch_router import parse_router_args

    done = launch("tiny-bf16", "--dry-run", "--replicas", "2", "--set", "port=31000")
    assert done.returncode == 0, done.stderr
    plans = commands(done.stdout)
    assert list(plans) == ["replica 0", "replica 1", "router (smg)"]
    for i in range(2):
        argv = plans[f"replica {i}"]
        parsed = parse_with_sglang(argv[argv.index("sglang.launch_server") + 1 :])
        assert (parsed.host, parsed.port, parsed.base_gpu_id) == ("127.0.0.1", 31001 + i, i)
    router = plans["router (smg)"]
    args = parse_router_args(router[router.index("smg.launch_router") + 1 :])
    assert args.worker_urls == ["http://127.0.0.1:31001", "http://127.0.0.1:31002"]
    assert (args.policy, args.host, args.port) == ("cache_aware", "127.0.0.1", 31000)
    assert (args.prometheus_host, args.prometheus_port) == ("127.0.0.1", 31003)  # not smg's 29000 on every interface


def _on(machine: Machine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hardware, "detect", lambda: machine)


def test_two_replicas_share_one_gpu_when_the_host_has_one(monkeypatch, capsys, fixtures_root):
    """tiny-bf16 at --replicas 2 on one 140 GiB GPU: both on GPU 0, splitting the recipe's 0.3 (what one
    server takes) so that each, started after the other, gets 0.15 of the GPU."""
    _on(H200, monkeypatch)
    assert cli.main(["tiny-bf16", "--replicas", "2", "--dry-run", "--set", "port=31000", "--set", "model.fixture=null",
                     "--set", f"model.path={fixtures_root / 'bf16'}"]) == 0  # fmt: skip
    captured = capsys.readouterr()
    shown = " ".join(captured.err.split())
    assert "recipe needs: 1× any any arch (tp 1 × pp 1 × dp 1, 2 replicas, 2 per GPU), behind smg's router" in shown
    assert ("shared GPUs (1 suitable GPU here for 2 replicas of 1): 2 replicas share each GPU: 0.3 of its 140 GiB (the "
            "recipe's mem-fraction-static), 0.15 = 21.1 GiB each") in shown  # fmt: skip
    assert "memory, replica 0 of a GPU, 0.15 of at least 140.4 GiB free: weights" in shown
    assert "memory, replica 1 of a GPU, 0.1764 of at least" in shown and "does not fit" not in shown
    plans = commands(captured.out)
    parsed = [parse_with_sglang(plans[f"replica {i}"][plans[f"replica {i}"].index("sglang.launch_server") + 1 :]) for i in range(2)]
    assert [(p.base_gpu_id, p.port, p.mem_fraction_static) for p in parsed] == [(0, 31001, 0.15), (0, 31002, 0.1764)]
    assert parsed[0].model_path == parsed[1].model_path == str(fixtures_root / "bf16")
    # started one after another: the second sees what the first holds as taken, and they hold the recipe's 0.3
    assert parsed[0].mem_fraction_static + parsed[1].mem_fraction_static * (1 - parsed[0].mem_fraction_static) <= 0.3
    router = plans["router (smg)"]
    assert "--worker-urls http://127.0.0.1:31001 http://127.0.0.1:31002" in " ".join(router)


@pytest.mark.parametrize(("gpus", "sets", "per_gpu", "base_ids"), [
    (1, [], 2, [0, 0]),
    (2, [], 1, [0, 1]),
    (2, ["topology.replicas=3"], 2, [0, 0, 1]),
    (4, ["topology.replicas_per_gpu=2"], 2, [0, 0]),
    (4, ["tp-size=2", "topology.replicas=4"], 2, [0, 0, 2, 2]),
    (0, [], 1, [0, 1]),
])  # fmt: skip
def test_replicas_share_gpus_only_where_the_host_has_too_few(gpus, sets, per_gpu, base_ids, tmp_path):
    machine = Machine(parse_nvidia_smi("\n".join(["NVIDIA H200, 143771, 9.0"] * gpus)) if gpus else [], "nvidia-smi", "0.5.17")
    loaded = load_recipe("tiny-bf16", ["topology.replicas=2", *sets])
    assert topology.replicas_per_gpu(loaded, machine)[0] == per_gpu
    sharing = share_gpu(per_gpu, loaded.recipe.server_args, None) if per_gpu > 1 else None
    plans = topology.replica_plans(loaded, "/ckpt", tmp_path, sharing)
    assert [int(p.command[p.command.index("--base-gpu-id") + 1]) for p in plans] == base_ids
    needed, counted = hardware.gpus_needed(loaded.recipe, per_gpu)
    assert needed == (max(base_ids) + loaded.recipe.gpus_per_host) and (f"{per_gpu} per" in counted) == (per_gpu > 1)


def test_replicas_that_cannot_share_the_gpu_are_refused_with_their_numbers(monkeypatch, capsys, tmp_path):
    """A 60 GiB checkpoint that one server holds in its 0.8 of an H200 (112 GiB), but not two replicas in
    their 56 GiB shares."""
    from tests.test_memory_plan import _sparse_checkpoint

    _on(H200, monkeypatch)
    monkeypatch.setattr(cli, "_serve", lambda *_: pytest.fail("the launcher started servers it should have refused"))
    checkpoint = _sparse_checkpoint(tmp_path / "fp8-4L", 4, 60 * 2**30)
    argv = ["qwen3.5-397b-fp8-mi355x", "--stand-in", "sm90", "--set", "tp-size=1", "--set", f"model.path={checkpoint}"]
    assert cli.main([*argv, "--dry-run"]) == 0
    one = " ".join(capsys.readouterr().err.split())
    assert "memory: per GPU of 140 GiB at mem-fraction-static 0.8" in one and "does not fit" not in one
    with pytest.raises(LaunchError) as refused:
        cli.launch(cli._parser().parse_args([*argv, "--replicas", "2"]))
    message = " ".join(str(refused.value).split())
    assert message.startswith("2 replicas of recipe qwen3.5-397b-fp8-mi355x do not fit one GPU: replica 0 of a GPU: the weights "
                              "(60.0 GiB) fill the static budget (0.4 × 140 GiB = 56.2 GiB)")  # fmt: skip
    assert "plan: 2 replicas share each GPU:" in message and "topology.replicas_per_gpu=K" in message


def test_a_server_beyond_localhost_without_an_api_key_is_refused() -> None:
    done = launch("tiny-bf16", "--dry-run", "--set", "host=0.0.0.0")
    message = " ".join(done.stderr.split())
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "--set host=0.0.0.0: host 0.0.0.0 serves beyond this machine" in message
    assert f"export {KEY_VAR}=" in message and "--set host=127.0.0.1" in message


def test_with_a_key_it_reaches_every_server_and_the_router_but_is_never_printed() -> None:
    done = launch("tiny-bf16", "--dry-run", "--set", "host=0.0.0.0", "--replicas", "2", env={KEY_VAR: "s3cret-value"})
    assert done.returncode == 0, done.stderr
    assert "s3cret-value" not in done.stdout + done.stderr
    assert all(f'--api-key "${KEY_VAR}"' in " ".join(argv_line.split()) for argv_line in done.stdout.split("# ")[1:])
    assert "--host 0.0.0.0" in " ".join(done.stdout.split("# router")[1].split())  # only the router is exposed


def test_eval_clients_send_the_recipes_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    pytest.importorskip("lm_eval")
    from eval.__main__ import main

    data = Path(__file__).resolve().parent / "data" / "gsm8k"
    with OpenAIDouble(lambda messages: "#### 18", api_key="k-123") as double:
        argv = ["gsm8k", "--recipe", "tiny-bf16", "--base-url", double.base_url, "--data-dir", str(data), "--limit", "2",
                "--max-retries", "1", "--output", str(tmp_path / "with-key")]  # fmt: skip
        monkeypatch.delenv(KEY_VAR, raising=False)
        assert main(argv) == 1
        assert "HTTP 401" in capsys.readouterr().err and double.refused
        monkeypatch.setenv(KEY_VAR, "k-123")
        assert main([*argv[:-1], str(tmp_path / "with-key-2")]) == 0
    assert len(double.chat_bodies) == 2


def test_smgs_router_in_front_of_two_servers_spreads_requests_and_outlives_one(tmp_path: Path) -> None:
    """The real router (smg 1.13.0) as the launcher starts it, before two OpenAI stand-ins with /health; the
    second runs in a process of its own, which is then killed."""
    loaded = load_recipe("tiny-bf16", [f"port={server_port()}", "topology.replicas=2", "topology.router_policy=round_robin"])
    program = "import time; from openai_double import OpenAIDouble; d = OpenAIDouble(lambda m: 'two').__enter__(); print(d.base_url, flush=True); time.sleep(600)"
    doomed = subprocess.Popen([sys.executable, "-c", program], cwd=Path(__file__).parent, stdout=subprocess.PIPE, text=True)
    try:
        with OpenAIDouble(lambda m: "one") as first:
            replicas = [server.ServerPlan([], {}, url, tmp_path / f"r{i}.log") for i, url in enumerate((first.base_url, doomed.stdout.readline().strip()))]
            router = topology.router_plan(loaded, replicas, tmp_path)
            with server.running(router, timeout_s=60):
                answers = [_chat(router.base_url) for _ in range(6)]
                assert sorted(answers) == ["one"] * 3 + ["two"] * 3
                doomed.kill()
                doomed.wait()
                assert [_chat(router.base_url) for _ in range(4)] == ["one"] * 4
    finally:
        doomed.kill()


def server_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _chat(base_url: str) -> str:
    body = {"model": "tiny-qwen3.5-moe", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    request = urllib.request.Request(f"{base_url}/v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["choices"][0]["message"]["content"]


def test_the_launcher_serves_on_when_a_replica_dies_and_stops_when_none_is_left(tmp_path: Path) -> None:
    """Three stand-in servers as the launcher serves replicas (the last one fronting them): kill -9 of one
    replica leaves the rest serving; once the other is gone too the launcher stops the front and exits."""
    ports = [server_port() for _ in range(3)]
    stub = str(REPO / "tests" / "health_stub.py")
    plans = [(label, server.ServerPlan([sys.executable, stub, str(port), str(tmp_path / f"{port}.pid")], {}, f"http://127.0.0.1:{port}",
                                       tmp_path / f"{port}.log"))
             for label, port in zip(("replica 0", "replica 1", "router (smg)"), ports)]  # fmt: skip
    program = (f"from launch import __main__ as cli\nfrom launch.errors import LaunchError\nfrom launch.server import ServerPlan\n"
               f"from pathlib import PosixPath\ntry:\n    cli._serve({plans!r}, 'm', 30)\nexcept LaunchError as error:\n"
               f"    print('stopped:', error.args[0].splitlines()[0], flush=True)\n")  # fmt: skip
    launcher = subprocess.Popen([sys.executable, "-c", program], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        while not any("ready at" in line for line in lines):
            lines.append(launcher.stdout.readline())
            assert lines[-1], "".join(lines)
        groups = [rehearsal.listener_pgid(port) for port in ports]
        os.killpg(groups[1], 9)
        while "exited" not in lines[-1]:
            lines.append(launcher.stdout.readline())
        assert "replica 1 exited with code -9; the router serves with the 1 left" in " ".join(lines[-1].split())
        assert launcher.poll() is None and urllib.request.urlopen(f"http://127.0.0.1:{ports[2]}/health", timeout=5).status == 200
        os.killpg(groups[0], 9)
        assert launcher.stdout.readline().startswith("stopped: replica 0 exited with code -9; last log lines:")
        assert launcher.wait(timeout=60) == 0
        deadline = time.monotonic() + 10
        while any(rehearsal.live_processes(group) for group in groups) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(rehearsal.live_processes(group) for group in groups)
    finally:
        launcher.kill()


def _stand_in(delay_s: float) -> subprocess.Popen:
    """An OpenAI stand-in answering after `delay_s`, in a process group of its own, as the launcher starts a replica."""
    program = ("import time; from openai_double import Faults, OpenAIDouble; d = OpenAIDouble(lambda m: 'So 18. #### 18', "
               f"faults=Faults(delay_s={delay_s})).__enter__(); print(d.base_url, flush=True); time.sleep(600)")  # fmt: skip
    return subprocess.Popen([sys.executable, "-c", program], cwd=Path(__file__).parent, stdout=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip


def test_a_replica_killed_mid_eval_costs_no_question_and_the_router_stops_sending_to_it(tmp_path: Path) -> None:
    """tests/gpu/replicas.py's run with stand-ins for the SGLang servers: GSM8K (40 questions, 8 in flight)
    through smg's real router, as the launcher starts it, and kill -9 of one replica's process group after 6
    answers. smg retries what the dead one held and, after 10 failed sends, opens its circuit."""
    pytest.importorskip("lm_eval")
    loaded = load_recipe("tiny-bf16", [f"port={server_port()}", "topology.replicas=2", "topology.router_policy=round_robin"])
    stand_ins = [_stand_in(0.2) for _ in range(2)]
    try:
        replicas = [rehearsal.Replica(process.stdout.readline().strip(), process.pid) for process in stand_ins]
        behind = [server.ServerPlan([], {}, replica.url, tmp_path / f"r{i}.log") for i, replica in enumerate(replicas)]
        router = topology.router_plan(loaded, behind, tmp_path)
        metrics = f"http://127.0.0.1:{topology.metrics_port(loaded.recipe)}/metrics"
        with server.running(router, timeout_s=60):
            questions = rehearsal.gsm8k_questions(40, tmp_path / "gsm8k")
            report = rehearsal.kill_mid_eval(router.base_url, metrics, replicas, 1, questions, 40, 6, tmp_path, "tiny-bf16")
    finally:
        for process in stand_ins:
            process.kill()
    assert rehearsal.failures(report) == []
    assert report["answered"] == report["scored"] == 40 and report["answered_twice"] == 0 and report["eval_exit_code"] == 0
    assert 6 <= report["answered_at_kill"] < 40
    assert report["router_answers"] == {"200": 40 - report["answered_at_kill"]}  # every request it held retried, none failed
    survivor, dead = report["replicas"]
    assert dead["answered_after_kill"] == 0 and dead["failed_after_kill"] >= 10 and dead["circuit_at_end"] == "open"
    assert survivor["answered_after_kill"] == 40 - report["answered_at_kill"] and survivor["failed_after_kill"] == 0


@pytest.mark.skipif(gpu_unavailable() is None, reason="a GPU is here: this would start servers")
def test_the_gpu_run_skips_without_a_gpu(capsys, tmp_path: Path) -> None:
    assert rehearsal.main(["--out", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().err == f"replicas: skipped: {gpu_unavailable()}; nothing was started\n"
    assert not (tmp_path / "out").exists()

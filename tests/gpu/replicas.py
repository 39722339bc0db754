"""Two real SGLang servers on one GPU behind smg's router, one of them killed mid-evaluation.

    python -m tests.gpu.replicas [--recipe tiny-bf16] [--limit 40] [--kill-after 10] [--policy round_robin] [--out DIR]

The launcher as a user runs it (`python -m launch RECIPE --replicas 2`: on a one-GPU host it puts both
replicas on the GPU, each with its share of the memory, and smg's router in front, here with the
round-robin policy so that both get requests: cache-aware routing may send GSM8K's shared 5-shot prefix to
one only); then GSM8K through the router (`python -m eval gsm8k --base-url ROUTER`) on `--limit` questions
of the repository's bundled GSM8K (the train questions after the 5-shot pool: the bundled test split has
6), and once `--kill-after` answers are in, kill -9 of replica 1's process group. Reported: questions
answered, answered twice (the eval's journal), the router's error answers, per replica the requests smg
sent and the answers it got before and after the kill (its per-worker counters), whether the router
stopped sending to the dead replica, GPU memory idle / both up / after the kill / after the stop, and
processes left after the launcher stopped. A table, and OUT/replicas.json ($OUT/replicas by default, or
--out).

Needs, beside SGLang: smg (the `router` extra), prometheus_client (to read smg's metrics) and lm-eval
(eval/gpu-wheels.txt); on a host without an index, carry smg-1.13.0-cp38-abi3-manylinux*.whl and
prometheus_client-*-py3-none-any.whl in .gpu/w*/ (`bash tests/gpu/wheels.sh` fetches both) for
tests/gpu/run_on_device.sh to install.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from eval.journal import JOURNAL_NAME
from launch import topology
from launch.recipe import load_recipe
from tests.gpu.serving import ServerDidNotStart, gpu_unavailable, served

REPO = Path(__file__).resolve().parents[2]
GSM8K = REPO / "tests" / "data" / "gsm8k"
SHOTS = 24  # the bundled train.jsonl: the 5-shot pool, the first 24 of the train split
CB_FAILURE_THRESHOLD = 10  # smg 1.13.0's default: failed sends before a worker's circuit opens
CIRCUIT = {0: "closed", 1: "open", 2: "half-open"}  # smg_worker_cb_state
NEEDED = ("smg", "lm_eval", "prometheus_client", "psutil")
GPU_SLACK_MIB = 256  # what nvidia-smi may still count 5 s after the servers exit


@dataclass(frozen=True)
class Replica:
    url: str  # as the router knows it
    pgid: int  # its process group, which kill -9 takes down whole


def gsm8k_questions(count: int, directory: Path) -> Path:
    """A GSM8K folder for `python -m eval gsm8k --data-dir`: the bundled 5-shot pool, and as questions the
    `count` train questions that follow it."""
    with gzip.open(GSM8K / "train-full.jsonl.gz", "rt") as lines:
        rows = [line for _, line in zip(range(SHOTS + count), lines)][SHOTS:]
    if len(rows) < count:
        raise ValueError(f"the bundled GSM8K train split has {SHOTS + len(rows)} questions, {SHOTS + count} asked")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "train.jsonl").write_text((GSM8K / "train.jsonl").read_text())
    (directory / "test.jsonl").write_text("".join(rows))
    return directory


def router_metrics(url: str) -> dict[str, dict[str, float]]:
    """smg's per-worker counters from its Prometheus endpoint: sent, answered, failed, circuit state,
    healthy, half-open transitions; under "router", its HTTP answers by status."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    workers: dict[str, dict[str, float]] = {}
    router: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            worker, labels = sample.labels.get("worker"), sample.labels
            key = {
                "smg_worker_requests_total": "sent",
                "smg_worker_cb_state": "circuit",
                "smg_worker_health": "healthy",
                "smg_worker_cb_outcomes_total": {"success": "answered", "failure": "failed"}.get(labels.get("outcome", "")),
                "smg_worker_cb_transitions_total": "half_open" if labels.get("to") == "half_open" else None,
            }.get(sample.name)
            if worker and key:
                workers.setdefault(worker, {})[key] = workers.get(worker, {}).get(key, 0) + sample.value
            if sample.name == "smg_http_responses_total" and labels.get("path") == "/v1/chat/completions":
                router[labels["status_code"]] = router.get(labels["status_code"], 0) + sample.value
    return {**workers, "router": router}


def _journal(out: Path) -> list[str]:
    """The request keys of the eval's journal, one per answered request (a torn last line left out)."""
    path = out / JOURNAL_NAME
    keys = []
    for line in path.read_text().splitlines() if path.exists() else []:
        with contextlib.suppress(json.JSONDecodeError):
            keys.append(json.loads(line)["key"])
    return keys


def kill_mid_eval(router_url: str, metrics_url: str, replicas: list[Replica], victim: int, data_dir: Path, limit: int,
                  kill_after: int, out: Path, recipe: str, timeout_s: float = 1200) -> dict:  # fmt: skip
    """GSM8K through the router; kill -9 of `replicas[victim]` once `kill_after` answers are journaled; what
    the eval and the router saw."""
    eval_out = out / "eval"
    command = [sys.executable, "-m", "eval", "gsm8k", "--recipe", recipe, "--base-url", router_url,
               "--data-dir", str(data_dir), "--limit", str(limit), "--output", str(eval_out)]  # fmt: skip
    started = time.monotonic()
    with (out / "eval.log").open("w") as log:
        evaluation = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        while len(_journal(eval_out)) < kill_after and evaluation.poll() is None:
            time.sleep(0.1)
        before = router_metrics(metrics_url)
        answered_at_kill = len(_journal(eval_out))
        os.killpg(replicas[victim].pgid, signal.SIGKILL)
        killed_s = time.monotonic() - started
        try:
            code = evaluation.wait(timeout_s)
        except subprocess.TimeoutExpired:
            evaluation.kill()
            code = evaluation.wait()
    after = router_metrics(metrics_url)
    keys = _journal(eval_out)
    results = eval_out / "results.json"
    samples = json.loads(results.read_text()).get("samples", []) if results.exists() else []
    per_replica = []
    for i, replica in enumerate(replicas):
        was, now = before.get(replica.url, {}), after.get(replica.url, {})
        per_replica.append({
            "replica": i, "url": replica.url, "killed": i == victim,
            **{f"{key}_before_kill": int(was.get(key, 0)) for key in ("sent", "answered")},
            **{f"{key}_after_kill": int(now.get(key, 0) - was.get(key, 0)) for key in ("sent", "answered", "failed")},
            "half_open_after_kill": int(now.get("half_open", 0) - was.get("half_open", 0)),
            "circuit_at_end": CIRCUIT.get(int(now.get("circuit", 0)), now.get("circuit")),
            "healthy_at_end": bool(now.get("healthy", 1)),
        })  # fmt: skip
    return {
        "questions": limit,
        "concurrency": load_recipe(recipe).recipe.eval.concurrency,
        "answered": len(set(keys)),
        "answered_twice": len(keys) - len(set(keys)),
        "scored": len(samples),
        "eval_exit_code": code,
        "answered_at_kill": answered_at_kill,
        "killed_at_s": round(killed_s, 1),
        "eval_s": round(time.monotonic() - started, 1),
        "router_answers": {status: int(n - before["router"].get(status, 0)) for status, n in after["router"].items()},
        "replicas": per_replica,
    }


def failures(report: dict) -> list[str]:
    """What the run must show: every question answered once and scored, the kill mid-run, the dead replica's
    circuit open or the replica marked unhealthy, and no more sends to it than smg's failure threshold, a
    probe per half-open circuit, and the requests in flight when its circuit opened."""
    problems = []
    if report["eval_exit_code"] != 0:
        problems.append(f"the eval exited with code {report['eval_exit_code']}")
    if report["answered"] != report["questions"] or report["scored"] != report["questions"]:
        problems.append(f"{report['answered']} questions answered and {report['scored']} scored of {report['questions']}")
    if report["answered_twice"]:
        problems.append(f"{report['answered_twice']} requests answered twice")
    if report["answered_at_kill"] >= report["questions"]:
        problems.append("the kill came after the last answer (lower --kill-after)")
    for row in report["replicas"]:
        allowed = CB_FAILURE_THRESHOLD + row["half_open_after_kill"] + report["concurrency"]
        if row["killed"] and (row["sent_after_kill"] > allowed or row["answered_after_kill"]):
            problems.append(f"replica {row['replica']} was sent {row['sent_after_kill']} requests after its kill (at most {allowed} "
                            f"expected) and answered {row['answered_after_kill']}")  # fmt: skip
        if row["killed"] and row["circuit_at_end"] == "closed" and row["healthy_at_end"]:
            problems.append(f"the router still counts replica {row['replica']} as up (circuit closed, healthy)")
    return problems


def print_report(report: dict) -> None:
    table = Table(title=f"GSM8K through smg, {report['questions']} questions; replica killed after {report['answered_at_kill']} "
                        f"answers ({report['killed_at_s']} s of {report['eval_s']} s)", title_justify="left")  # fmt: skip
    columns = ("replica", "url", "killed", "sent_before_kill", "answered_before_kill", "sent_after_kill", "answered_after_kill",
               "failed_after_kill", "half_open_after_kill", "circuit_at_end", "healthy_at_end")  # fmt: skip
    for column in columns:
        table.add_column(column.replace("_kill", "").replace("_at_end", " at end").replace("_", " "), overflow="fold")
    for row in report["replicas"]:
        table.add_row(*(str(row[c]) for c in columns))
    console = Console(width=200)
    console.print(table)
    shown = {k: v for k, v in report.items() if k != "replicas"}
    console.print(json.dumps(shown, indent=1), highlight=False)


def listener_pgid(port: int) -> int:
    """The process group of whatever listens on 127.0.0.1:`port` (the launcher starts each server in its own)."""
    import psutil

    for connection in psutil.net_connections(kind="tcp"):
        if connection.status == psutil.CONN_LISTEN and connection.laddr.port == port and connection.pid:
            return os.getpgid(connection.pid)
    raise RuntimeError(f"nothing listens on port {port}")


def live_processes(pgid: int) -> list[int]:
    """The processes of group `pgid` that still run (a zombie waiting for a reaper holds nothing)."""
    import psutil

    alive = []
    for process in psutil.process_iter(["status"]):
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(process.pid) == pgid and process.info["status"] != psutil.STATUS_ZOMBIE:
                alive.append(process.pid)
    return alive


def run(recipe: str, policy: str, limit: int, kill_after: int, out: Path, timeout_s: int) -> dict:
    from tests.gpu.rehearse import gpu_memory_used_mib  # imports what only a GPU host has

    data_dir = gsm8k_questions(limit, out / "gsm8k")
    report: dict = {"recipe": recipe, "router_policy": policy, "gpu_idle_mib": gpu_memory_used_mib()}
    groups: list[int] = []
    try:
        sets = [f"topology.router_policy={policy}"]
        with served(recipe, sets, out / "logs", timeout_s=timeout_s, flags=("--replicas", "2")) as router:
            report["ready_s"] = round(router.ready_s)
            report["launcher"] = [line.strip() for line in router.launcher_lines
                                  if line.startswith(("recipe needs", "shared GPUs", "memory"))]  # fmt: skip
            report["gpu_both_up_mib"] = gpu_memory_used_mib()
            port = int(router.base_url.rsplit(":", 1)[1])
            layout = load_recipe(recipe, [f"port={port}", "topology.replicas=2"]).recipe
            replicas = [Replica(f"http://127.0.0.1:{port + 1 + i}", listener_pgid(port + 1 + i)) for i in range(2)]
            groups = [r.pgid for r in replicas] + [listener_pgid(port)]
            metrics = f"http://127.0.0.1:{topology.metrics_port(layout)}/metrics"
            report.update(kill_mid_eval(router.base_url, metrics, replicas, 1, data_dir, limit, kill_after, out, recipe))
            report["gpu_after_kill_mib"] = gpu_memory_used_mib()
    except (ServerDidNotStart, RuntimeError, OSError) as error:  # OSError: the router's metrics did not answer
        report["error"] = f"{type(error).__name__}: {str(error)[-2000:]}"
    time.sleep(5)
    report["gpu_after_stop_mib"] = gpu_memory_used_mib()
    report["processes_left"] = [pid for pgid in groups for pid in live_processes(pgid)]
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.gpu.replicas", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--recipe", default="tiny-bf16", help="served as --replicas 2 (default tiny-bf16)")
    parser.add_argument("--limit", type=int, default=40, help="GSM8K questions (default 40)")
    parser.add_argument("--kill-after", type=int, default=10, help="answers before replica 1 is killed (default 10)")
    parser.add_argument("--policy", default="round_robin", help="smg's routing policy (default round_robin)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds each server may take to start (default 900)")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "runs")) / "replicas")
    args = parser.parse_args(argv)
    if reason := gpu_unavailable():
        print(f"replicas: skipped: {reason}; nothing was started", file=sys.stderr)
        return 0
    if missing := [name for name in NEEDED if importlib.util.find_spec(name) is None]:
        print(f"replicas: {', '.join(missing)} not installed here (this module's docstring says where from); nothing was started",
              file=sys.stderr)  # fmt: skip
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    report = run(args.recipe, args.policy, args.limit, args.kill_after, args.out, args.timeout)
    problems = [report["error"]] if "error" in report else failures(report)
    if report["processes_left"]:
        problems.append(f"processes of the servers or the router left after the stop: {report['processes_left']}")
    if report["gpu_after_stop_mib"] > report["gpu_idle_mib"] + GPU_SLACK_MIB:
        problems.append(f"GPU memory after the stop {report['gpu_after_stop_mib']} MiB, idle {report['gpu_idle_mib']} MiB")
    report["failures"] = problems
    (args.out / "replicas.json").write_text(json.dumps(report, indent=1) + "\n")
    if "replicas" in report:
        print_report(report)
    print("\n".join(f"FAIL {why}" for why in problems) or "PASS: every question answered once, the dead replica routed around, a clean stop")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())

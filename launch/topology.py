"""A recipe served beyond one process on one host, with SGLang's and smg's own mechanisms only.

* Multi-node (`topology.nodes` N): every host runs `python -m launch RECIPE --node-rank K --dist-init-addr
  HEAD:PORT`; each gets the same SGLang command plus `--nnodes N --node-rank K --dist-init-addr HEAD:PORT`
  (SGLang's own multi-node launch). Node 0 serves HTTP; the others join it and serve nothing themselves.
* Replicas (`topology.replicas` N): N SGLang servers on this host, replica i on the G GPUs its parallelism
  takes (tp × pp × dp) from `--base-gpu-id i * G`, bound to 127.0.0.1 on the recipe's port + 1 + i, and the Shepherd Model
  Gateway router (`smg`, SGLang's router continued; `python -m smg.launch_router`) on the recipe's host and
  port in front of them, with the recipe's `router_policy`; its Prometheus metrics (per replica: requests
  answered and failed, circuit-breaker state) on 127.0.0.1 at the recipe's port + N + 1. Only the router is
  reachable from outside. Where the host has fewer GPUs than the replicas take and `topology.replicas_per_gpu`
  does not say otherwise, K replicas share each set of G GPUs (`launch/memory.py` SharedGpu: the memory one
  server would take, split so that SGLang's fractions of the memory free at each one's start add up to it);
  the launcher starts them one after another, each once the one before answers. A replica that dies leaves
  the rest serving: smg retries its requests on another replica and, after 10 failed sends, its circuit
  breaker stops sending to it (smg's defaults).
"""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

from launch import hardware, server
from launch.errors import LaunchError
from launch.memory import SharedGpu
from launch.recipe import LoadedRecipe, Recipe

ROUTER_MODULE = "smg.launch_router"
_ADDRESS = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d{1,5})$")


def node_plan(loaded: LoadedRecipe, model_path: str, log_dir: Path, node_rank: int, dist_init_addr: str) -> server.ServerPlan:
    nodes = loaded.recipe.topology.nodes
    if not 0 <= node_rank < nodes:
        raise LaunchError(f"--node-rank {node_rank}: recipe {loaded.name} spans {nodes} nodes, ranks 0 to {nodes - 1}",
                          hint="give this host's rank in that range")  # fmt: skip
    match = _ADDRESS.match(dist_init_addr)
    if not match or not 0 < int(match.group(2)) < 65536:
        raise LaunchError(f"--dist-init-addr {dist_init_addr}: expected HOST:PORT", hint="the node-rank 0 host's address and a free port, e.g. 10.0.0.1:5000")
    extra = ("--nnodes", str(nodes), "--node-rank", str(node_rank), "--dist-init-addr", dist_init_addr)
    plan = server.plan(loaded, model_path, log_dir, extra=extra, label=f"node{node_rank}")
    return dataclasses.replace(plan, health=node_rank == 0)


def replicas_per_gpu(loaded: LoadedRecipe, machine: hardware.Machine) -> tuple[int, str]:
    """How many replicas share each GPU (each set of GPUs one replica takes), and why: the recipe's
    `topology.replicas_per_gpu` (named by the layer that set it), else as few as the suitable GPUs here allow
    (1 with enough of them, or with none, which the hardware check reports)."""
    recipe = loaded.recipe
    layout, gpus = recipe.topology, recipe.gpus_per_host
    if layout.replicas_per_gpu:
        where = loaded.where("topology", "replicas_per_gpu")
        return layout.replicas_per_gpu, where if where.startswith("--") else f"{where}: topology.replicas_per_gpu"
    found = len(hardware.suitable(recipe.hardware, machine))
    sets = found // gpus
    if sets == 0 or sets >= layout.replicas:
        return 1, ""
    return -(-layout.replicas // sets), f"{found} suitable GPU{'s' * (found > 1)} here for {layout.replicas} replicas of {gpus}"


def replica_plans(loaded: LoadedRecipe, model_path: str, log_dir: Path, sharing: SharedGpu | None = None) -> list[server.ServerPlan]:
    """Replica i on the GPUs from `--base-gpu-id`, `sharing.replicas` of them on each set of GPUs (each then
    with its mem-fraction-static, by the order they start in)."""
    recipe = loaded.recipe
    per_gpu = sharing.replicas if sharing else 1
    plans = []
    for i in range(recipe.topology.replicas):
        replica = loaded
        if sharing:
            server_args = {**recipe.server_args, "mem-fraction-static": sharing.fractions[i % per_gpu]}
            replica = dataclasses.replace(loaded, recipe=recipe.model_copy(update={"server_args": server_args}))
        plans.append(server.plan(replica, model_path, log_dir, host="127.0.0.1", port=recipe.port + 1 + i,
                                 extra=("--base-gpu-id", str(i // per_gpu * recipe.gpus_per_host)), label=f"replica{i}"))  # fmt: skip
    return plans


def router_plan(loaded: LoadedRecipe, replicas: list[server.ServerPlan], log_dir: Path, python: str = sys.executable) -> server.ServerPlan:
    recipe = loaded.recipe
    command = [python, "-m", ROUTER_MODULE, "--worker-urls", *(r.base_url for r in replicas),
               "--policy", recipe.topology.router_policy, "--host", recipe.host, "--port", str(recipe.port),
               "--prometheus-host", "127.0.0.1", "--prometheus-port", str(metrics_port(recipe))]  # fmt: skip
    key = server.api_key(loaded)
    if key:
        command += ["--api-key", key]
    log_path = replicas[0].log_path.with_name("router.log")
    return server.ServerPlan(command, {}, f"http://{recipe.host}:{recipe.port}", log_path, recipe.api_key_env if key else None,
                             ready_path="/v1/models")  # fmt: skip


def metrics_port(recipe: Recipe) -> int:
    """Where the router's Prometheus metrics are (on 127.0.0.1): the port after the replicas'. smg's default,
    29000 on every interface, would publish the replicas' addresses and clash between two routers on a host."""
    return recipe.port + recipe.topology.replicas + 1


def require_router() -> None:
    import importlib.util

    if importlib.util.find_spec("smg") is None:
        raise LaunchError(f"replicas need smg's router ({ROUTER_MODULE}), which is not installed",
                          hint="pip install -e '.[router]'")  # fmt: skip

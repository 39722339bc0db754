"""A recipe served beyond one process on one host, with SGLang's and smg's own mechanisms only.

* Multi-node (`topology.nodes` N): every host runs `python -m launch RECIPE --node-rank K --dist-init-addr
  HEAD:PORT`; each gets the same SGLang command plus `--nnodes N --node-rank K --dist-init-addr HEAD:PORT`
  (SGLang's own multi-node launch). Node 0 serves HTTP; the others join it and serve nothing themselves.
* Replicas (`topology.replicas` N): N SGLang servers on this host, replica i on the G GPUs its parallelism
  takes (tp × pp × dp) from `--base-gpu-id i * G`, bound to 127.0.0.1 on the recipe's port + 1 + i, and the Shepherd Model
  Gateway router (`smg`, SGLang's router continued; `python -m smg.launch_router`) on the recipe's host and
  port in front of them, with the recipe's `router_policy`. Only the router is reachable from outside.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

from launch import server
from launch.errors import LaunchError
from launch.recipe import LoadedRecipe

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


def replica_plans(loaded: LoadedRecipe, model_path: str, log_dir: Path) -> list[server.ServerPlan]:
    recipe = loaded.recipe
    gpus = recipe.gpus_per_host
    return [server.plan(loaded, model_path, log_dir, host="127.0.0.1", port=recipe.port + 1 + i,
                        extra=("--base-gpu-id", str(i * gpus)), label=f"replica{i}")
            for i in range(recipe.topology.replicas)]  # fmt: skip


def router_plan(loaded: LoadedRecipe, replicas: list[server.ServerPlan], log_dir: Path, python: str = sys.executable) -> server.ServerPlan:
    recipe = loaded.recipe
    command = [python, "-m", ROUTER_MODULE, "--worker-urls", *(r.base_url for r in replicas),
               "--policy", recipe.topology.router_policy, "--host", recipe.host, "--port", str(recipe.port)]  # fmt: skip
    key = server.api_key(loaded)
    if key:
        command += ["--api-key", key]
    log_path = replicas[0].log_path.with_name("router.log")
    return server.ServerPlan(command, {}, f"http://{recipe.host}:{recipe.port}", log_path, recipe.api_key_env if key else None,
                             ready_path="/v1/models")  # fmt: skip


def require_router() -> None:
    import importlib.util

    if importlib.util.find_spec("smg") is None:
        raise LaunchError(f"replicas need smg's router ({ROUTER_MODULE}), which is not installed",
                          hint="pip install -e '.[router]'")  # fmt: skip

"""python -m launch [RECIPE] — from a YAML recipe to a healthy SGLang server, in one command.

  python -m launch                      the default recipe (a tiny generated Qwen3.5-MoE, any single GPU)
  python -m launch RECIPE --dry-run     print the exact command and environment, start nothing
  python -m launch RECIPE --set tp-size=2 --set model.path=/models/x
  python -m launch RECIPE --stand-in sm90 --dry-run   the recipe as rehearsed on Hopper, substitutions listed
  python -m launch RECIPE --replicas 2   two servers on this host behind smg's router, one base URL
  python -m launch RECIPE --node-rank 1 --dist-init-addr 10.0.0.1:5000   one host of a multi-node recipe
  python -m launch --list               every recipe, whether it fits this machine, and where it can be rehearsed
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from launch import hardware, memory, server, topology
from launch.checkpoint import check_local_checkpoint, drafts_with_its_mtp_head, resolve_model_path
from launch.errors import LaunchError
from launch.overrides import Override
from launch.recipe import DEFAULT_RECIPE, LoadedRecipe, load_recipe, recipe_paths, release_of
from sglang_ext import SUPPORTED_SGLANG, supported_list

# Off a terminal (logs, CI, pipes) rich would wrap tables at 80 columns; recipe names need more.
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m launch", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("recipe", nargs="?", default=DEFAULT_RECIPE, help=f"name in recipes/ or a YAML path (default: {DEFAULT_RECIPE})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field (model.path=...) or SGLang option (tp-size=2); repeatable")
    p.add_argument("--stand-in", metavar="ARCH",
                   help="rehearse the recipe on GPU architecture ARCH (e.g. sm90) with the substitutions it lists "
                        "under stand_ins; everything else stays as the recipe says")  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="print the command and environment; start nothing")
    p.add_argument("--prepare", action="store_true",
                   help="start it until ready, then stop: a host's first start compiles kernels and captures CUDA "
                        "graphs (minutes), and the next start reuses what it compiled (e.g. while building an image)")  # fmt: skip
    p.add_argument("--replicas", type=int, metavar="N", help="N servers behind smg's router (same as --set topology.replicas=N)")
    p.add_argument("--node-rank", type=int, metavar="K", help="this host's rank in a multi-node recipe (topology.nodes)")
    p.add_argument("--dist-init-addr", metavar="HOST:PORT", help="a multi-node recipe's rendezvous: node 0's address and a free port")
    p.add_argument("--list", action="store_true", help="list all recipes and whether each fits this machine")
    p.add_argument("--timeout", type=float, default=1800, help="seconds to wait for /health (default 1800)")
    p.add_argument("--log-dir", type=Path, default=Path("runs"), help="where server logs go (default ./runs)")
    p.add_argument("--no-hardware-check", action="store_true", help="start even if the GPUs do not match the recipe")
    return p


def _expected(loaded: LoadedRecipe) -> str:
    return ", ".join(f"{e.task} {e.value:g}±{e.tolerance:g}" for e in loaded.recipe.expected) or "-"


def list_recipes(machine: hardware.Machine) -> int:
    table = Table(title=f"Recipes — this machine: {machine.summary()}", title_justify="left")
    for column in ("recipe", "model", "format", "hardware", "expected", "fits here", "stand-ins"):
        table.add_column(column, overflow="fold")
    here = sorted({gpu.arch for gpu in machine.gpus})
    failures = 0
    for name in recipe_paths():
        try:
            loaded = load_recipe(name)
        except LaunchError as error:
            failures += 1
            table.add_row(name, "[red]invalid recipe[/]", "", "", "", f"[red]{str(error).splitlines()[0]}[/]")
            continue
        r = loaded.recipe
        hw = r.hardware
        where = f"{hw.gpu_count}× {'/'.join(hw.gpu_names) or hw.vendor} {'/'.join(hw.archs)}".strip()
        reasons = hardware.misfits(hw, machine, hardware.gpus_needed(r))
        try:
            _check_sglang(loaded, machine)
        except LaunchError as problem:
            reasons.append(problem.args[0])
        fits = "[green]yes[/]" if not reasons else f"[yellow]no:[/] {'; '.join(reasons)}"
        rehearse = ", ".join(f"[green]{a}[/]" if a in here else a for a in sorted(r.stand_ins) if a not in hw.archs) or "-"
        table.add_row(name, r.model.path or f"tiny fixture ({r.model.fixture})", r.checkpoint_format, where,
                      _expected(loaded), fits, rehearse)  # fmt: skip
    out.print(table)
    return 1 if failures else 0


def print_substitutions(loaded: LoadedRecipe, arch: str) -> None:
    if not loaded.substitutions:
        err.print(f"{loaded.name} runs on {arch} as written: nothing to substitute")
        return
    show = lambda value: "[dim](unset)[/]" if value is None else str(value)  # noqa: E731
    table = Table(title=f"{loaded.name} rehearsed on {arch}: {loaded.recipe.stand_ins[arch].why.strip()}", title_justify="left")
    for column in ("setting", "card / recipe", f"stand-in ({arch})"):
        table.add_column(column, overflow="fold")
    for change in loaded.substitutions:
        table.add_row(change.key, show(change.card), show(change.stand_in))
    err.print(table)
    err.print("everything else (parallelism, KV cache dtype, page size, cache strategy, chunked prefill, speculative "
              "decoding, parsers) as the recipe says")  # fmt: skip


def _model_path(loaded: LoadedRecipe, materialize: bool) -> str:
    model = loaded.recipe.model
    if model.path:
        return resolve_model_path(model.path, loaded.where("model", "path"))
    try:
        from sglang_ext.fixtures import Variant, ensure_fixture, fixture_dir
    except ImportError as error:
        raise LaunchError(
            f"recipe {loaded.name} serves a generated tiny checkpoint, which needs {error.name}",
            hint="pip install -e '.[fixtures]'",
        )
    layout = model.fixture_mtp_experts
    variant = Variant(model.fixture_shape, model.fixture_mtp_acceptance, None if layout is None else layout == "fused")
    if not materialize:
        return str(fixture_dir(model.fixture, variant=variant))
    with err.status(f"writing the {model.fixture_shape} {model.fixture} checkpoint"):
        return str(ensure_fixture(model.fixture, variant=variant))


def _check_sglang(loaded: LoadedRecipe, machine: hardware.Machine) -> None:
    releases = loaded.recipe.sglang.version
    image = loaded.recipe.sglang.image
    install = " or ".join(f"pip install 'sglang=={v}'" for v in releases)
    if machine.sglang_version is None:
        raise LaunchError(
            f"SGLang is not installed for {sys.executable}",
            hint=install + (f", or run inside the image {image}" if image else ""),
        )
    if release_of(machine.sglang_version) not in releases:
        raise LaunchError(
            f"recipe {loaded.name} runs on SGLang {' or '.join(releases)}; this environment has {machine.sglang_version}",
            hint=f"{install} (sglang_ext supports {supported_list()}; a release is added to a recipe's "
            "sglang.version once its options and sglang_ext are checked there: docs/extending-sglang.md)",
        )


def sglang_status(loaded: LoadedRecipe, machine: hardware.Machine) -> str:
    """Which SGLang the server's command is for, and what that release means here, in one line."""
    release = loaded.recipe.sglang.release_for(machine.sglang_version)
    named = " and ".join(loaded.recipe.sglang.version)
    if machine.sglang_version is None:
        return f"SGLang: not installed here; the command is {release}'s (the recipe names {named})"
    if release_of(machine.sglang_version) != release:
        return (f"SGLang {machine.sglang_version}: not one the recipe names ({named}); the command is {release}'s "
                "and nothing starts with this SGLang")  # fmt: skip
    return f"SGLang {machine.sglang_version}: {SUPPORTED_SGLANG[release]}"


def launch(args: argparse.Namespace) -> int:
    machine = hardware.detect()
    if args.list:
        return list_recipes(machine)
    replica_count = [Override(f"topology.replicas={args.replicas}", f"--replicas {args.replicas}")] if args.replicas is not None else []
    loaded = load_recipe(args.recipe, [*args.overrides, *replica_count], stand_in=args.stand_in)
    recipe = loaded.recipe
    if args.stand_in:
        print_substitutions(loaded, args.stand_in)
    server.check_exposure(loaded)
    replicas = recipe.topology.replicas
    per_gpu, why_shared = topology.replicas_per_gpu(loaded, machine)
    gpus, counted = hardware.gpus_needed(recipe, per_gpu)
    reasons = hardware.misfits(recipe.hardware, machine, (gpus, counted))
    planning_only = args.dry_run or not machine.gpus
    model_path = _model_path(loaded, materialize=not args.dry_run)
    if check_local_checkpoint(model_path, recipe.checkpoint_format, loaded.name, drafts_with_its_mtp_head(recipe.server_args)):
        err.print(f"checkpoint: {model_path} matches its config.json ({recipe.checkpoint_format})")
    gpu = _gpu_bytes(recipe, machine)
    checkpoint = memory.checkpoint_memory(Path(model_path), recipe.server_args)
    try:
        sharing = memory.share_gpu(per_gpu, recipe.server_args, gpu, checkpoint) if per_gpu > 1 else None
    except LaunchError as error:
        raise LaunchError(f"{why_shared}: {error.args[0]}", hint=error.hint) from None
    memory_plan = sharing or (memory.plan(*checkpoint, gpu, recipe.server_args) if checkpoint and gpu else None)
    plans = _plans(loaded, model_path, args, planning_only, sharing)

    err.print(f"[bold]{loaded.name}[/]: {recipe.title}  [dim]({loaded.path})[/]")
    err.print(f"machine: {machine.summary()}")
    err.print(sglang_status(loaded, machine))
    err.print(f"recipe needs: {gpus}× {recipe.hardware.vendor} {' / '.join(recipe.hardware.archs) or 'any arch'} ({counted})"
              + (f", ≥{recipe.hardware.min_memory_gib:g} GiB each" if recipe.hardware.min_memory_gib else "")
              + (f", behind smg's router" if replicas > 1 else "")
              + (f", on each of {recipe.topology.nodes} hosts" if recipe.topology.nodes > 1 else ""))  # fmt: skip
    if sharing:
        err.print(f"shared GPUs ({why_shared}): {sharing.summary()}", soft_wrap=True)
        for line in sharing.plan_lines():
            err.print(f"memory, {line}", soft_wrap=True)
    elif memory_plan:
        err.print(f"memory: {memory_plan.summary()}", soft_wrap=True)
    if memory_plan:
        reasons += memory_plan.problems()
    if reasons:
        err.print(f"[yellow]does not fit this machine:[/] {'; '.join(reasons)}")
    if planning_only:
        if not machine.gpus and not args.dry_run:
            err.print("[yellow]no GPU here, so nothing is started[/] (SGLang cannot serve Qwen3.5 on a CPU: see "
                      "docs/cpu.md); this is the command a GPU machine would run:")
        for label, plan in plans:
            out.print(f"# {label}\n{server.render(plan)}" if len(plans) > 1 else server.render(plan), highlight=False, soft_wrap=True)
        return 0
    if memory_plan and not args.no_hardware_check:
        memory.require_fit(memory_plan, loaded.name)
    if reasons and not args.no_hardware_check:
        raise LaunchError(
            f"recipe {loaded.name} does not fit this machine: {'; '.join(reasons)}",
            hint="use a recipe for this hardware (`python -m launch --list`), or --no-hardware-check to try anyway",
        )
    _check_sglang(loaded, machine)
    for _, plan in plans:
        host, port = plan.base_url.removeprefix("http://").rsplit(":", 1)
        server.check_port_free(host, int(port))
    return _serve(plans, recipe.model.served_name, args.timeout, args.prepare)


def _gpu_bytes(recipe, machine: hardware.Machine) -> int | None:
    """The GPU memory to plan with: this machine's smallest GPU of the recipe's vendor, else the recipe's minimum."""
    usable = [g.memory_gib for g in machine.gpus if recipe.hardware.vendor in ("any", g.vendor)]
    gib = min(usable) if usable else recipe.hardware.min_memory_gib
    return int(gib * memory.GIB) if gib else None


def _plans(loaded: LoadedRecipe, model_path: str, args: argparse.Namespace, planning_only: bool,
           sharing: memory.SharedGpu | None) -> list[tuple[str, server.ServerPlan]]:  # fmt: skip
    """(label, plan) of every process this host starts: the server, a node of a multi-node server (every
    node when only planning), or the replicas and their router."""
    layout = loaded.recipe.topology
    if layout.nodes > 1:
        if args.dist_init_addr is None:
            raise LaunchError(f"recipe {loaded.name} spans {layout.nodes} hosts: give --dist-init-addr HEAD:PORT",
                              hint="the node-rank 0 host's address and a free port, and --node-rank K on each host")  # fmt: skip
        if args.node_rank is None and not planning_only:
            raise LaunchError(f"recipe {loaded.name} spans {layout.nodes} hosts: say which this one is",
                              hint=f"--node-rank K (0 to {layout.nodes - 1}); --dry-run without it prints every node's command")  # fmt: skip
        ranks = [args.node_rank] if args.node_rank is not None else range(layout.nodes)
        return [(f"node {k}", topology.node_plan(loaded, model_path, args.log_dir, k, args.dist_init_addr)) for k in ranks]
    if args.node_rank is not None or args.dist_init_addr is not None:
        raise LaunchError(f"--node-rank / --dist-init-addr: recipe {loaded.name} runs on one host (topology.nodes is 1)",
                          hint="drop them, or --set topology.nodes=N for a server spanning N hosts")  # fmt: skip
    if layout.replicas > 1:
        topology.require_router()
        replicas = topology.replica_plans(loaded, model_path, args.log_dir, sharing)
        router = topology.router_plan(loaded, replicas, args.log_dir)
        return [*((f"replica {i}", plan) for i, plan in enumerate(replicas)), ("router (smg)", router)]
    return [("server", server.plan(loaded, model_path, args.log_dir))]


def _serve(plans: list[tuple[str, server.ServerPlan]], served_name: str, timeout_s: float, prepare: bool = False) -> int:
    """Start every process in order, each ready before the next (replicas sharing a GPU rely on it); serve
    until the last (the server, or the router) exits or every replica behind it has, then stop them all.
    `prepare`: stop them all once ready."""
    with contextlib.ExitStack() as stack:
        running = []
        started = time.monotonic()
        for label, plan in plans:
            err.print(f"{label}: log {plan.log_path}")
            running.append((label, plan, stack.enter_context(server.running(plan, timeout_s))))
        if prepare:
            err.print(f"[green bold]prepared[/]: ready after {time.monotonic() - started:.0f} s, now stopped; the next start on "
                      f"this host reuses the kernels compiled now (start-up phases: {plans[0][1].log_path.with_name('startup.log')})")  # fmt: skip
            return 0
        label, front, front_process = running[-1]
        if front.health:
            err.print(f"[green bold]ready[/] at {front.base_url} ({label}); Ctrl-C stops {'it' if len(running) == 1 else 'all of them'}\n")
            out.print(server.usage_examples(front.base_url, served_name), highlight=False, soft_wrap=True)
        else:
            err.print(f"[green bold]{label} started[/]; it serves through node 0. Ctrl-C stops it")
        behind, gone = running[:-1], []
        while front_process.poll() is None and (not behind or len(gone) < len(behind)):
            for entry in behind:
                if entry not in gone and entry[2].poll() is not None:
                    gone.append(entry)
                    if len(gone) < len(behind):
                        err.print(f"[yellow]{entry[0]} exited with code {entry[2].returncode}[/]; the router serves with the "
                                  f"{len(behind) - len(gone)} left (log {entry[1].log_path})")  # fmt: skip
            time.sleep(1)
        label, plan, process = running[-1] if front_process.poll() is not None else gone[-1]
        raise LaunchError(f"{label} exited with code {process.returncode}; last log lines:\n{server.tail(plan.log_path)}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return launch(args)
    except LaunchError as error:
        err.print(f"[red bold]error:[/] {escape(str(error))}", highlight=False)
        return error.exit_code
    except KeyboardInterrupt:
        err.print("stopped; the server and its processes were shut down")
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""python -m launch [RECIPE] — from a YAML recipe to a healthy SGLang server, in one command.

  python -m launch                      the default recipe (a tiny generated Qwen3.5-MoE, any single GPU)
  python -m launch RECIPE --dry-run     print the exact command and environment, start nothing
  python -m launch RECIPE --set tp-size=2 --set model.path=/models/x
  python -m launch RECIPE --stand-in sm90 --dry-run   the recipe as rehearsed on Hopper, substitutions listed
  python -m launch --list               every recipe, whether it fits this machine, and where it can be rehearsed
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from launch import hardware, server
from launch.checkpoint import check_local_checkpoint, drafts_with_its_mtp_head, resolve_model_path
from launch.errors import LaunchError
from launch.recipe import DEFAULT_RECIPE, LoadedRecipe, load_recipe, recipe_paths

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
        reasons = hardware.misfits(hw, machine)
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
    variant = Variant(model.fixture_shape, model.fixture_mtp_acceptance, model.fixture_mtp_experts == "fused")
    if not materialize:
        return str(fixture_dir(model.fixture, variant=variant))
    with err.status(f"writing the {model.fixture_shape} {model.fixture} checkpoint"):
        return str(ensure_fixture(model.fixture, variant=variant))


def _check_sglang(loaded: LoadedRecipe, machine: hardware.Machine) -> None:
    wanted = loaded.recipe.sglang.version
    image = loaded.recipe.sglang.image
    if machine.sglang_version is None:
        raise LaunchError(
            f"SGLang is not installed for {sys.executable}",
            hint=f"pip install 'sglang=={wanted}'" + (f", or run inside the image {image}" if image else ""),
        )
    if machine.sglang_version.split("+")[0] != wanted:
        raise LaunchError(
            f"recipe {loaded.name} is pinned to SGLang {wanted}; this environment has {machine.sglang_version}",
            hint=f"pip install 'sglang=={wanted}', or --set sglang.version={machine.sglang_version} to try anyway",
        )


def launch(args: argparse.Namespace) -> int:
    machine = hardware.detect()
    if args.list:
        return list_recipes(machine)
    loaded = load_recipe(args.recipe, args.overrides, stand_in=args.stand_in)
    recipe = loaded.recipe
    if args.stand_in:
        print_substitutions(loaded, args.stand_in)
    reasons = hardware.misfits(recipe.hardware, machine)
    planning_only = args.dry_run or not machine.gpus
    model_path = _model_path(loaded, materialize=not args.dry_run)
    if check_local_checkpoint(model_path, recipe.checkpoint_format, loaded.name, drafts_with_its_mtp_head(recipe.server_args)):
        err.print(f"checkpoint: {model_path} matches its config.json ({recipe.checkpoint_format})")
    plan = server.plan(loaded, model_path, args.log_dir)

    err.print(f"[bold]{loaded.name}[/]: {recipe.title}  [dim]({loaded.path})[/]")
    err.print(f"machine: {machine.summary()}")
    err.print(f"recipe needs: {recipe.hardware.gpu_count}× {recipe.hardware.vendor} {' / '.join(recipe.hardware.archs) or 'any arch'}"
              + (f", ≥{recipe.hardware.min_memory_gib:g} GiB each" if recipe.hardware.min_memory_gib else ""))
    if reasons:
        err.print(f"[yellow]does not fit this machine:[/] {'; '.join(reasons)}")
    if planning_only:
        if not machine.gpus and not args.dry_run:
            err.print("[yellow]no GPU here, so nothing is started[/] (SGLang cannot serve Qwen3.5 on a CPU: see "
                      "docs/cpu.md); this is the command a GPU machine would run:")
        out.print(server.render(plan), highlight=False, soft_wrap=True)
        return 0
    if reasons and not args.no_hardware_check:
        raise LaunchError(
            f"recipe {loaded.name} does not fit this machine: {'; '.join(reasons)}",
            hint="use a recipe for this hardware (`python -m launch --list`), or --no-hardware-check to try anyway",
        )
    _check_sglang(loaded, machine)
    server.check_port_free(recipe.host, recipe.port)
    err.print(f"log: {plan.log_path}")
    with server.running(plan, args.timeout) as process:
        err.print(f"[green bold]ready[/] at {plan.base_url} (pid {process.pid}); Ctrl-C stops it\n")
        out.print(server.usage_examples(plan.base_url, recipe.model.served_name), highlight=False, soft_wrap=True)
        process.wait()
        raise LaunchError(f"SGLang exited with code {process.returncode}; last log lines:\n{server.tail(plan.log_path)}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return launch(args)
    except LaunchError as error:
        err.print(f"[red bold]error:[/] {error}", highlight=False)
        return error.exit_code
    except KeyboardInterrupt:
        err.print("stopped; the server and its processes were shut down")
        return 130


if __name__ == "__main__":
    sys.exit(main())

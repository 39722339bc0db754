"""Seed recipes rehearsed on one GPU: each served as its Hopper stand-in at TP1 on a real-shaped checkpoint
of what one of its GPUs holds (`qwen3.5-397b-a17b-tp4`, a quarter of the 397B, for the TP4 recipes; the
whole 35B-A3B for the one-GPU ones), through the launcher exactly as a user runs it (`python -m launch
RECIPE --stand-in sm90 --set tp-size=1 --set ep-size=1 --set model.path=DIR`, with the launcher's own
hardware and memory checks), then: chat through the OpenAI SDK (plain, streamed, with a tool, with an
image), the accept length of a speculative recipe, the GPU memory the server holds against the recipe's
`hardware.min_memory_gib`, and a clean stop (the GPU's memory back to what it was). `--concurrency` adds the
speed sweep (`python -m eval speed`, card 003's prompt shapes) while it serves; `--restart` starts it once
more, for the ready time of a host that has compiled its kernels (the first start's row says how many
compiled kernels the host held before it: none on a fresh one); `--fresh-kernel-cache` gives each recipe an
empty Triton cache of its own under OUT, so that its first start is a fresh host's on any host.

    python -m tests.gpu.rehearse [--recipes qwen3.5-397b-nvfp4-rtxpro6000-mtp,...] [--layers 4] [--out DIR]
    python -m tests.gpu.rehearse --recipes qwen3.6-35b-bf16-h100 --layers 40 --checkpoints /dev/shm   # 70 GB of BF16
    python -m tests.gpu.rehearse --recipes qwen3.6-35b-int8-h100 --checkpoint DIR   # e.g. sglang_ext.quantize's output
    python -m tests.gpu.rehearse --recipes qwen3.5-397b-nvfp4-rtxpro6000 --layers 16 --restart --concurrency 1,8,32,64

Results go to OUT/rehearse.json after every recipe (a run cut short keeps what finished) and as a table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from openai import APIError, OpenAI
from rich.console import Console
from rich.table import Table

from eval.perf.bench_decode import ensure_checkpoint
from eval.perf.bench_serving import require_importable, speed_command
from eval.perf.bench_spec import accept_length
from eval.speed import concurrency_list
from launch.recipe import load_recipe
from launch.server import repo_python_path
from sglang_ext.fixtures import FORMATS as FIXTURE_FORMATS
from tests.gpu import conformance_images as images
from tests.gpu.serving import ServerDidNotStart, served

SHAPE_OF_TP = {4: "qwen3.5-397b-a17b-tp4", 1: "qwen3.5-35b-a3b"}  # the recipe's own tp-size -> one GPU's shape
DEFAULT_RECIPES = "qwen3.5-397b-mxfp4-fse-mi355x-mtp,qwen3.5-397b-nvfp4-rtxpro6000-mtp"
# The offline SGLang bundle of the GPU hosts drops sgl-kernel's FA3 build, SGLang's Hopper default for the ViT;
# a recipe native to Hopper (the -h100 ones) leaves the ViT on it, and its server dies at the first request
# ("ImportError: Can not import FA3 in sgl_kernel"). A real H100 install has FA3, so the recipes keep the card's.
BUNDLE_VIT_ATTENTION = "mm-attention-backend=triton_attn"
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}  # fmt: skip


def gpu_memory_used_mib() -> int:
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return int(out.split()[0])


def image_message() -> dict:
    """A user turn with conformance's first picture as a base64 PNG `image_url`, as the OpenAI SDK sends one."""
    url = images.data_url(images.png(images.IMAGES[0]))
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": images.PROMPT}]
    return {"role": "user", "content": content}


def chat_checks(base_url: str, model: str) -> dict[str, object]:
    """Status of each request kind a card's users send: a plain chat, a streamed one, one offering a tool, one
    with an image (the checkpoint's BF16 ViT; its prompt tokens show the picture was encoded)."""
    client = OpenAI(base_url=f"{base_url}/v1", api_key="EMPTY")
    messages = [{"role": "user", "content": "What is 7*6?"}]
    plain = client.chat.completions.create(model=model, messages=messages, max_tokens=64, temperature=0)
    chunks = list(client.chat.completions.create(model=model, messages=messages, max_tokens=32, temperature=0, stream=True))
    tools = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Weather in Paris?"}],
                                           tools=[WEATHER_TOOL], max_tokens=32, temperature=0)  # fmt: skip
    image = client.chat.completions.create(model=model, messages=[image_message()], max_tokens=16, temperature=0)
    return {"chat_tokens": plain.usage.completion_tokens, "stream_chunks": len(chunks),
            "tools_finish": tools.choices[0].finish_reason, "image_prompt_tokens": image.usage.prompt_tokens,
            "image_tokens": image.usage.completion_tokens}  # fmt: skip


def compiled_kernels_on_host(env: dict[str, str] | None = None) -> str:
    """Files in the caches a first start fills, "TRITON/JIT" (Triton's kernels, SGLang's JIT-built modules such
    as Marlin's): "0/0" on a fresh host."""
    env = {**os.environ, **(env or {})}
    roots = [Path(env.get("TRITON_CACHE_DIR", Path.home() / ".triton" / "cache")),
             Path(env.get("TVM_FFI_CACHE_DIR", Path.home() / ".cache" / "tvm-ffi"))]  # fmt: skip
    return "/".join(str(sum(1 for path in root.rglob("*") if path.is_file()) if root.is_dir() else 0) for root in roots)


def speed_sweep(base_url: str, model: str, checkpoint: Path, concurrency: list[int], out: Path) -> list[dict] | str:
    """`python -m eval speed` against a serving recipe: per (prompt shape, concurrency) output tok/s, median TTFT
    and TPOT; or why it failed. Its full records stay in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(speed_command(base_url, model, checkpoint, concurrency, out),
                          env={**os.environ, "PYTHONPATH": repo_python_path()})  # fmt: skip
    speed = out / "speed.json"
    if done.returncode != 0 or not speed.is_file():
        return f"eval speed exit {done.returncode}; see {out}"
    return [{"shape": p["shape"], "concurrency": p["concurrency"], "output_tok_s": round(p["output_throughput"], 1),
             "median_ttft_ms": p["median_ttft_ms"], "median_tpot_ms": p["median_tpot_ms"]}
            for p in json.loads(speed.read_text())["points"]]  # fmt: skip


def fresh_cache(directory: Path) -> Path:
    """`directory`, emptied."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    return directory


def checkpoint_layers(checkpoint: Path) -> int:
    config = json.loads((checkpoint / "config.json").read_text())
    return int(config.get("text_config", config)["num_hidden_layers"])


def launcher_sets(recipe: str, checkpoint: Path, extra_sets: tuple[str, ...] = ()) -> list[str]:
    """The `--set`s one GPU rehearses RECIPE with: TP1/EP1 on CHECKPOINT, the bundle's ViT attention where the
    recipe leaves SGLang's default, then the caller's own."""
    server_args = load_recipe(recipe, stand_in="sm90").recipe.server_args
    vit = [] if "mm-attention-backend" in server_args else [BUNDLE_VIT_ATTENTION]
    return ["tp-size=1", "ep-size=1", f"model.path={checkpoint}", *vit, *extra_sets]


def one_gpu_shape(recipe: str) -> str:
    return SHAPE_OF_TP[int(load_recipe(recipe, stand_in="sm90").recipe.server_args.get("tp-size", 1))]


def rehearse(recipe: str, layers: int, out: Path, acceptance: float, given: Path | None = None,
             extra_sets: tuple[str, ...] = (), checkpoints: Path | None = None, concurrency: list[int] = (),
             restart: bool = False, fresh_kernel_cache: bool = False) -> dict[str, object]:  # fmt: skip
    loaded = load_recipe(recipe, ["tp-size=1", "ep-size=1"], stand_in="sm90")
    drafting = bool(loaded.recipe.server_args.get("speculative-algorithm"))
    fmt = loaded.recipe.checkpoint_format
    if given is None and fmt not in FIXTURE_FORMATS:
        written = ", ".join(FIXTURE_FORMATS)
        return {"recipe": recipe, "layers": layers,
                "error": f"sglang_ext.fixtures writes no {fmt} checkpoint ({written}): give one with --checkpoint"}
    if given is None:
        shape, share = one_gpu_shape(recipe), acceptance if drafting else 0.0
        checkpoint = ensure_checkpoint(checkpoints or out, shape, layers, fmt, share)
    else:
        checkpoint, layers = given, checkpoint_layers(given)
    # SGLang's JIT-built modules (Marlin: minutes of nvcc) stay shared: only Triton's kernels depend on what is captured
    env = {"TRITON_CACHE_DIR": str(fresh_cache(out / "triton-cache" / f"{recipe}-{layers}L"))} if fresh_kernel_cache else {}
    idle = gpu_memory_used_mib()
    row: dict[str, object] = {"recipe": recipe, "layers": layers, "checkpoint": str(checkpoint), "checkpoint_gib": round(
        sum(f.stat().st_size for f in checkpoint.glob("*.safetensors")) / 2**30, 1),
        "min_memory_gib": loaded.recipe.hardware.min_memory_gib, "cached_kernels": compiled_kernels_on_host(env)}  # fmt: skip
    sets = launcher_sets(recipe, checkpoint, extra_sets)
    model = loaded.recipe.model.served_name
    try:
        with served(recipe, sets, out / "logs", timeout_s=1500, flags=("--stand-in", "sm90"), env=env) as server:
            row["ready_s"] = round(server.ready_s)
            row["memory_plan"] = next((line.strip() for line in server.launcher_lines if line.startswith("memory:")), None)
            row["gpu_used_gib"] = round((gpu_memory_used_mib() - idle) / 1024, 1)
            try:
                row.update(chat_checks(server.base_url, model))
            except APIError as error:
                row["error"] = f"chat: {error}"
            if drafting:
                row["accept_length"] = accept_length(server.base_url)
            if concurrency:
                swept = speed_sweep(server.base_url, model, checkpoint, list(concurrency), out / "speed" / f"{recipe}-{layers}L")
                row["speed" if isinstance(swept, list) else "error"] = swept
    except ServerDidNotStart as error:
        row["error"] = str(error)[-2000:]
    time.sleep(5)
    row["gpu_after_stop_gib"] = round((gpu_memory_used_mib() - idle) / 1024, 1)
    if restart and "error" not in row:
        try:
            with served(recipe, sets, out / "logs", timeout_s=1500, flags=("--stand-in", "sm90"), env=env) as server:
                row["ready_again_s"] = round(server.ready_s)
        except ServerDidNotStart as error:
            row["error"] = f"restart: {error}"[-2000:]
    return row


def covers(row: dict, recipe: str, layers: int, concurrency: list[int], restart: bool, fresh: bool = False) -> bool:
    """A saved row that already answers this run for `recipe`: same depth, no error, swept, restarted and started
    on an empty Triton cache if asked."""
    swept = {p["concurrency"] for p in row.get("speed", [])}
    return (row["recipe"] == recipe and row["layers"] == layers and "error" not in row and set(concurrency) <= swept
            and (not restart or "ready_again_s" in row) and (not fresh or row.get("cached_kernels", "").startswith("0/")))  # fmt: skip


def print_table(rows: list[dict]) -> None:
    table = Table(title="Seed recipes as Hopper stand-ins at TP1 (one H200)", title_justify="left")
    columns = ("recipe", "layers", "checkpoint_gib", "cached_kernels", "ready_s", "ready_again_s", "gpu_used_gib",
               "min_memory_gib", "chat_tokens", "stream_chunks", "tools_finish", "image_prompt_tokens", "accept_length",
               "gpu_after_stop_gib", "error")  # fmt: skip
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(str(row.get(c, "-")) for c in columns))
    console = Console(width=200)
    console.print(table)
    swept = [row for row in rows if isinstance(row.get("speed"), list)]
    if not swept:
        return
    speed = Table(title="Speed sweep (eval speed: bench_serving, random ids)", title_justify="left")
    for column in ("recipe", "layers", "prompt shape", "concurrency", "output tok/s", "median TTFT ms", "median TPOT ms"):
        speed.add_column(column, justify="right")
    for row in swept:
        for p in row["speed"]:
            speed.add_row(row["recipe"], str(row["layers"]), p["shape"], str(p["concurrency"]), f"{p['output_tok_s']:.1f}",
                          f"{p['median_ttft_ms']:.0f}" if p["median_ttft_ms"] else "-",
                          f"{p['median_tpot_ms']:.2f}" if p["median_tpot_ms"] else "-")  # fmt: skip
    console.print(speed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.gpu.rehearse", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--recipes", default=DEFAULT_RECIPES, help=f"comma-separated (default {DEFAULT_RECIPES})")
    parser.add_argument("--layers", type=int, default=4, help="layers of the real-shaped checkpoint (default 4)")
    parser.add_argument("--acceptance", type=float, default=0.8, help="the MTP head's share P for -mtp recipes")
    parser.add_argument("--checkpoint", type=Path, metavar="DIR",
                        help="serve this checkpoint (its format the recipe's) instead of writing a real-shaped one")
    parser.add_argument("--checkpoints", type=Path, metavar="DIR",
                        help="write the real-shaped checkpoints under DIR/checkpoints "
                             "(default OUT; /dev/shm when the disk is small)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="a further launcher --set for every recipe "
                             "(e.g. mem-fraction-static=0.35 beside other servers)")
    parser.add_argument("--concurrency", type=concurrency_list, default=[], metavar="LIST",
                        help="also sweep each server with python -m eval speed at these concurrencies, e.g. 1,8,32,64")
    parser.add_argument("--restart", action="store_true",
                        help="start each recipe a second time: its ready time with the host's kernels compiled")
    parser.add_argument("--fresh-kernel-cache", action="store_true",
                        help="each recipe's first start compiles its Triton kernels into an empty cache (a fresh host's start)")
    parser.add_argument("--out", type=Path, default=Path("runs/rehearse"))
    args = parser.parse_args(argv)
    if args.checkpoint is not None and not (args.checkpoint / "config.json").is_file():
        parser.error(f"--checkpoint {args.checkpoint}: no config.json there")
    if args.concurrency:
        require_importable(parser)
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "rehearse.json"
    rows = json.loads(results.read_text()) if results.exists() else []
    layers = args.layers if args.checkpoint is None else checkpoint_layers(args.checkpoint)
    for recipe in args.recipes.split(","):
        if any(covers(r, recipe, layers, args.concurrency, args.restart, args.fresh_kernel_cache) for r in rows):
            continue
        rows.append(rehearse(recipe, layers, args.out, args.acceptance, args.checkpoint, tuple(args.sets), args.checkpoints,
                             args.concurrency, args.restart, args.fresh_kernel_cache))  # fmt: skip
        results.write_text(json.dumps(rows, indent=1) + "\n")
        print(json.dumps(rows[-1]), flush=True)
    print_table(rows)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())

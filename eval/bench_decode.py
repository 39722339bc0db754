"""Decode speed of each checkpoint format at real Qwen3.5 shapes, through SGLang's one-batch benchmark.

    python -m eval.bench_decode [--shape qwen3.5-35b-a3b] [--layers 8] [--formats bf16,quark-w8a8-int8,...]
                                [--batch-sizes 1,8,32,64,128] [--set FORMAT:KEY=VALUE ...] [--out DIR]

SGLang's options for each format come from its tiny recipe (recipes/tiny-*.yaml, the recipe whose
model.fixture is that format), with `--set FORMAT:KEY=VALUE` on top; e.g. ct-mxfp4 at real shapes wants
`--set ct-mxfp4:moe-runner-backend=marlin` (qwen3.5-35b-mxfp4-h100.yaml), which the tiny model's hidden
size cannot take. For each format it writes a real-shaped random checkpoint on the GPU (`sglang_ext.fixtures`, valid scales:
no Inf/NaN reaching the kernels), then runs `python -m sglang.bench_one_batch` on it, once per fused-
shared-expert setting where the format allows both. It prints one table and writes bench_decode.json:
median decode step latency and tok/s per batch size, per-layer milliseconds, the ratio against BF16 at the
same batch size from this same run, and a roofline: the weight bytes one decode step must read (every
dense weight, plus the routed experts a batch of that size touches on average under uniform routing)
divided by the HBM bandwidth measured here, and the fraction of it achieved.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from launch.errors import LaunchError
from launch.recipe import load_recipe, recipe_paths
from sglang_ext.fixtures import write_fixture
from sglang_ext.formats.safetensors_headers import read_checkpoint

REPO = Path(__file__).resolve().parent.parent
FSE_FORMATS = ("bf16", "quark-w8a8-int8", "quark-mxfp4-fse")  # shared expert in the routed precision
MEM_FRACTION = "mem-fraction-static=0.8"  # one benchmark process owns the GPU


def server_args(fmt: str, sets: list[str]) -> list[str]:
    """SGLang options for `fmt`: its tiny recipe's server_args, the GPU's memory, then `sets` (KEY=VALUE)."""
    names = [name for name in recipe_paths() if name.startswith("tiny-")]
    recipe = next((n for n in names if load_recipe(n).recipe.model.fixture == fmt), None)
    if recipe is None:
        raise LaunchError(f"no tiny recipe serves format {fmt!r}", hint=f"one of: {', '.join(names)}")
    return load_recipe(recipe, [MEM_FRACTION, *sets]).server_cli


@dataclass
class Row:
    case: str
    fmt: str
    fse: bool | None
    batch: int
    decode_ms: float
    tok_s: float
    ms_per_layer: float
    vs_bf16: float | None
    floor_ms: float
    bandwidth_fraction: float


def hbm_bandwidth_gbs() -> float:
    """Device-to-device copy of 4 GiB: bytes read + written per second (GB/s)."""
    import torch

    x = torch.empty(4 << 30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        y.copy_(x)
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / 10
    del x, y
    return 2 * (4 << 30) / seconds / 1e9


def decode_bytes(checkpoint: Path, config: dict, batch: int) -> float:
    """Weight bytes one decode step reads: dense weights once, routed experts as many as `batch` tokens
    touch on average (E * (1 - (1 - k/E)**batch) per layer). Embedding rows and the MTP/ViT are not read."""
    text = config["text_config"]
    experts, top_k = text["num_experts"], text["num_experts_per_tok"]
    touched = experts * (1 - (1 - top_k / experts) ** batch)
    routed = dense = 0
    for entry in read_checkpoint(checkpoint):
        if entry.name.startswith(("mtp.", "model.visual.")) or "embed_tokens" in entry.name:
            continue
        if ".mlp.experts." in entry.name:
            routed += entry.nbytes
        else:
            dense += entry.nbytes
    return dense + routed * touched / experts


def run_case(checkpoint: Path, args: list[str], fse: bool | None, batches: list[int], out: Path, log: Path) -> dict[int, dict]:
    result_file = out / f"{checkpoint.name}-fse{fse}.jsonl"
    result_file.unlink(missing_ok=True)
    command = [sys.executable, "-m", "sglang.bench_one_batch", "--model-path", str(checkpoint),
               "--batch-size", *map(str, batches), "--input-len", "256", "--output-len", "32",
               "--result-filename", str(result_file), *args]  # fmt: skip
    if fse is False:
        command.append("--disable-shared-experts-fusion")
    env = {**os.environ, "SGLANG_EXTERNAL_MODEL_PACKAGE": "sglang_ext.models",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}  # fmt: skip
    with log.open("w") as handle:
        done = subprocess.run(command, env=env, stdout=handle, stderr=subprocess.STDOUT, timeout=900)
    if done.returncode != 0:
        tail = log.read_text().splitlines()[-15:]
        raise RuntimeError(f"bench_one_batch failed for {checkpoint.name} (fse={fse}):\n" + "\n".join(tail))
    rows = [json.loads(line) for line in result_file.read_text().splitlines() if line.strip()]
    return {row["batch_size"]: row for row in rows}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.bench_decode", description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="qwen3.5-35b-a3b")
    parser.add_argument("--layers", type=int, default=8, help="decoder layers (memory); per-layer ms reported")
    parser.add_argument("--formats", default="bf16,quark-w8a8-int8,quark-mxfp4-fse,modelopt-nvfp4,ct-mxfp4")
    parser.add_argument("--batch-sizes", default="1,8,32,64,128")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="FORMAT:KEY=VALUE",
                        help="an SGLang option for one format on top of its tiny recipe")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "runs")) / "bench_decode")
    args = parser.parse_args()
    formats = args.formats.split(",")
    batches = [int(b) for b in args.batch_sizes.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    # Every recipe or --set error surfaces here, before any GPU work.
    if bad := [item for item in args.sets if ":" not in item]:
        parser.error(f"--set {bad[0]}: expected FORMAT:KEY=VALUE, e.g. ct-mxfp4:moe-runner-backend=marlin")
    sets = [item.split(":", 1) for item in args.sets]
    try:
        per_format = {fmt: server_args(fmt, [kv for name, kv in sets if name == fmt]) for fmt in formats}
    except LaunchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1

    bandwidth = hbm_bandwidth_gbs()
    print(f"HBM bandwidth (copy): {bandwidth:.0f} GB/s", flush=True)
    rows: list[Row] = []
    failures: dict[str, str] = {}
    for fmt in formats:
        checkpoint = args.out / "checkpoints" / f"{args.shape}-{args.layers}L-{fmt}"
        started = time.perf_counter()
        write_fixture(checkpoint, fmt, shape=args.shape, num_layers=args.layers, device="cuda")
        print(f"{fmt}: wrote {checkpoint.name} in {time.perf_counter() - started:.0f} s", flush=True)
        config = json.loads((checkpoint / "config.json").read_text())
        for fse in ((True, False) if fmt in FSE_FORMATS else (None,)):
            case = f"{fmt}" + {True: " fse", False: " no-fse", None: ""}[fse]
            try:
                measured = run_case(checkpoint, per_format[fmt], fse, batches, args.out, args.out / f"{case.replace(' ', '-')}.log")
            except (RuntimeError, subprocess.TimeoutExpired) as error:
                failures[case] = str(error)
                print(f"{case}: FAILED\n{error}", flush=True)
                continue
            for batch, row in sorted(measured.items()):
                latency = row["median_decode_latency"]
                floor = decode_bytes(checkpoint, config, batch) / (bandwidth * 1e9)
                rows.append(Row(case, fmt, fse, batch, latency * 1e3, batch / latency, latency * 1e3 / args.layers,
                                None, floor * 1e3, floor / latency))  # fmt: skip
        if fmt != "bf16":
            for path in checkpoint.glob("*.safetensors"):
                path.unlink()  # disk: one real-shaped checkpoint at a time besides BF16
    baseline = {r.batch: r.decode_ms for r in rows if r.case in ("bf16 fse",)} or {
        r.batch: r.decode_ms for r in rows if r.fmt == "bf16"
    }
    for r in rows:
        r.vs_bf16 = baseline[r.batch] / r.decode_ms if r.batch in baseline else None
    report = {"shape": args.shape, "layers": args.layers, "hbm_gbs": bandwidth,
              "rows": [asdict(r) for r in rows], "failures": failures}  # fmt: skip
    (args.out / "bench_decode.json").write_text(json.dumps(report, indent=2) + "\n")
    print_table(rows, args.shape, args.layers)
    return 1 if failures else 0


def print_table(rows: list[Row], shape: str, layers: int) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"decode, {shape} with {layers} layers (sglang.bench_one_batch, in 256 / out 32)")
    for column in ("case", "batch", "ms/step", "tok/s", "ms/layer", "× BF16", "floor ms", "of floor"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(r.case, str(r.batch), f"{r.decode_ms:.2f}", f"{r.tok_s:.0f}", f"{r.ms_per_layer:.3f}",
                      f"{r.vs_bf16:.2f}" if r.vs_bf16 else "", f"{r.floor_ms:.2f}", f"{r.bandwidth_fraction:.0%}")  # fmt: skip
    Console(width=140).print(table)


if __name__ == "__main__":
    sys.exit(main())

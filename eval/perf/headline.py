"""The line docs/performance.md opens with, from one run: BF16 batch-1 decode against the weight-byte floor
(the CUDA graph's GPU time), and serving TPOT at concurrency 1 against SGLang 0.5.17 alone.

    python -m eval.perf.headline [--shape qwen3.5-35b-a3b] [--layers 40] [--set bf16:KEY=VALUE ...] [--out DIR]

In one --out, each step resuming what it saved there: the HBM copy bandwidth; `eval.perf.profile_decode
--formats bf16 --fse on --batch-sizes 1` (graph time); `eval.perf.bench_serving --formats bf16 --concurrency 1
--stock-sglang` (this repository's BF16 server, FSE on and off, and SGLang alone). The --set items go to both
steps (e.g. `--set bf16:env.SGLANG_EXT_SMALL_M_GEMV=1`), not to SGLang alone. The floor is the weight bytes a
batch-1 step reads (`byte_bound.decode_bytes` of the checkpoint) over that bandwidth; "× stock" is the lower of
card 003's two prompt shapes' TPOT ratios. Prints the line and writes headline.json with every number it is made
of. Forty BF16 layers of the 35B are about 78 GB: on a host with a small disk, --out on /dev/shm.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from eval.perf import bench_decode, bench_serving, byte_bound
from launch import server

FORMAT = "bf16"


def steps(args: argparse.Namespace) -> list[list[str]]:
    common = ["--shape", args.shape, "--layers", str(args.layers), "--formats", FORMAT,
              *(f"--set={item}" for item in args.sets), "--out", str(args.out)]  # fmt: skip
    return [
        [sys.executable, "-m", "eval.perf.profile_decode", *common, "--fse", "on", "--batch-sizes", "1"],
        [sys.executable, "-m", "eval.perf.bench_serving", *common, "--concurrency", "1", "--stock-sglang"],
    ]


def bandwidth_gbs(out: Path) -> float | None:
    """The HBM copy bandwidth: measured here on a GPU (and saved), else the one --out saved."""
    saved = out / "bandwidth.json"
    import torch

    if torch.cuda.is_available():
        saved.write_text(json.dumps({"hbm_copy_gbs": bench_decode.hbm_bandwidth_gbs()}) + "\n")
    return json.loads(saved.read_text())["hbm_copy_gbs"] if saved.exists() else None


def headline(out: Path, shape: str, layers: int, bandwidth: float | None) -> dict:
    """The numbers the line is made of, from what the steps saved in `out`; a missing one is None."""
    profile_file, serving_file = out / "profile_decode.json", out / "bench_serving.json"
    profiles = json.loads(profile_file.read_text())["profiles"] if profile_file.exists() else []
    graph_us = next((p["graph_us"] for p in profiles if p["fmt"] == FORMAT and p["fse"] and p["batch"] == 1), None)
    checkpoint = bench_decode.checkpoint_path(out, shape, layers, FORMAT)
    floor_us = None
    if bandwidth and (checkpoint / "config.json").exists():
        config = json.loads((checkpoint / "config.json").read_text())
        floor_us = byte_bound.decode_bytes(checkpoint, config, 1) / (bandwidth * 1e9) * 1e6
    rows = json.loads(serving_file.read_text())["rows"] if serving_file.exists() else []
    served = {r["shape"]: r for r in rows if r["case"] == bench_decode.BASELINE.label and r["concurrency"] == 1}
    stock = {r["shape"]: r for r in rows if r["case"] == bench_serving.STOCK.label and r["concurrency"] == 1}
    tpot = {shape_: {"served_ms": served[shape_]["median_tpot_ms"], "stock_ms": stock[shape_]["median_tpot_ms"]}
            for shape_ in served.keys() & stock.keys()}  # fmt: skip
    ratios = [t["stock_ms"] / t["served_ms"] for t in tpot.values() if t["served_ms"] and t["stock_ms"]]
    return {
        "shape": shape, "layers": layers, "hbm_copy_gbs": bandwidth, "graph_us": graph_us, "floor_us": floor_us,
        "of_floor": floor_us / graph_us if floor_us and graph_us else None,
        "tpot_concurrency_1": dict(sorted(tpot.items())), "vs_stock": min(ratios) if ratios else None,
    }  # fmt: skip


def line(numbers: dict) -> str:
    share = f"{numbers['of_floor'] * 100:.0f}%" if numbers["of_floor"] else "?% (not measured)"
    times = f"{numbers['vs_stock']:.2f}×" if numbers["vs_stock"] else "?× (not measured)"
    return (f"Headline: batch-1 decode at {share} of the bandwidth floor (graph time, BF16, {numbers['layers']} layers), "
            f"{times} stock SGLang 0.5.17 serving TPOT at concurrency 1.")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.perf.headline", description=__doc__.split("\n\n")[0])
    bench_decode.add_checkpoint_arguments(parser, formats=FORMAT)
    parser.set_defaults(layers=40)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "runs")) / "headline")
    args = parser.parse_args()
    if args.formats != FORMAT:
        parser.error(f"--formats {args.formats}: the headline is BF16's; leave --formats out")
    bench_decode.format_options(parser, args)  # a bad --set is a usage error now, before any GPU work
    args.out.mkdir(parents=True, exist_ok=True)
    bandwidth = bandwidth_gbs(args.out)
    codes = [subprocess.run(step, env={**os.environ, "PYTHONPATH": server.repo_python_path()}).returncode
             for step in steps(args)]  # fmt: skip
    numbers = headline(args.out, args.shape, args.layers, bandwidth)
    numbers["exit_codes"] = dict(zip(("profile_decode", "bench_serving"), codes, strict=True))
    (args.out / "headline.json").write_text(json.dumps(numbers, indent=2) + "\n")
    print(line(numbers))
    return 0 if numbers["of_floor"] and numbers["vs_stock"] else 1


if __name__ == "__main__":
    sys.exit(main())

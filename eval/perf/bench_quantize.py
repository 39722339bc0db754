"""How fast `sglang_ext.quantize` turns BF16 into each format on this machine, and what that means for the real models.

    python -m eval.perf.bench_quantize [--layers 2] [--experts 32] [--threads 1,2] [--formats ...] [--out DIR]

Writes a random BF16 checkpoint with the Qwen3.5-35B-A3B's per-layer shapes (hidden 2048, expert and shared
intermediate 512, its attention and DeltaNet heads) but `--experts` routed experts, `--layers` decoder layers
and a 16k vocabulary, one shard per layer as published checkpoints are cut; then quantizes it into every
format with 1, 2, ... torch threads. Reported: MB of BF16 read per second, per core (the rate divided by the
threads), and the hours the 35B-A3B (~70 GB BF16) and the 397B-A17B (~800 GB BF16) would take at that rate
on one core and on this machine's cores. The source is read back from the page cache: on a disk slower than
the rate, the disk is the limit. Prints a table and writes bench_quantize.json. A benchmark, not a test.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from safetensors.torch import save_file

from sglang_ext.fixtures import TOKENIZER_FILES
from sglang_ext.fixtures.model_config import TOKENIZER_DIR, json_files, write_json
from sglang_ext.fixtures.tensors import checkpoint_specs, materialize
from sglang_ext.formats.encoders import FORMATS, Options
from sglang_ext.formats.safetensors_headers import INDEX_FILE
from sglang_ext.quantize import quantize

SHAPE = "qwen3.5-35b-a3b"
VOCAB = 16384
REAL_BF16_BYTES = {"Qwen3.5-35B-A3B": 70e9, "Qwen3.5-397B-A17B": 800e9}
# The options each format is benchmarked with: the card's, where they cost more than the default.
BENCH_OPTIONS = {"modelopt-nvfp4": Options(input_amax=8.0)}


def _shard_of(name: str) -> str:
    parts = name.split(".")
    if name.startswith("model.language_model.layers."):
        return f"layer{int(parts[3]):03d}"
    return "mtp" if name.startswith("mtp.") else "rest"


def write_source(outdir: Path, num_layers: int, num_experts: int, vocab_size: int = VOCAB, seed: int = 0) -> Path:
    """A BF16 checkpoint of the 35B-A3B's per-layer shapes with `num_experts` experts, one shard per decoder
    layer (plus MTP and the rest), each drawn and written on its own so that writing it takes one layer's memory."""
    files = json_files(SHAPE, num_layers, vocab_size)
    config = files["config.json"]
    config["text_config"]["num_experts"] = num_experts
    groups: dict[str, list] = defaultdict(list)
    for spec in checkpoint_specs(config):
        groups[_shard_of(spec.name)].append(spec)
    outdir.mkdir(parents=True, exist_ok=True)
    weight_map, total = {}, 0
    for index, (group, specs) in enumerate(sorted(groups.items())):
        shard = f"model-{index + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {spec.name: materialize(spec, seed) for spec in specs}
        save_file(tensors, str(outdir / shard), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, shard))
        total += sum(t.numel() * t.element_size() for t in tensors.values())
    write_json(outdir / INDEX_FILE, {"metadata": {"total_size": total}, "weight_map": weight_map})
    for name, content in files.items():
        write_json(outdir / name, content)
    for name in TOKENIZER_FILES:
        shutil.copyfile(TOKENIZER_DIR / name, outdir / name)
    return outdir


def bench(source: Path, scratch: Path, formats: list[str], threads: list[int]) -> list[dict]:
    rows = []
    for fmt in formats:
        for count in threads:
            torch.set_num_threads(count)
            out = scratch / f"{fmt}-{count}"
            started = time.perf_counter()
            record = quantize(source, out, fmt, BENCH_OPTIONS.get(fmt, Options()), show_progress=False)
            seconds = time.perf_counter() - started
            rate = record.source_bytes / 1e6 / seconds
            rows.append({"format": fmt, "threads": count, "bf16_bytes": record.source_bytes, "seconds": round(seconds, 2),
                         "mb_per_s": round(rate, 1), "mb_per_s_per_core": round(rate / count, 1)})  # fmt: skip
            shutil.rmtree(out)
    return rows


def projections(rows: list[dict], cores: int) -> dict[str, dict[str, float]]:
    """Hours per model and format: one core at the single-thread rate, this machine at its all-cores rate."""
    out: dict[str, dict[str, float]] = {}
    for fmt in sorted({row["format"] for row in rows}):
        mine = [row for row in rows if row["format"] == fmt]
        single = min(mine, key=lambda row: row["threads"])
        full = max(mine, key=lambda row: row["threads"])
        for model, nbytes in REAL_BF16_BYTES.items():
            out.setdefault(model, {})[f"{fmt} 1 core"] = round(nbytes / 1e6 / single["mb_per_s_per_core"] / 3600, 1)
            out[model][f"{fmt} {full['threads']} threads"] = round(nbytes / 1e6 / full["mb_per_s"] / 3600, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.perf.bench_quantize", description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--experts", type=int, default=32)
    parser.add_argument("--threads", default=",".join(sorted({"1", str(os.cpu_count() or 1)})))
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "runs")) / "bench_quantize")
    args = parser.parse_args(argv)
    formats = args.formats.split(",")
    threads = sorted(int(count) for count in args.threads.split(","))
    with tempfile.TemporaryDirectory(prefix="bench_quantize.") as scratch:
        source = write_source(Path(scratch) / "bf16", args.layers, args.experts)
        rows = bench(source, Path(scratch), formats, threads)
    cores = os.cpu_count() or 1
    result = {"shape": f"{SHAPE} per layer, {args.experts} experts, {args.layers} layers, vocab {VOCAB}", "cores": cores,
              "torch": torch.__version__, "rows": rows, "projected_hours": projections(rows, cores)}  # fmt: skip
    print(f"{result['shape']}; {cores} cores")
    print(f"{'format':<16} {'threads':>7} {'GB BF16':>8} {'s':>7} {'MB/s':>7} {'MB/s/core':>9}")
    for row in rows:
        print(f"{row['format']:<16} {row['threads']:>7} {row['bf16_bytes'] / 1e9:>8.2f} {row['seconds']:>7.1f} "
              f"{row['mb_per_s']:>7.1f} {row['mb_per_s_per_core']:>9.1f}")  # fmt: skip
    for model, hours in result["projected_hours"].items():
        print(f"{model}: " + ", ".join(f"{key} {value:g} h" for key, value in hours.items()))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_quantize.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out / 'bench_quantize.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The bytes a decode step must read: the bound a memory-bound step cannot beat at a given bandwidth.

    python -m eval.perf.byte_bound [--shape qwen3.5-35b-a3b] [--layers 40] [--batch-sizes 1,8,32,64]
                                   [--context 272] [--mamba-ssm-dtype float32] [--formats bf16,...] [--out DIR]

prints, for each checkpoint format, what one decode step reads: the weights (from the format's on-disk layout,
no checkpoint needed), and the per-sequence cache every format reads alike (the DeltaNet recurrent and conv
state, read and written back; the attention layers' KV at `--context` tokens). Its speed-up bound over BF16
with and without the cache says how much of the weight bytes' promise a format can keep at each batch size:
at batch 64 the DeltaNet state is gigabytes per step whatever the experts are stored in. `--mamba-ssm-dtype`
(SGLang's option of that name; float32 by default) shows what a narrower recurrent state would save. Writes
byte_bound.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from sglang_ext.fixtures.model_config import SHAPES, model_config
from sglang_ext.formats.safetensors_headers import StoredEntry, read_checkpoint

# Bytes per element of the safetensors dtypes the checkpoint formats store.
DTYPE_BYTES = {"BF16": 2, "F16": 2, "F32": 4, "U8": 1, "I8": 1, "F8_E4M3": 1}
TORCH_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# sglang.benchmark.one_batch as the decode benchmarks run it: 256 prompt tokens, then 32 decoded; a step sees
# 272 tokens of context on average.
ONE_BATCH_CONTEXT = 256 + 32 // 2


def _read_shares(entries: Iterable[StoredEntry], config: dict, tokens: int, draft: bool) -> Iterable[tuple[StoredEntry, float]]:
    """Each weight a forward of `tokens` tokens reads, with the share of it read: dense weights whole, a routed
    expert tensor by the share of experts the tokens touch on average (1 - (1 - k/E)**tokens)."""
    text = config["text_config"]
    experts, top_k = text["num_experts"], text["num_experts_per_tok"]
    touched = 1 - (1 - top_k / experts) ** tokens
    for entry in entries:
        if entry.name.startswith("model.visual.") or "embed_tokens" in entry.name:
            continue
        if entry.name != "lm_head.weight" and entry.name.startswith("mtp.") != draft:
            continue
        yield entry, touched if ".mlp.experts." in entry.name else 1.0


def weight_bytes(entries: Iterable[StoredEntry], config: dict, tokens: int, *, draft: bool = False) -> float:
    """Weight bytes one forward of `tokens` tokens reads, from a checkpoint's tensors: dense weights once, routed
    experts as many as the tokens touch on average (E * (1 - (1 - k/E)**tokens) per layer). The target model's,
    or with `draft` the MTP layer's and the lm_head it shares. Embedding rows (a gather) and the ViT are not
    counted."""
    return sum(entry.nbytes * share for entry, share in _read_shares(entries, config, tokens, draft))


def decode_bytes(checkpoint: Path, config: dict, batch: int) -> float:
    """Weight bytes one decode step of `batch` sequences reads (`weight_bytes` of the target model)."""
    return weight_bytes(read_checkpoint(checkpoint), config, batch)


def deltanet_state_bytes(config: dict, batch: int) -> float:
    """The DeltaNet state one decode step reads and writes back, as SGLang 0.5.17 keeps it
    (`Mamba2StateShape`): per sequence and DeltaNet layer, the recurrent state (value heads x value dim x key
    dim, in `mamba_ssm_dtype`, SGLang's default float32) and the conv state (query, key and value channels x
    kernel - 1 tokens, SGLang's default bfloat16)."""
    text = config["text_config"]
    layers = text["layer_types"].count("linear_attention")
    key_dim = text["linear_num_key_heads"] * text["linear_key_head_dim"]
    value_dim = text["linear_num_value_heads"] * text["linear_value_head_dim"]
    recurrent = value_dim * text["linear_key_head_dim"] * TORCH_DTYPE_BYTES[text.get("mamba_ssm_dtype", "float32")]
    conv = (2 * key_dim + value_dim) * (text["linear_conv_kernel_dim"] - 1) * TORCH_DTYPE_BYTES["bfloat16"]
    return 2.0 * (recurrent + conv) * layers * batch


def kv_bytes(config: dict, batch: int, context: int, element_bytes: int = 2) -> float:
    """The KV cache one decode step reads: keys and values of `context` tokens per sequence and attention layer
    (`element_bytes` 2 for a BF16 cache, 1 for FP8)."""
    text = config["text_config"]
    layers = text["layer_types"].count("full_attention")
    return 2.0 * text["num_key_value_heads"] * text["head_dim"] * element_bytes * context * layers * batch


@dataclass(frozen=True)
class StepBytes:
    """What one decode step reads, in bytes, by the kernels that read it (the groups of `profile_decode`)."""

    experts: float  # the routed experts the batch touches, and the shared expert where it is fused into them
    dense: float  # every other weight: attention and DeltaNet projections, router, lm_head, an unfused shared expert
    deltanet_state: float  # `deltanet_state_bytes`
    kv: float  # `kv_bytes`

    @property
    def weights(self) -> float:
        return self.experts + self.dense

    @property
    def cache(self) -> float:
        return self.deltanet_state + self.kv

    @property
    def total(self) -> float:
        return self.weights + self.cache


def step_bytes(entries: Iterable[StoredEntry], config: dict, batch: int, context: int, *, fse: bool,
               kv_element_bytes: int = 2) -> StepBytes:  # fmt: skip
    """One decode step of `batch` sequences at `context` tokens each; `fse`: the shared expert runs in the MoE
    kernel (its bytes count as experts)."""
    experts = dense = 0.0
    for entry, share in _read_shares(entries, config, batch, draft=False):
        if ".mlp.experts." in entry.name or (fse and ".mlp.shared_expert." in entry.name):
            experts += entry.nbytes * share
        else:
            dense += entry.nbytes * share
    return StepBytes(experts, dense, deltanet_state_bytes(config, batch), kv_bytes(config, batch, context, kv_element_bytes))


def planned_entries(fmt: str, config: dict) -> list[StoredEntry]:
    """The tensors a checkpoint of `fmt` holds for `config`, laid out as its writer lays them out (names, dtypes,
    sizes; no file is read or written)."""
    from sglang_ext.fixtures import QWEN3_6_FORMATS
    from sglang_ext.fixtures.writers import fixture_encoder
    from sglang_ext.formats import layout

    mtp_fused = fmt in QWEN3_6_FORMATS
    if fmt == "bf16":
        expected = layout.expected_tensors(config, mtp_fused_experts=mtp_fused)
    else:
        expected = fixture_encoder(fmt).plan(config, mtp_fused).tensors
    return [StoredEntry(e.name, e.dtypes[0], e.shape, math.prod(e.shape) * DTYPE_BYTES[e.dtypes[0]], file="")
            for e in expected]  # fmt: skip


@dataclass
class Bound:
    fmt: str
    batch: int
    experts_gb: float
    dense_gb: float
    cache_gb: float
    weights_vs_bf16: float  # the speed-up over BF16 the weight bytes allow
    with_cache_vs_bf16: float  # the same with the cache every format reads alike


def bounds(shape: str, layers: int, formats: list[str], batches: list[int], context: int,
           ssm_dtype: str = "float32") -> list[Bound]:  # fmt: skip
    """Each format's step at each batch size against BF16's (both with the recurrent state in `ssm_dtype`),
    shared expert unfused (fusing moves bytes between groups, not their sum)."""
    config = model_config(shape, layers)
    config["text_config"]["mamba_ssm_dtype"] = ssm_dtype
    entries = {fmt: planned_entries(fmt, config) for fmt in dict.fromkeys(["bf16", *formats])}
    rows = []
    for fmt in formats:
        for batch in batches:
            step = step_bytes(entries[fmt], config, batch, context, fse=False)
            bf16 = step_bytes(entries["bf16"], config, batch, context, fse=False)
            rows.append(Bound(fmt, batch, step.experts / 1e9, step.dense / 1e9, step.cache / 1e9,
                              bf16.weights / step.weights, bf16.total / step.total))  # fmt: skip
    return rows


def print_table(rows: list[Bound], shape: str, layers: int, context: int, ssm_dtype: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"what a decode step reads, {shape} with {layers} layers, {context} tokens of context, "
                        f"{ssm_dtype} DeltaNet state (GB)")  # fmt: skip
    for column in ("format", "batch", "experts", "dense", "cache", "bound × BF16 (weights)", "bound × BF16 (+ cache)"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(r.fmt, str(r.batch), f"{r.experts_gb:.2f}", f"{r.dense_gb:.2f}", f"{r.cache_gb:.2f}",
                      f"{r.weights_vs_bf16:.2f}", f"{r.with_cache_vs_bf16:.2f}")  # fmt: skip
    Console(width=140).print(table)


def positive_ints(text: str) -> list[int]:
    """argparse type of a comma-separated list of positive whole numbers (batch sizes, layer counts), "4,16"."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive whole numbers separated by commas, e.g. 4,16; got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    from sglang_ext.fixtures import FORMATS

    parser = argparse.ArgumentParser(prog="python -m eval.perf.byte_bound", description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="qwen3.5-35b-a3b", choices=[s for s in SHAPES if s != "tiny"] + ["tiny"])
    parser.add_argument("--layers", type=int, default=None, help="decoder layers (default: the shape's, 40 for the 35B)")
    parser.add_argument("--batch-sizes", type=positive_ints, default=[1, 8, 32, 64])
    parser.add_argument("--context", type=int, default=ONE_BATCH_CONTEXT,
                        help=f"tokens of context per sequence (default {ONE_BATCH_CONTEXT}, as the decode benchmarks run)")
    parser.add_argument("--mamba-ssm-dtype", default="float32", choices=list(TORCH_DTYPE_BYTES),
                        help="the DeltaNet recurrent state's dtype, as SGLang's --mamba-ssm-dtype (default float32)")
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "runs")) / "byte_bound")
    args = parser.parse_args(argv)
    formats = args.formats.split(",")
    if unknown := [f for f in formats if f not in FORMATS]:
        parser.error(f"--formats {unknown[0]}: not a checkpoint format; valid: {', '.join(FORMATS)}")
    if args.layers is not None and args.layers < 1:
        parser.error(f"--layers {args.layers}: a model has at least one decoder layer")
    if args.context < 1:
        parser.error(f"--context {args.context}: a decoding sequence has at least one token of context")
    layers = args.layers or SHAPES[args.shape].num_layers
    rows = bounds(args.shape, layers, formats, args.batch_sizes, args.context, args.mamba_ssm_dtype)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"shape": args.shape, "layers": layers, "context": args.context, "mamba_ssm_dtype": args.mamba_ssm_dtype,
              "bounds": [asdict(r) for r in rows]}  # fmt: skip
    (args.out / "byte_bound.json").write_text(json.dumps(report, indent=2) + "\n")
    print_table(rows, args.shape, layers, args.context, args.mamba_ssm_dtype)
    print(f"wrote {args.out / 'byte_bound.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

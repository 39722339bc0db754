"""The bytes a decode step must read: the bound a memory-bound step cannot beat at a given bandwidth."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from sglang_ext.formats.safetensors_headers import StoredEntry, read_checkpoint


def weight_bytes(entries: Iterable[StoredEntry], config: dict, tokens: int, *, draft: bool = False) -> float:
    """Weight bytes one forward of `tokens` tokens reads, from a checkpoint's tensors: dense weights once, routed
    experts as many as the tokens touch on average (E * (1 - (1 - k/E)**tokens) per layer). The target model's,
    or with `draft` the MTP layer's and the lm_head it shares. Embedding rows (a gather) and the ViT are not
    counted."""
    text = config["text_config"]
    experts, top_k = text["num_experts"], text["num_experts_per_tok"]
    touched = 1 - (1 - top_k / experts) ** tokens
    total = 0.0
    for entry in entries:
        if entry.name.startswith("model.visual.") or "embed_tokens" in entry.name:
            continue
        if entry.name != "lm_head.weight" and entry.name.startswith("mtp.") != draft:
            continue
        total += entry.nbytes * (touched if ".mlp.experts." in entry.name else 1)
    return total


def decode_bytes(checkpoint: Path, config: dict, batch: int) -> float:
    """Weight bytes one decode step of `batch` sequences reads (`weight_bytes` of the target model)."""
    return weight_bytes(read_checkpoint(checkpoint), config, batch)

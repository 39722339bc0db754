"""Safetensors shards: which tensors each holds, planned from shapes alone, a writer that streams them, and the
index that names them.

Every output tensor's dtype and shape is known before anything is quantized (`encoders.Plan`), so a shard's
safetensors header is written first and the tensors follow one unit at a time: a shard is never held in
memory, whatever its size. The file is the standard layout (8-byte little-endian header length, JSON header
padded with spaces to 8 bytes, tensors back to back), which `safe_open` and SGLang read like any other; the
sha256 is computed over the bytes as they are written.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from sglang_ext.formats.safetensors_headers import INDEX_FILE

if TYPE_CHECKING:  # layout imports the fixture writers, which write through this module
    from sglang_ext.formats.layout import ExpectedTensor

ELEMENT_BYTES = {"BF16": 2, "F16": 2, "F32": 4, "U8": 1, "I8": 1, "F8_E4M3": 1}
TORCH_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "U8": torch.uint8,
                "I8": torch.int8, "F8_E4M3": torch.float8_e4m3fn}  # fmt: skip
SAFETENSORS_DTYPES = {dtype: name for name, dtype in TORCH_DTYPES.items()}
DEFAULT_MAX_SHARD_BYTES = 5 * 10**9  # save_pretrained's default "5GB"

Unit = list["ExpectedTensor"]


def tensor_bytes(entry: ExpectedTensor) -> int:
    return math.prod(entry.shape) * ELEMENT_BYTES[entry.dtypes[0]]


@dataclass(frozen=True)
class ShardPlan:
    name: str
    units: list[Unit]

    @property
    def tensors(self) -> list[ExpectedTensor]:
        return [entry for unit in self.units for entry in unit]

    @property
    def nbytes(self) -> int:
        return sum(tensor_bytes(entry) for entry in self.tensors)


def plan_shards(units: list[Unit], max_shard_bytes: int) -> list[ShardPlan]:
    """Units in order, a new shard whenever the next would pass `max_shard_bytes` (a larger unit gets a shard
    of its own), named as save_pretrained names them."""
    groups: list[list[Unit]] = [[]]
    size = 0
    for unit in units:
        unit_size = sum(tensor_bytes(entry) for entry in unit)
        if groups[-1] and size + unit_size > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(unit)
        size += unit_size
    count = len(groups)
    return [ShardPlan(f"model-{i + 1:05d}-of-{count:05d}.safetensors", group) for i, group in enumerate(groups)]


def write_index(out: Path, shards: list[ShardPlan]) -> None:
    """model.safetensors.index.json, as save_pretrained writes it beside its shards."""
    weight_map = {entry.name: shard.name for shard in shards for entry in shard.tensors}
    content = {"metadata": {"total_size": sum(shard.nbytes for shard in shards)}, "weight_map": weight_map}
    (out / INDEX_FILE).write_text(json.dumps(content, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def header(tensors: list[ExpectedTensor]) -> bytes:
    entries: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for entry in tensors:
        end = offset + tensor_bytes(entry)
        entries[entry.name] = {"dtype": entry.dtypes[0], "shape": list(entry.shape), "data_offsets": [offset, end]}
        offset = end
    raw = json.dumps(entries, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def write_shard(path: Path, shard: ShardPlan, produce: Callable[[Unit], dict[str, torch.Tensor]],
                done: Callable[[Unit], None]) -> tuple[int, str]:  # fmt: skip
    """Write `shard` to `path` through `path.partial` (renamed when complete and synced), computing each unit's
    tensors with `produce` and calling `done` after each; returns (size, sha256). A failure (a full disk
    included) leaves no partial file."""
    partial = path.with_name(path.name + ".partial")
    digest = hashlib.sha256()
    try:
        with partial.open("wb") as file:

            def write(data: bytes | memoryview) -> None:
                file.write(data)
                digest.update(data)

            write(header(shard.tensors))
            for unit in shard.units:
                tensors = produce(unit)
                for entry in unit:
                    tensor = tensors[entry.name]
                    if tensor.dtype != TORCH_DTYPES[entry.dtypes[0]] or tuple(tensor.shape) != entry.shape:
                        raise AssertionError(f"{entry.name}: computed {tensor.dtype} {tuple(tensor.shape)}, planned "
                                             f"{entry.dtypes[0]} {entry.shape}")  # fmt: skip
                    write(memoryview(tensor.contiguous().reshape(-1).view(torch.uint8).numpy()))
                done(unit)
            file.flush()
            os.fsync(file.fileno())
        partial.rename(path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return path.stat().st_size, digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()

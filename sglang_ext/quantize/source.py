"""The BF16 checkpoint being quantized, read one tensor (or one expert of a fused 3-D tensor) at a time.

Each read is one `pread` of exactly the tensor's bytes, at the offset its safetensors header gives
(`safetensors_headers`), into a buffer the tensor then owns. Not `safe_open`: with its memory map, every page
read so far stays resident (and in the RSS) until the file is closed, so the RSS grows with the shard; with
its `pread` backend, a slice reads the whole tensor, so reading the 256 experts of a fused
`experts.gate_up_proj` [E, 2I, H] one by one would read it 256 times. Here an expert of a fused checkpoint
is read as its own rows, and only the tensor being quantized is in memory.
"""

import math
import os
import re
from pathlib import Path

import torch

from sglang_ext.formats import layout
from sglang_ext.formats.check import check_checkpoint, checkpoint_scheme
from sglang_ext.formats.config_fields import ConfigError
from sglang_ext.formats.safetensors_headers import HeaderError, StoredEntry, read_checkpoint
from sglang_ext.formats.schemes import UnsupportedQuantization
from sglang_ext.formats.shards import ELEMENT_BYTES, TORCH_DTYPES

ARCHITECTURES = ("Qwen3_5MoeForConditionalGeneration",)

_PER_EXPERT = re.compile(r"^(?P<experts>model\.language_model\.layers\.\d+\.mlp\.experts)\.(?P<id>\d+)\.(?P<proj>gate|up|down)_proj\.weight$")


class QuantizeError(Exception):
    """A problem the user can fix: what is wrong, and the fix (the CLI prints both, without a traceback)."""

    def __init__(self, message: str, fix: str) -> None:
        super().__init__(message)
        self.fix = fix


REEXPORT = "re-download or re-export the checkpoint"


class Source:
    """A local BF16 Qwen3.5/3.6-MoE checkpoint directory, checked against its config.json before any read."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            scheme, _, self.config = checkpoint_scheme(self.path)
        except (ConfigError, HeaderError, UnsupportedQuantization) as error:
            raise QuantizeError(f"{self.path}: {error}", f"python -m sglang_ext.inspect {self.path} says what the checkpoint lacks") from None
        architectures = self.config.get("architectures")
        if architectures != list(ARCHITECTURES):
            raise QuantizeError(f"{self.path}: architecture {architectures} is not supported",
                                f"give a Qwen3.5 / Qwen3.6 MoE checkpoint ({', '.join(ARCHITECTURES)})")  # fmt: skip
        if scheme is not None:
            raise QuantizeError(f"{self.path}: already quantized ({scheme.name})", "give the BF16 checkpoint it was made from")
        report = check_checkpoint(self.path)
        if not report.ok:
            first = report.problems[0]
            more = f" (and {len(report.problems) - 1} more problems)" if len(report.problems) > 1 else ""
            raise QuantizeError(f"{self.path}: {first.tensor or 'checkpoint'}: {first.message}{more}",
                                f"{REEXPORT}; python -m sglang_ext.inspect {self.path} lists every problem")  # fmt: skip
        self.entries: dict[str, StoredEntry] = {entry.name: entry for entry in read_checkpoint(self.path)}
        self.mtp_fused_experts = layout.mtp_experts_fused(self.entries)
        self._fds: dict[str, int] = {}

    @property
    def files(self) -> list[str]:
        return sorted({entry.file for entry in self.entries.values()})

    def _read(self, entry: StoredEntry, offset: int, nbytes: int, shape: tuple[int, ...]) -> torch.Tensor:
        """`nbytes` of `entry`'s file from `offset` (relative to the tensor's start) as a tensor of `shape`."""
        if entry.file not in self._fds:
            self._fds[entry.file] = os.open(self.path / entry.file, os.O_RDONLY)
        buffer = bytearray(nbytes)
        view, done = memoryview(buffer), 0
        while done < nbytes:  # one read returns at most ~2 GiB on Linux
            count = os.preadv(self._fds[entry.file], [view[done:]], entry.offset + offset + done)
            if count == 0:
                raise QuantizeError(f"{self.path / entry.file}: ends inside tensor {entry.name!r}: the file is truncated", REEXPORT)
            done += count
        return torch.frombuffer(buffer, dtype=TORCH_DTYPES[entry.dtype]).reshape(shape)

    def _fused_rows(self, name: str) -> tuple[StoredEntry, int, slice]:
        """(fused entry, expert, rows) holding per-expert weight `name` in a checkpoint that stores it fused."""
        match = _PER_EXPERT.match(name)
        entry = None
        if match is not None:
            entry = self.entries.get(f"{match['experts']}.{'down_proj' if match['proj'] == 'down' else 'gate_up_proj'}")
        if entry is None:
            raise QuantizeError(f"{self.path}: tensor {name!r} is missing", REEXPORT)
        proj = match["proj"]
        rows = entry.shape[1] if proj == "down" else entry.shape[1] // 2
        start = rows if proj == "up" else 0
        return entry, int(match["id"]), slice(start, start + rows)

    def tensor(self, name: str) -> torch.Tensor:
        """The BF16 tensor `name`; main-layer experts by their per-expert names whatever the stored layout."""
        entry = self.entries.get(name)
        if entry is not None:
            return self._read(entry, 0, entry.nbytes, entry.shape)
        entry, expert, rows = self._fused_rows(name)
        row_bytes = math.prod(entry.shape[2:]) * ELEMENT_BYTES[entry.dtype]
        offset = (expert * entry.shape[1] + rows.start) * row_bytes
        return self._read(entry, offset, (rows.stop - rows.start) * row_bytes, (rows.stop - rows.start, *entry.shape[2:]))

    def tensor_nbytes(self, name: str) -> int:
        """Bytes that `tensor(name)` reads."""
        entry = self.entries.get(name)
        if entry is not None:
            return entry.nbytes
        entry, _, rows = self._fused_rows(name)
        return (rows.stop - rows.start) * math.prod(entry.shape[2:]) * ELEMENT_BYTES[entry.dtype]

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

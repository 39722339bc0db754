"""The BF16 checkpoint being quantized, read one tensor (or one expert of a fused 3-D tensor) at a time.

Tensors are read with safetensors' `pread` backend, not a memory map: a mapped 800 GB checkpoint would keep
every page read so far resident (and counted in the RSS) until its file is closed, whereas `pread` holds only
the tensor asked for. A main-layer expert of a fused checkpoint (`experts.gate_up_proj` [E, 2I, H]) is read
as its own rows, so the experts of a layer never sit in memory together.
"""

import math
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from sglang_ext.formats import layout
from sglang_ext.formats.check import check_checkpoint, checkpoint_scheme
from sglang_ext.formats.config_fields import ConfigError
from sglang_ext.formats.safetensors_headers import HeaderError, StoredEntry, read_checkpoint
from sglang_ext.formats.schemes import UnsupportedQuantization

ARCHITECTURES = ("Qwen3_5MoeForConditionalGeneration",)

_PER_EXPERT = re.compile(r"^(?P<experts>model\.language_model\.layers\.\d+\.mlp\.experts)\.(?P<id>\d+)\.(?P<proj>gate|up|down)_proj\.weight$")
_BYTES = {"BF16": 2, "F16": 2, "F32": 4}


class QuantizeError(Exception):
    """A problem the user can fix, said in one line (the CLI prints it without a traceback)."""


class Source:
    """A local BF16 Qwen3.5/3.6-MoE checkpoint directory, checked against its config.json before any read."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            scheme, _, self.config = checkpoint_scheme(self.path)
        except (ConfigError, HeaderError, UnsupportedQuantization) as error:
            raise QuantizeError(f"{self.path}: {error}") from None
        architectures = self.config.get("architectures")
        if architectures != list(ARCHITECTURES):
            raise QuantizeError(
                f"{self.path}: architecture {architectures} is not supported; this tool quantizes {', '.join(ARCHITECTURES)} "
                "checkpoints (Qwen3.5 / Qwen3.6 MoE)"
            )
        if scheme is not None:
            raise QuantizeError(f"{self.path}: already quantized ({scheme.name}); give the BF16 checkpoint")
        report = check_checkpoint(self.path)
        if not report.ok:
            first = report.problems[0]
            more = f" (and {len(report.problems) - 1} more problems: python -m sglang_ext.inspect {self.path})" if len(report.problems) > 1 else ""
            raise QuantizeError(f"{self.path}: {first.tensor or 'checkpoint'}: {first.message}{more}")
        self.entries: dict[str, StoredEntry] = {entry.name: entry for entry in read_checkpoint(self.path)}
        self.mtp_fused_experts = layout.mtp_experts_fused(self.entries)
        self._files: dict[str, Any] = {}

    @property
    def files(self) -> list[str]:
        return sorted({entry.file for entry in self.entries.values()})

    @property
    def nbytes(self) -> int:
        return sum(entry.nbytes for entry in self.entries.values())

    def _open(self, file: str) -> Any:
        if file not in self._files:
            self._files[file] = safe_open(str(self.path / file), framework="pt", backend="pread")
        return self._files[file]

    def _fused_rows(self, name: str) -> tuple[StoredEntry, int, slice] | None:
        """(fused entry, expert, rows) holding per-expert weight `name`, if the checkpoint stores it fused."""
        match = _PER_EXPERT.match(name)
        if match is None:
            return None
        proj = match["proj"]
        entry = self.entries.get(f"{match['experts']}.{'down_proj' if proj == 'down' else 'gate_up_proj'}")
        if entry is None:
            return None
        rows = entry.shape[1] if proj == "down" else entry.shape[1] // 2
        start = rows if proj == "up" else 0
        return entry, int(match["id"]), slice(start, start + rows)

    def tensor(self, name: str) -> torch.Tensor:
        """The BF16 tensor `name`; main-layer experts by their per-expert names whatever the stored layout."""
        entry = self.entries.get(name)
        if entry is not None:
            return self._open(entry.file).get_tensor(name)
        fused = self._fused_rows(name)
        if fused is None:
            raise QuantizeError(f"{self.path}: tensor {name!r} is missing")
        entry, expert, rows = fused
        return self._open(entry.file).get_slice(entry.name)[expert, rows]

    def tensor_nbytes(self, name: str) -> int:
        """Bytes that `tensor(name)` reads."""
        entry = self.entries.get(name)
        if entry is not None:
            return entry.nbytes
        fused = self._fused_rows(name)
        if fused is None:
            raise QuantizeError(f"{self.path}: tensor {name!r} is missing")
        entry, _, rows = fused
        return (rows.stop - rows.start) * math.prod(entry.shape[2:]) * _BYTES[entry.dtype]

    def close(self) -> None:
        for handle in self._files.values():
            handle.__exit__(None, None, None)
        self._files.clear()

"""What a quantization run is (`Job`), what it has finished (`Progress`, kept in OUT while it runs) and what it
did (`Record`, `sglang_ext_quantize.json`, written last).

A rerun into the same OUT resumes only when its job is equal field for field: same source files (name, size,
modification time), same config.json bytes, format, options, shard size and tool version. Finished shards
are then kept if their size and sha256 still match what was recorded; everything else is written again.
"""

import hashlib
import json
import os
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ValidationError

PROGRESS_FILE = ".sglang_ext_quantize.progress.json"
RECORD_FILE = "sglang_ext_quantize.json"
TOOL = "sglang_ext.quantize"


class SourceFile(BaseModel):
    name: str
    size: int
    mtime_ns: int


class Job(BaseModel):
    tool: str = TOOL
    tool_version: str
    torch_version: str
    source: str  # the directory given, for the record; not compared
    source_config_sha256: str
    source_files: list[SourceFile]
    format: str
    options: dict[str, Any]
    max_shard_bytes: int

    def differences(self, other: "Job") -> list[str]:
        mine, theirs = self.model_dump(exclude={"source"}), other.model_dump(exclude={"source"})
        return [key for key in mine if mine[key] != theirs[key]]


class ShardRecord(BaseModel):
    name: str
    size: int
    sha256: str


class Progress(BaseModel):
    job: Job
    shards: list[ShardRecord] = []


class Record(Progress):
    tensors: int
    quantized_modules: int
    excluded_modules: int
    source_bytes: int
    output_bytes: int
    seconds: float
    peak_rss_bytes: int


def tool_version() -> str:
    try:
        return metadata.version("qwen35-sglang-recipes")
    except metadata.PackageNotFoundError:
        return "unknown"


def make_job(source: Path, files: list[str], fmt: str, options: dict[str, Any], max_shard_bytes: int) -> Job:
    stats = [(name, (source / name).stat()) for name in files]
    return Job(
        tool_version=tool_version(),
        torch_version=torch.__version__,
        source=str(source),
        source_config_sha256=hashlib.sha256((source / "config.json").read_bytes()).hexdigest(),
        source_files=[SourceFile(name=name, size=st.st_size, mtime_ns=st.st_mtime_ns) for name, st in stats],
        format=fmt,
        options=options,
        max_shard_bytes=max_shard_bytes,
    )


def read_progress(path: Path) -> Progress | None:
    """The progress (or final record) kept at `path`; None if there is none or it cannot be read."""
    try:
        return Progress.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, ValidationError):
        return None


def write_atomic(path: Path, model: BaseModel) -> None:
    """Replace `path` with `model` as JSON; a crash leaves the old file or the new one, never half of one."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(model.model_dump_json(indent=2) + "\n", encoding="utf-8")
    with partial.open("rb") as file:
        os.fsync(file.fileno())
    partial.replace(path)

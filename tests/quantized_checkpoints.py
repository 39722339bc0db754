"""The tiny BF16 fixture in both source layouts, and what `sglang_ext.quantize` makes of it in each format: module
fixtures shared by the quantizer's tests (import `sources` and `quantized` into a test module)."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sglang_ext.fixtures import write_fixture
from sglang_ext.fixtures.tensors import fuse_experts, unfuse_experts
from sglang_ext.formats.check import side_files
from sglang_ext.formats.encoders import Options
from sglang_ext.formats.safetensors_headers import INDEX_FILE
from sglang_ext.quantize import quantize

LAYOUTS = ("fused", "per-expert")
INPUT_AMAX = 8.0  # NVFP4's activation amax: the fixtures' value
SHARD = 400_000  # bytes: the tiny model then spans a few output shards
OPTIONS = {"modelopt-nvfp4": Options(input_amax=INPUT_AMAX)}


def write_per_expert(fused: Path, target: Path, shards: int = 3) -> Path:
    """`fused` re-exported per expert (main layers) with the MTP experts fused 3-D (the Qwen3.6 layout), over
    `shards` files with an index: the other source layout."""
    config = json.loads((fused / "config.json").read_text())
    tensors = fuse_experts(unfuse_experts(load_file(str(fused / "model.safetensors"))), config["text_config"], mtp=True)
    target.mkdir(parents=True)
    names = sorted(tensors)
    weight_map = {}
    for index in range(shards):
        shard = f"model-{index + 1:05d}-of-{shards:05d}.safetensors"
        part = {name: tensors[name].contiguous() for name in names[index::shards]}
        save_file(part, str(target / shard), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, shard))
    (target / INDEX_FILE).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    for path in side_files(fused):
        shutil.copyfile(path, target / path.name)
    shutil.copyfile(fused / "config.json", target / "config.json")
    return target


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sources")
    fused = write_fixture(root / "fused", "bf16", seed=0)
    return {"fused": fused, "per-expert": write_per_expert(fused, root / "per-expert")}


@pytest.fixture(scope="module")
def quantized(sources: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """quantized(fmt, layout) -> the output directory, each written once per module."""
    root = tmp_path_factory.mktemp("quantized")
    done: dict[tuple[str, str], Path] = {}

    def get(fmt: str, layout: str) -> Path:
        if (fmt, layout) not in done:
            out = root / f"{fmt}-{layout}"
            quantize(sources[layout], out, fmt, OPTIONS.get(fmt, Options()), max_shard_bytes=SHARD, show_progress=False)
            done[fmt, layout] = out
        return done[fmt, layout]

    return get


def load_dir(path: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(path.glob("*.safetensors")):
        tensors.update(load_file(str(shard)))
    return tensors

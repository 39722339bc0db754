"""Property tests: whatever is wrong with a checkpoint's config.json, hf_quant_config.json or safetensors header,
or with a recipe, the tools answer with a clean error that names the file (and the field or tensor), never a
traceback, never a hang (hypothesis' deadline), never an unbounded allocation (tracemalloc's peak).

CI runs the derandomized `ci` profile; `HYPOTHESIS_PROFILE=sweep python -m pytest tests/test_bad_input_properties.py`
tries 2,000 fresh cases per test (tests/conftest.py).
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import struct
import tracemalloc
from pathlib import Path

import pytest
import yaml
from hypothesis import given, strategies as st

from corrupt import corrupted, damaged_bytes
from launch import __main__ as launch_cli
from launch.errors import LaunchError
from launch.recipe import load_recipe, read_layers, recipe_paths
from sglang_ext import inspect as inspect_cli
from sglang_ext.formats.check import check_checkpoint

# A check of a tiny checkpoint's headers needs a few MB; a corrupt size that made it allocate per expert or per
# layer would need gigabytes.
PEAK_BYTES = 64 * 1024 * 1024
CHECKPOINT_FILES = ("config.json", "hf_quant_config.json", "model.safetensors", "model.safetensors.index.json")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from sglang_ext.fixtures import write_fixture

    root = tmp_path_factory.mktemp("pristine")
    return {fmt: write_fixture(root / fmt, fmt) for fmt in ("bf16", "modelopt-nvfp4", "quark-w8a8-int8", "ct-mxfp4")}


def _scratch(source: Path, tmp_root: Path) -> Path:
    """A copy of a checkpoint to damage: JSON files copied, the weights linked (replaced, never edited)."""
    target = tmp_root / "checkpoint"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for path in source.iterdir():
        if path.suffix == ".json":
            shutil.copyfile(path, target / path.name)
        else:
            (target / path.name).symlink_to(path)
    return target


def _check_clean(directory: Path, done: str) -> None:
    """check_checkpoint and the inspector CLI answer, within the memory bound, with problems that name a file
    or a tensor."""
    tracemalloc.start()
    try:
        report = check_checkpoint(directory)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            status = inspect_cli.main([str(directory)])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < PEAK_BYTES, f"{done}: {peak / 2**20:.0f} MiB to check a tiny checkpoint"
    assert status == (0 if report.ok else 1), done
    for problem in report.problems:
        assert problem.message.strip(), done
        assert problem.tensor or any(name in problem.message for name in CHECKPOINT_FILES), (done, problem)


@given(data=st.data(), fmt=st.sampled_from(["bf16", "modelopt-nvfp4", "quark-w8a8-int8", "ct-mxfp4"]))
def test_any_config_json_damage_is_a_clean_problem(pristine, tmp_path_factory, data, fmt) -> None:
    directory = _scratch(pristine[fmt], tmp_path_factory.getbasetemp() / "config")
    config = json.loads((directory / "config.json").read_text())
    damaged, done = data.draw(corrupted(config), label="config.json")
    (directory / "config.json").write_text(json.dumps(damaged))
    _check_clean(directory, f"config.json {done}")


@given(data=st.data())
def test_any_hf_quant_config_damage_is_a_clean_problem(pristine, tmp_path_factory, data) -> None:
    directory = _scratch(pristine["modelopt-nvfp4"], tmp_path_factory.getbasetemp() / "hfq")
    hf_quant = json.loads((directory / "hf_quant_config.json").read_text())
    damaged, done = data.draw(corrupted(hf_quant), label="hf_quant_config.json")
    (directory / "hf_quant_config.json").write_text(json.dumps(damaged))
    # config.json defers to hf_quant_config.json only without a quant_algo of its own, as some exports ship
    config = json.loads((directory / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "modelopt"}
    (directory / "config.json").write_text(json.dumps(config))
    _check_clean(directory, f"hf_quant_config.json {done}")


def _safetensors_parts(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + length]), raw[8 + length :]


@given(data=st.data(), fmt=st.sampled_from(["bf16", "modelopt-nvfp4"]))
def test_any_safetensors_header_damage_is_a_clean_problem(pristine, tmp_path_factory, data, fmt) -> None:
    directory = _scratch(pristine[fmt], tmp_path_factory.getbasetemp() / "header")
    weights = directory / "model.safetensors"
    original = weights.resolve()
    header, payload = _safetensors_parts(original)
    if data.draw(st.booleans(), label="edit the JSON (else the bytes)"):
        damaged, done = data.draw(corrupted(header), label="header")
        text = json.dumps(damaged).encode()
        content = struct.pack("<Q", len(text)) + text + payload
    else:
        raw = original.read_bytes()
        content, done = data.draw(damaged_bytes(raw, within=8 + 4096), label="bytes")
    weights.unlink()
    weights.write_bytes(content)
    _check_clean(directory, f"model.safetensors header {done}")


def _recipe_documents() -> list[tuple[str, dict]]:
    return [(name, read_layers(path)) for name, path in recipe_paths().items()
            if name in ("tiny-bf16", "tiny-nvfp4", "qwen3.5-397b-nvfp4-rtxpro6000-mtp", "qwen3.5-397b-mxfp4-fse-mi355x")]  # fmt: skip


@given(data=st.data(), recipe=st.sampled_from(_recipe_documents()))
def test_any_recipe_damage_is_one_error_naming_the_file(tmp_path_factory, data, recipe) -> None:
    name, document = recipe
    damaged, done = data.draw(corrupted(document), label="recipe")
    path = tmp_path_factory.getbasetemp() / "recipes" / f"damaged-{name}.yaml"
    path.parent.mkdir(exist_ok=True)
    if data.draw(st.booleans(), label="as YAML (else damaged text)"):
        path.write_text(yaml.safe_dump(damaged, allow_unicode=True))
    else:
        text, done = data.draw(damaged_bytes(yaml.safe_dump(document).encode(), within=4096), label="text")
        path.write_bytes(text)
    try:
        load_recipe(str(path))
    except LaunchError as error:
        assert path.name in str(error), (done, str(error))
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        status = launch_cli.main([str(path), "--dry-run"])
    assert status in (0, 1), (done, stderr.getvalue())
    assert "Traceback" not in stderr.getvalue(), done

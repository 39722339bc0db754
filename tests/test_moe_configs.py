"""Tuned fused-MoE configs: SGLang sees its stock configs plus ours through one merged folder, ours
winning on a name clash; the tuner's shapes and search space follow the Qwen3.5 MoE."""

import importlib.util
import os
from pathlib import Path

import pytest

from eval.perf import tune_moe
from sglang_ext import moe_configs


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_merged_folder_keeps_stock_configs_and_prefers_ours(tmp_path: Path) -> None:
    stock, tuned, cache = tmp_path / "stock", tmp_path / "tuned", tmp_path / "cache"
    _write(stock / "configs/triton_3_6_0/E=512,N=256,device_name=NVIDIA_H200.json", "stock 512")
    _write(stock / "configs/triton_3_6_0/E=257,N=512,device_name=NVIDIA_H200.json", "stock 257")
    _write(stock / "configs/triton_3_5_1/E=128,N=768,device_name=NVIDIA_H200.json", "older triton")
    _write(tuned / "configs/triton_3_6_0/E=257,N=512,device_name=NVIDIA_H200.json", "ours 257")

    merged = moe_configs.merged_config_dir(stock, tuned, cache)
    read = {p.relative_to(merged).as_posix(): p.read_text() for p in merged.glob("configs/*/*.json")}
    assert read == {
        "configs/triton_3_6_0/E=512,N=256,device_name=NVIDIA_H200.json": "stock 512",
        "configs/triton_3_6_0/E=257,N=512,device_name=NVIDIA_H200.json": "ours 257",
        "configs/triton_3_5_1/E=128,N=768,device_name=NVIDIA_H200.json": "older triton",
    }
    assert moe_configs.merged_config_dir(stock, tuned, cache) == merged  # built once
    newer = _write(tuned / "configs/triton_3_6_0/E=256,N=512,device_name=NVIDIA_H200.json", "ours 256")
    rebuilt = moe_configs.merged_config_dir(stock, tuned, cache)
    assert rebuilt != merged and (rebuilt / "configs/triton_3_6_0" / newer.name).read_text() == "ours 256"
    assert not list(cache.glob(".building-*"))


def test_a_folder_the_user_chose_is_kept(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(moe_configs.ENV, "/their/configs")
    assert moe_configs.use_tuned_moe_configs(tmp_path) is None
    assert os.environ[moe_configs.ENV] == "/their/configs"


def test_nothing_changes_without_tuned_configs(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(moe_configs.ENV, raising=False)
    monkeypatch.setattr(moe_configs, "TUNED_ROOT", tmp_path / "empty")
    assert moe_configs.use_tuned_moe_configs(tmp_path / "cache") is None
    assert moe_configs.ENV not in os.environ


def test_tuner_shapes_follow_the_checkpoints() -> None:
    fused = tune_moe.moe_shape("qwen3.5-35b-a3b", fse=True)
    assert (fused.experts, fused.intermediate, fused.hidden, fused.top_k) == (257, 512, 2048, 9)
    apart = tune_moe.moe_shape("qwen3.5-35b-a3b", fse=False)
    assert (apart.experts, apart.top_k) == (256, 8)
    tp4 = tune_moe.moe_shape("qwen3.5-397b-a17b-tp4", fse=True)
    assert (tp4.experts, tp4.intermediate, tp4.hidden, tp4.top_k) == (513, 256, 4096, 11)


@pytest.mark.parametrize("batch", [1, 8, 64, 256, 1024])
def test_search_space_is_sglangs_narrowed_by_rows_per_expert(batch: int) -> None:
    shape = tune_moe.moe_shape("qwen3.5-35b-a3b", fse=True)
    space = tune_moe.search_space(batch, shape)
    assert len({tuple(sorted(c.items())) for c in space}) == len(space)
    rows = batch * shape.top_k / shape.experts  # 0.035 at batch 1, 35.9 at 1024
    block_m = sorted({c["BLOCK_SIZE_M"] for c in space})
    assert block_m[0] >= min(rows, 16) and (block_m[0] == 16 or block_m[0] / 2 < rows)
    assert len(block_m) <= 2 and all(m in (16, 32, 64, 128, 256) for m in block_m)
    for key, allowed in {"BLOCK_SIZE_N": {32, 64, 128, 256}, "BLOCK_SIZE_K": {64, 128, 256},
                         "num_warps": {4, 8}, "num_stages": {2, 3, 4}}.items():  # fmt: skip
        assert {c[key] for c in space} == allowed
    assert {c["GROUP_SIZE_M"] for c in space} == ({1} if rows <= 16 else {1, 16})


@pytest.mark.skipif(importlib.util.find_spec("sglang") is None, reason="SGLang is not importable here")
def test_files_carry_sglangs_lookup_names(monkeypatch) -> None:
    from sglang.srt.layers.moe.moe_runner.triton_utils import fused_moe_triton_config

    monkeypatch.setattr(fused_moe_triton_config, "get_device_name", lambda: "NVIDIA H200")
    shape = tune_moe.moe_shape("qwen3.5-35b-a3b", fse=True)
    assert tune_moe.config_file(shape, "bf16") == "E=257,N=512,device_name=NVIDIA_H200.json"
    assert tune_moe.config_file(shape, "int8_w8a8") == (
        "E=257,N=512,device_name=NVIDIA_H200,dtype=int8_w8a8,per_channel_quant=True.json")


@pytest.mark.skipif(importlib.util.find_spec("sglang") is None, reason="SGLang is not importable here")
def test_sglang_gets_its_configs_and_ours(tmp_path: Path, monkeypatch) -> None:
    from sglang.srt.layers.moe.moe_runner.triton_utils import fused_moe_triton_config

    monkeypatch.delenv(moe_configs.ENV, raising=False)
    ours = "E=257,N=512,device_name=NVIDIA_H200.json"
    _write(tmp_path / "tuned/configs/triton_3_6_0" / ours, "{}")
    monkeypatch.setattr(moe_configs, "TUNED_ROOT", tmp_path / "tuned")
    merged = moe_configs.use_tuned_moe_configs(tmp_path / "cache")
    assert os.environ[moe_configs.ENV] == str(merged)
    stock = Path(fused_moe_triton_config.__file__).parent / "configs"
    stock_files = {p.relative_to(stock) for p in stock.glob("triton_*/*.json")}
    merged_files = {p.relative_to(merged / "configs") for p in (merged / "configs").glob("triton_*/*.json")}
    assert len(stock_files) > 100 and merged_files == stock_files | {Path("triton_3_6_0") / ours}


@pytest.mark.skipif(importlib.util.find_spec("sglang") is None, reason="SGLang is not importable here")
def test_a_run_cut_short_keeps_the_files_it_finished(tmp_path: Path, monkeypatch) -> None:
    """The GPU part (tune_file) is stood in for: the first file tunes, the second dies as when a lease ends;
    the first file's config and timings must be on disk."""
    import json
    import sys

    import torch
    from sglang.srt.layers.moe.moe_runner.triton_utils import fused_moe_triton_config

    config = {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 32, "BLOCK_SIZE_K": 128, "GROUP_SIZE_M": 1, "num_warps": 4,
              "num_stages": 4}  # fmt: skip
    calls = []

    def tune_file(shape, dtype, batches, jobs):
        calls.append(dtype)
        if len(calls) == 2:
            raise KeyboardInterrupt("lease over")
        return {1: config}, [tune_moe.Row(tune_moe.config_file(shape, dtype), 1, 9.0, 12.0, 12.0 / 9.0, config)]

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda: "NVIDIA H200")
    monkeypatch.setattr(fused_moe_triton_config, "get_device_name", lambda: "NVIDIA H200")
    monkeypatch.setattr(tune_moe, "tune_file", tune_file)
    monkeypatch.setattr(sys, "argv", ["tune_moe", "--fse", "off", "--configs-out", str(tmp_path / "tuned"),
                                      "--out", str(tmp_path / "out")])  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        tune_moe.main()
    assert calls == ["bf16", "int8_w8a8"]
    report = json.loads((tmp_path / "out/tune_moe.json").read_text())
    assert [Path(f).name for f in report["files"]] == ["E=256,N=512,device_name=NVIDIA_H200.json"]
    assert [(r["batch"], r["speedup"]) for r in report["rows"]] == [(1, 12.0 / 9.0)]
    assert json.loads(Path(report["files"][0]).read_text()) == {"1": config}


def test_without_a_gpu_the_tuner_says_how_to_run_it(tmp_path: Path, monkeypatch, capsys) -> None:
    import sys

    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(sys, "argv", ["tune_moe", "--configs-out", str(tmp_path / "tuned"), "--out", str(tmp_path)])
    assert tune_moe.main() == 1
    err = capsys.readouterr().err
    assert "needs a CUDA GPU" in err and "fix: run it on the GPU machine" in err and "run_on_device.sh" in err
    assert not (tmp_path / "tuned").exists() and not (tmp_path / "tune_moe.json").exists()

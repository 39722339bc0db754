"""The launcher's memory plan (launch/memory.py) from config.json numbers, the draft's KV budgeted by SGLang
through --speculative-draft-model-path, and the GPU count that follows the parallelism the server runs."""

import json
import os
from pathlib import Path

import pytest

from launch import __main__ as cli
from launch import hardware
from launch.errors import LaunchError
from launch.hardware import Machine, parse_nvidia_smi
from launch.memory import GIB, ModelMemory, draft_model_path_args, plan, runtime_reserve, share_gpu
from launch.recipe import load_recipe
from launch.sglang_options import parse_with_sglang
from sglang_ext.fixtures.model_config import model_config

H200 = Machine(parse_nvidia_smi("NVIDIA H200, 143771, 9.0"), "nvidia-smi", "0.5.17")
STAND_IN_TP1 = ["tp-size=1", "ep-size=1"]


def _per_gpu_shape(layers: int) -> ModelMemory:
    return ModelMemory.from_config(model_config("qwen3.5-397b-a17b-tp4", layers))


def _server_args(recipe: str) -> dict:
    return dict(load_recipe(recipe, STAND_IN_TP1, stand_in="sm90").recipe.server_args)


def test_config_numbers_of_the_397b_per_gpu_shape():
    model = _per_gpu_shape(4)
    assert (model.attention_layers, model.linear_layers, model.mtp_layers) == (1, 3, 1)
    # fp8 K and V of one KV head of 256 dims; the DeltaNet state: 16 value heads of 128 × 128 float32 and the
    # BF16 conv window of (2 × 512 + 2048) channels × 3 taps, in each of 3 layers.
    assert model.kv_bytes_per_token_per_layer(1, tp=1) == 512
    assert model.state_bytes_per_request(tp=1) == 3 * (16 * 128 * 128 * 4 + (2 * 512 + 2048) * 3 * 2)
    assert _per_gpu_shape(60).attention_layers == 15


@pytest.mark.parametrize("layers", [4, 16])
def test_the_draft_pool_is_inside_the_budget_the_plain_twin_gets(layers):
    """At 4 layers the MTP layer's KV equals the target's (1 attention layer each): the speculative server's
    KV pool of both holds half the plain twin's tokens in the same bytes, rather than twice the bytes."""
    weights, gpu = int(8.3 * GIB * layers / 4), int(140.4 * GIB)
    model = _per_gpu_shape(layers)
    mtp = plan(model, weights, gpu, _server_args("qwen3.5-397b-nvfp4-rtxpro6000-mtp"))
    twin = plan(model, weights, gpu, _server_args("qwen3.5-397b-nvfp4-rtxpro6000"))
    assert mtp.draft_bytes_per_token == 512 and twin.draft_bytes_per_token == 0
    assert mtp.target_bytes_per_token == twin.target_bytes_per_token == 512 * model.attention_layers
    assert mtp.tokens * (mtp.target_bytes_per_token + mtp.draft_bytes_per_token) <= mtp.kv_pool
    assert mtp.kv_pool <= twin.kv_pool
    share = model.attention_layers / (model.attention_layers + 1)
    assert mtp.tokens == pytest.approx(twin.tokens * share * mtp.kv_pool / twin.kv_pool, rel=1e-3)
    assert mtp.problems() == [] and twin.problems() == []


def test_the_full_per_gpu_model_on_one_gpu_is_refused_with_its_numbers():
    memory = plan(_per_gpu_shape(60), int(124.5 * GIB), int(140.4 * GIB), _server_args("qwen3.5-397b-mxfp4-fse-mi355x-mtp"))
    (problem,) = memory.problems()
    assert problem == "the weights (125.4 GiB) fill the static budget (0.8 × 140 GiB = 112.3 GiB)"  # 124.5 + the draft's embedding and lm_head


def test_a_prefill_chunk_that_does_not_fit_the_kv_pool_is_refused():
    server_args = {**_server_args("qwen3.5-397b-mxfp4-fse-mi355x-mtp"), "chunked-prefill-size": 10**9}
    (problem,) = plan(_per_gpu_shape(4), int(8.3 * GIB), int(140.4 * GIB), server_args).problems()
    assert "less than one prefill chunk of 1000000000" in problem


def test_sglang_default_fraction_is_estimated_from_the_prefill_chunk():
    memory = plan(_per_gpu_shape(4), int(8.3 * GIB), int(140.4 * GIB), _server_args("qwen3.5-397b-nvfp4-rtxpro6000-mtp"))
    # (GPU MiB - 512 - 1.5 × 32768 - 128) / GPU MiB, SGLang's formula without its CUDA-graph reserve
    assert memory.fraction == pytest.approx(round((143770 - 512 - 1.5 * 32768 - 128) / 143770, 3), abs=1e-3)
    assert memory.fraction_source == "SGLang's default, estimated"


@pytest.mark.parametrize("server_args, expected", [
    ({"speculative-algorithm": "NEXTN"}, ("--speculative-draft-model-path", "/ckpt")),
    ({"speculative-algorithm": "EAGLE"}, ("--speculative-draft-model-path", "/ckpt")),
    ({"speculative-algorithm": "EAGLE", "speculative-draft-model-path": "/draft"}, ()),
    ({}, ()),
])
def test_the_checkpoint_is_named_as_its_own_draft(server_args, expected):
    assert draft_model_path_args(server_args, "/ckpt") == expected


def _command(capsys) -> str:
    return " ".join(capsys.readouterr().out.replace("\\\n", " ").split())


def test_the_speculative_command_names_its_draft_and_sglang_parses_it(capsys, tmp_path):
    assert cli.main(["qwen3.5-397b-nvfp4-rtxpro6000-mtp", "--stand-in", "sm90", "--dry-run",
                     *[a for s in STAND_IN_TP1 for a in ("--set", s)]]) == 0  # fmt: skip
    command = _command(capsys)
    assert "--speculative-draft-model-path lukealonso/Qwen3.5-397B-A17B-NVFP4" in command
    tokens = command.split(" -m sglang.launch_server ", 1)[1].split()
    parsed = parse_with_sglang(tokens)
    assert parsed.speculative_draft_model_path == parsed.model_path


def _sparse_checkpoint(directory: Path, layers: int, weight_bytes: int) -> Path:
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(model_config("qwen3.5-397b-a17b-tp4", layers)))
    with (directory / "model.safetensors").open("wb") as f:
        f.truncate(weight_bytes)  # sparse: its size is all the plan reads
    return directory


def test_a_recipe_that_cannot_fit_is_refused_before_sglang_starts(monkeypatch, tmp_path):
    monkeypatch.setattr(hardware, "detect", lambda: H200)
    checkpoint = _sparse_checkpoint(tmp_path / "fp8-60L", 60, int(125 * GIB))
    args = cli._parser().parse_args(["qwen3.5-397b-fp8-mi355x-mtp", "--stand-in", "sm90", "--set", "tp-size=1",
                                     "--set", f"model.path={checkpoint}"])  # fmt: skip
    with pytest.raises(LaunchError) as refused:
        cli.launch(args)
    message = str(refused.value)
    assert "does not fit one GPU: the weights (125.9 GiB) fill the static budget (0.8 × 140 GiB = 112.3 GiB)" in message
    assert "--set mem-fraction-static=" in message and "--set tp-size=N" in message


def test_the_dry_run_shows_the_memory_plan_of_a_local_checkpoint(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(hardware, "detect", lambda: H200)
    checkpoint = _sparse_checkpoint(tmp_path / "fp8-4L", 4, int(8 * GIB))
    assert cli.main(["qwen3.5-397b-fp8-mi355x-mtp", "--stand-in", "sm90", "--dry-run", "--set", "tp-size=1",
                     "--set", f"model.path={checkpoint}"]) == 0  # fmt: skip
    shown = capsys.readouterr().err
    assert "memory: per GPU of 140 GiB at mem-fraction-static 0.8 (the recipe): weights 8.9 GiB, then at most:" in shown  # 8 + the draft's embedding and lm_head
    assert "does not fit" not in shown


def test_gpus_needed_follow_the_parallelism_the_server_runs(monkeypatch, capsys):
    """The 397B NVFP4 recipe as its stand-in at TP1 fits one H200; at the card's TP4 it needs four."""
    monkeypatch.setattr(hardware, "detect", lambda: H200)
    assert cli.main(["qwen3.5-397b-nvfp4-rtxpro6000", "--stand-in", "sm90", "--dry-run",
                     *[a for s in STAND_IN_TP1 for a in ("--set", s)]]) == 0  # fmt: skip
    shown = capsys.readouterr().err
    assert "recipe needs: 1× nvidia sm90 (tp 1 × pp 1 × dp 1), ≥75 GiB each" in shown
    assert "does not fit" not in shown
    args = cli._parser().parse_args(["qwen3.5-397b-nvfp4-rtxpro6000", "--stand-in", "sm90"])
    with pytest.raises(LaunchError, match=r"needs 4 GPUs \(tp 4 × pp 1 × dp 1\), 1 suitable here"):
        cli.launch(args)


@pytest.mark.parametrize("sets, gpus, counted", [
    ([], 4, "tp 4 × pp 1 × dp 1"),
    (["tp-size=2", "pp-size=2"], 4, "tp 2 × pp 2 × dp 1"),
    (["tp-size=2", "dp-size=2"], 4, "tp 2 × pp 1 × dp 2"),
    (["tp-size=4", "dp-size=4", "enable-dp-attention=true", "sglang.version=0.5.17"], 4, "tp 4 × pp 1 × dp 1"),
    (["tp-size=4", "attn-dp-size=4", "sglang.version=0.5.23"], 4, "tp 4 × pp 1 × dp 1"),  # 0.5.23's spelling
    (["tp-size=8", "topology.nodes=2"], 4, "tp 8 × pp 1 × dp 1 over 2 hosts"),
    (["tp-size=1", "topology.replicas=2"], 2, "tp 1 × pp 1 × dp 1, 2 replicas"),
])
def test_gpu_count_of_each_parallelism(sets, gpus, counted):
    recipe = load_recipe("qwen3.5-397b-nvfp4-rtxpro6000", [*sets, "ep-size=1"]).recipe
    assert hardware.gpus_needed(recipe) == (gpus, counted)


@pytest.mark.parametrize("replicas", [2, 3, 4])
def test_replicas_sharing_a_gpu_take_together_what_one_server_would(replicas):
    """SGLang takes mem-fraction-static of the memory free at a server's start: each replica started after
    others holding their share takes its own share and no more, all of them the recipe's fraction."""
    gpu = int(140.4 * GIB)
    shared = share_gpu(replicas, {"mem-fraction-static": 0.3, "chunked-prefill-size": 2048}, gpu)
    assert shared.budget == 0.3 and shared.share == pytest.approx(0.3 / replicas)
    free, taken = gpu, []
    for fraction in shared.fractions:
        taken.append(int(fraction * free))
        free -= taken[-1]
    assert all(shared.share * gpu - 1e-4 * gpu <= t <= shared.share * gpu + 1 for t in taken)  # 4 decimals, rounded down
    assert sum(taken) <= 0.3 * gpu


def test_sharing_keeps_each_replica_sglangs_runtime_reserve():
    """One server's 0.9 of an H200 leaves 14 GiB; two replicas need SGLang's reserve each (an 8192-token prefill
    chunk, decode CUDA graphs to batch 256: 13.1 GiB), so they share what is left beside both reserves."""
    args = {"mem-fraction-static": 0.9}
    reserve = runtime_reserve(args)
    assert reserve == int((512 + 1.5 * 8192 + 1024 / 8 + 2 * 256) * 2**20)
    gpu = int(140.4 * GIB)
    shared = share_gpu(2, args, gpu)
    assert shared.budget == pytest.approx(1 - 2 * reserve / gpu) and shared.budget < 0.9
    assert "less their runtime" in shared.summary()


def test_each_shared_replica_is_planned_at_the_least_memory_it_can_find_free():
    model, gpu = _per_gpu_shape(4), int(140.4 * GIB)
    args = {**_server_args("qwen3.5-397b-nvfp4-rtxpro6000"), "mem-fraction-static": 0.8}
    shared = share_gpu(2, args, gpu, (model, int(8.3 * GIB)))
    first, second = shared.plans
    assert first.gpu == gpu and first.fraction == shared.fractions[0]
    assert second.gpu == gpu - int(shared.share * gpu) - shared.reserve  # replica 0 holding its share and whole reserve
    assert second.static < first.static <= shared.share * gpu
    assert shared.problems() == []
    heavy = share_gpu(2, args, gpu, (model, int(30 * GIB)))
    assert heavy.problems()[0].startswith("replica 0 of a GPU: the weights (30.0 GiB) fill the static budget")


def test_sharing_needs_the_fraction_or_the_gpu_size():
    with pytest.raises(LaunchError, match="needs the recipe's mem-fraction-static or the GPU's size"):
        share_gpu(2, {}, None)
    assert share_gpu(2, {"mem-fraction-static": 0.3}, None).fractions == (0.15, 0.1764)  # 0.15 / 0.85, rounded down


def test_replicas_whose_reserves_fill_the_gpu_are_refused_with_the_numbers():
    with pytest.raises(LaunchError) as refused:
        share_gpu(3, {"mem-fraction-static": 0.9, "chunked-prefill-size": 32768}, int(140.4 * GIB))
    # 0.5 GiB + 1.5 MiB × 32768 prefill tokens + 1/8 GiB for one GPU + 2 MiB × 256 decode graph batch sizes
    assert "3 replicas cannot share a GPU of 140 GiB: their runtime (3 × 49.1 GiB by SGLang's estimate)" in str(refused.value)
    assert "topology.replicas_per_gpu=K" in refused.value.hint and "--no-hardware-check" not in refused.value.hint

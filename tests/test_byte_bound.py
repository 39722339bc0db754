import json
import math
from pathlib import Path

import pytest
import torch

from eval.perf import byte_bound
from sglang_ext.fixtures import FORMATS, write_fixture
from sglang_ext.fixtures.model_config import model_config
from sglang_ext.formats.safetensors_headers import read_checkpoint


def _table(entries) -> list[tuple]:
    return sorted((e.name, e.dtype, tuple(e.shape), e.nbytes) for e in entries)


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_planned_layout_is_what_the_fixture_writer_writes(tmp_path: Path, fmt: str) -> None:
    checkpoint = write_fixture(tmp_path / fmt, fmt)
    config = json.loads((checkpoint / "config.json").read_text())
    assert _table(byte_bound.planned_entries(fmt, config)) == _table(read_checkpoint(checkpoint))


@pytest.mark.parametrize("shape", ["tiny", "qwen3.5-35b-a3b", "qwen3.5-397b-a17b-tp4"])
def test_the_deltanet_state_is_sized_as_sglang_allocates_it(shape: str) -> None:
    mamba = pytest.importorskip("sglang.srt.configs.mamba_utils")
    config = model_config(shape, 8)
    text = config["text_config"]
    state = mamba.Mamba2StateShape.create(
        tp_world_size=1,
        intermediate_size=text["linear_value_head_dim"] * text["linear_num_value_heads"],
        n_groups=text["linear_num_key_heads"],
        num_heads=text["linear_num_value_heads"],
        head_dim=text["linear_value_head_dim"],
        state_size=text["linear_key_head_dim"],
        conv_kernel=text["linear_conv_kernel_dim"],
    )
    per_sequence = (sum(math.prod(conv) for conv in state.conv) * torch.bfloat16.itemsize
                    + math.prod(state.temporal) * torch.float32.itemsize)  # fmt: skip
    deltanet_layers = text["layer_types"].count("linear_attention")
    assert deltanet_layers == 6  # 3 of every 4 layers
    assert byte_bound.deltanet_state_bytes(config, 64) == 2 * per_sequence * deltanet_layers * 64  # read and written


def test_the_35b_deltanet_state_is_2_mib_per_sequence_and_layer() -> None:
    config = model_config("qwen3.5-35b-a3b", 4)
    recurrent_mib = byte_bound.deltanet_state_bytes(config, 1) / 2 / 3 / 2**20  # one read, one of 3 DeltaNet layers
    assert 2.0 < recurrent_mib < 2.05  # 32 x 128 x 128 float32, and a 48 KiB conv state


def test_the_kv_read_grows_with_context_and_halves_in_fp8() -> None:
    config = model_config("qwen3.5-35b-a3b", 40)
    per_token = 2 * 2 * 256 * 2 * 10  # K and V, 2 heads of 256, BF16, 10 attention layers
    assert byte_bound.kv_bytes(config, 8, 1000) == per_token * 1000 * 8
    assert byte_bound.kv_bytes(config, 8, 1000, element_bytes=1) == per_token * 1000 * 8 / 2


def test_a_step_splits_its_bytes_by_the_kernels_that_read_them(tmp_path: Path) -> None:
    checkpoint = write_fixture(tmp_path / "bf16", "bf16")
    config = json.loads((checkpoint / "config.json").read_text())
    entries = read_checkpoint(checkpoint)
    unfused = byte_bound.step_bytes(entries, config, 8, 100, fse=False)
    fused = byte_bound.step_bytes(entries, config, 8, 100, fse=True)
    shared = sum(e.nbytes for e in entries if ".mlp.shared_expert." in e.name and not e.name.startswith("mtp."))
    assert unfused.weights == pytest.approx(byte_bound.weight_bytes(entries, config, 8))
    assert fused.weights == pytest.approx(unfused.weights)
    assert fused.experts - unfused.experts == pytest.approx(shared) and shared > 0
    assert unfused.cache == byte_bound.deltanet_state_bytes(config, 8) + byte_bound.kv_bytes(config, 8, 100)
    assert unfused.total == pytest.approx(unfused.weights + unfused.cache)


def test_the_cli_bounds_every_format_against_bf16_with_and_without_the_cache(tmp_path: Path, capsys) -> None:
    assert byte_bound.main(["--shape", "qwen3.5-35b-a3b", "--layers", "4", "--batch-sizes", "1,64", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "byte_bound.json").read_text())
    by = {(r["fmt"], r["batch"]): r for r in report["bounds"]}
    assert set(by) == {(fmt, batch) for fmt in FORMATS for batch in (1, 64)}
    assert by["bf16", 64]["weights_vs_bf16"] == by["bf16", 64]["with_cache_vs_bf16"] == 1.0
    int8 = by["quark-w8a8-int8", 64]
    assert 1.5 < int8["weights_vs_bf16"] < 2.0  # INT8 weights and per-channel scales; norms and the 1 GB lm_head BF16
    assert 1.0 < int8["with_cache_vs_bf16"] < int8["weights_vs_bf16"]  # the cache is the same bytes for both
    assert by["modelopt-nvfp4", 64]["weights_vs_bf16"] > int8["weights_vs_bf16"]
    assert "bound × BF16 (+ cache)" in capsys.readouterr().out


@pytest.mark.parametrize("argv, says", [
    (["--formats", "bf16,fp8"], "--formats fp8: not a checkpoint format; valid: bf16,"),
    (["--batch-sizes", "0"], "expected positive whole numbers"),
    (["--context", "0"], "--context 0: a decoding sequence has at least one token of context"),
])  # fmt: skip
def test_bad_arguments_are_named(tmp_path: Path, capsys, argv: list[str], says: str) -> None:
    with pytest.raises(SystemExit) as exit_:
        byte_bound.main([*argv, "--out", str(tmp_path)])
    assert exit_.value.code == 2
    assert says in capsys.readouterr().err


def test_a_bfloat16_recurrent_state_halves_what_it_adds(tmp_path: Path) -> None:
    """SGLang's --mamba-ssm-dtype bfloat16: the recurrent state (all but the small conv state) in half the bytes,
    so the bound with the cache comes closer to the weights' own."""
    def run(dtype: str) -> dict:
        out = tmp_path / dtype
        byte_bound.main(["--layers", "4", "--batch-sizes", "64", "--formats", "quark-w8a8-int8", "--mamba-ssm-dtype", dtype,
                         "--out", str(out)])  # fmt: skip
        report = json.loads((out / "byte_bound.json").read_text())
        assert report["mamba_ssm_dtype"] == dtype
        return report["bounds"][0]

    wide, narrow = run("float32"), run("bfloat16")
    recurrent = 2 * 32 * 128 * 128 * 64 * 3 / 1e9  # value heads x dims x batch x 3 DeltaNet layers, read and written
    assert wide["cache_gb"] - narrow["cache_gb"] == pytest.approx(recurrent * 4 / 2)  # 4 bytes -> 2 bytes
    assert narrow["weights_vs_bf16"] == wide["weights_vs_bf16"]
    assert wide["with_cache_vs_bf16"] < narrow["with_cache_vs_bf16"] < narrow["weights_vs_bf16"]

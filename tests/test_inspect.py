"""`python -m sglang_ext.inspect`: accepts every fixture, and names the exact problem in corrupted ones."""

import json
import os
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sglang_ext.fixtures import FORMATS
from sglang_ext.fixtures.tensors import fuse_experts
from sglang_ext.formats.check import check_checkpoint
from sglang_ext.inspect import main as inspect_main

L0 = "model.language_model.layers.0"
Tensors = dict[str, torch.Tensor]


def corrupt(
    source: Path,
    target: Path,
    tensors: Callable[[Tensors], Tensors] | None = None,
    config: Callable[[dict], None] | None = None,
) -> Path:
    shutil.copytree(source, target)
    if tensors is not None:
        weights = tensors(load_file(str(target / "model.safetensors")))
        save_file({name: t.contiguous() for name, t in weights.items()}, str(target / "model.safetensors"))
    if config is not None:
        content = json.loads((target / "config.json").read_text())
        config(content)
        (target / "config.json").write_text(json.dumps(content))
    return target


def problems(path: Path) -> list[str]:
    report = check_checkpoint(path)
    assert not report.ok
    return [f"{p.tensor}: {p.message}" for p in report.problems]


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_fixture_passes(fixtures_root: Path, fmt: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert inspect_main([str(fixtures_root / fmt), "--json", str(tmp_path / "report.json")]) == 0
    out = capsys.readouterr().out
    assert "OK: every tensor" in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["ok"] and report["problems"] == []
    assert report["scheme"] == {"quark-mxfp4-fse": "quark-mxfp4"}.get(fmt, fmt)


def test_what_each_format_quantizes(fixtures_root: Path) -> None:
    quantized = {fmt: check_checkpoint(fixtures_root / fmt).quantized for fmt in FORMATS}
    assert quantized["bf16"] == {}
    assert quantized["quark-mxfp4-fse"] == {"routed experts": 96, "shared expert": 12}
    assert quantized["modelopt-nvfp4"] == quantized["ct-mxfp4"] == {"routed experts": 96}
    assert quantized["quark-w8a8-int8"] == {"routed experts": 96, "shared expert": 12, "attention": 4, "DeltaNet": 15}
    for fmt in FORMATS[1:]:
        excluded = check_checkpoint(fixtures_root / fmt).excluded
        assert {"router", "MTP", "vision", "embeddings"} <= excluded.keys(), fmt


def test_missing_scale(fixtures_root: Path, tmp_path: Path) -> None:
    name = f"{L0}.mlp.experts.3.down_proj.weight_scale"
    path = corrupt(fixtures_root / "quark-mxfp4-fse", tmp_path / "c", lambda t: {k: v for k, v in t.items() if k != name})
    assert problems(path) == [f"{name}: missing (U8 [128, 2])"]


def test_wrong_scale_dtype(fixtures_root: Path, tmp_path: Path) -> None:
    name = f"{L0}.mlp.experts.0.gate_proj.weight_scale"
    path = corrupt(fixtures_root / "modelopt-nvfp4", tmp_path / "c", lambda t: {**t, name: t[name].float()})
    assert problems(path) == [f"{name}: dtype F32, expected F8_E4M3"]


def test_transposed_pack(fixtures_root: Path, tmp_path: Path) -> None:
    name = f"{L0}.mlp.experts.1.gate_proj.weight"

    def transpose(t: Tensors) -> Tensors:  # pack along the output dimension instead of the input
        return {**t, name: t[name].reshape(128, 32)}

    [problem] = problems(corrupt(fixtures_root / "quark-mxfp4-fse", tmp_path / "c", transpose))
    assert problem.startswith(f"{name}: shape [128, 32], expected [64, 64]: looks transposed")


def test_shared_expert_left_bf16_when_the_config_fuses_it(fixtures_root: Path, tmp_path: Path) -> None:
    bf16 = load_file(str(fixtures_root / "bf16" / "model.safetensors"))

    def unquantize_shared_expert(t: Tensors) -> Tensors:
        out = {k: v for k, v in t.items() if ".mlp.shared_expert." not in k or k.startswith("mtp.")}
        out.update({k: v for k, v in bf16.items() if ".mlp.shared_expert." in k and not k.startswith("mtp.")})
        return out

    found = problems(corrupt(fixtures_root / "quark-mxfp4-fse", tmp_path / "c", unquantize_shared_expert))
    assert len(found) == 12  # 3 projections x 4 layers, one problem each
    assert found[0] == (
        f"{L0}.mlp.shared_expert.gate_proj: stored BF16, but the quantization_config does not exclude it, so the "
        "shared expert is expected as quark-mxfp4 (weight_scale missing); quantize it or add it to the config's "
        "exclusion list"
    )


def test_excluded_shared_expert_stored_quantized(fixtures_root: Path, tmp_path: Path) -> None:
    fse = load_file(str(fixtures_root / "quark-mxfp4-fse" / "model.safetensors"))
    module = f"{L0}.mlp.shared_expert.up_proj"

    def quantize_one(t: Tensors) -> Tensors:
        out = {k: v for k, v in t.items() if k != f"{module}.weight"}
        return {**out, f"{module}.weight_packed": fse[f"{module}.weight"], f"{module}.weight_scale": fse[f"{module}.weight_scale"]}

    found = problems(corrupt(fixtures_root / "ct-mxfp4", tmp_path / "c", quantize_one))
    assert found == [f"{module}: stored quantized, but the quantization_config excludes it (expected one BF16 weight)"]


def test_quark_native_scale_names(fixtures_root: Path, tmp_path: Path) -> None:
    module = f"{L0}.linear_attn.out_proj"

    def native(t: Tensors) -> Tensors:
        scale = t.pop(f"{module}.weight_scale")
        return {**t, f"{module}.weight_quantizer.scale": scale.unsqueeze(1)}

    found = problems(corrupt(fixtures_root / "quark-w8a8-int8", tmp_path / "c", native))
    assert found == [
        f"{module}.weight_scale: missing (BF16/F32/F16 [128])",
        f"{module}.weight_quantizer.scale: unexpected tensor: Quark-native scale name; rename *_quantizer.scale to "
        "*_scale (sglang_ext.codecs.int8.rename_quark_checkpoint)",
    ]


def test_unsqueezed_int8_scale(fixtures_root: Path, tmp_path: Path) -> None:
    name = f"{L0}.mlp.experts.5.up_proj.weight_scale"
    path = corrupt(fixtures_root / "quark-w8a8-int8", tmp_path / "c", lambda t: {**t, name: t[name].unsqueeze(1)})
    assert problems(path) == [f"{name}: shape [64, 1], expected [64]"]


def test_fused_experts_in_a_per_expert_format(fixtures_root: Path, tmp_path: Path) -> None:
    text = json.loads((fixtures_root / "bf16" / "config.json").read_text())["text_config"]
    path = corrupt(fixtures_root / "quark-w8a8-int8", tmp_path / "c", lambda t: fuse_experts_with_scales(t, text))
    found = problems(path)
    assert found[0] == (
        f"{L0}.mlp.experts: routed experts stored fused 3-D (experts.gate_up_proj / down_proj); quark-w8a8-int8 "
        "checkpoints are loaded per expert (experts.{i}.gate_proj / up_proj / down_proj)"
    )
    assert len(found) == 4  # one per layer, not one per expert tensor


def fuse_experts_with_scales(t: Tensors, text: dict) -> Tensors:
    weights = {k: v for k, v in t.items() if not k.endswith("weight_scale") or ".mlp.experts." not in k}
    return fuse_experts(weights, text)


def test_missing_mtp_and_vision_tensors(fixtures_root: Path, tmp_path: Path) -> None:
    gone = ("mtp.fc.weight", "model.visual.blocks.1.attn.qkv.bias")
    path = corrupt(fixtures_root / "bf16", tmp_path / "c", lambda t: {k: v for k, v in t.items() if k not in gone})
    assert sorted(problems(path)) == ["model.visual.blocks.1.attn.qkv.bias: missing (BF16 [192])", "mtp.fc.weight: missing (BF16 [128, 256])"]


def test_config_claims_more_experts_than_stored(fixtures_root: Path, tmp_path: Path) -> None:
    def nine_experts(config: dict) -> None:
        config["text_config"]["num_experts"] = 9

    found = problems(corrupt(fixtures_root / "ct-mxfp4", tmp_path / "c", config=nine_experts))
    assert all(
        (".experts.8." in p and ": missing (" in p) or p.endswith(".mlp.gate.weight: shape [8, 128], expected [9, 128]")
        for p in found
    )
    assert f"{L0}.mlp.experts.8.down_proj.weight_packed: missing (U8 [128, 32])" in found


def test_truncated_shard(fixtures_root: Path, tmp_path: Path) -> None:
    path = corrupt(fixtures_root / "bf16", tmp_path / "c")
    weights = path / "model.safetensors"
    os.truncate(weights, weights.stat().st_size - 1000)
    [problem] = problems(path)
    assert "model.safetensors: tensor" in problem and "the file is truncated" in problem


def test_index_names_a_missing_shard(fixtures_root: Path, tmp_path: Path) -> None:
    path = corrupt(fixtures_root / "bf16", tmp_path / "c")
    names = load_file(str(path / "model.safetensors")).keys()
    weight_map = {name: "model-00001-of-00002.safetensors" for name in names}
    (path / "model-00001-of-00002.safetensors").write_bytes((path / "model.safetensors").read_bytes())
    (path / "model.safetensors").unlink()
    weight_map["lm_head.weight"] = "model-00002-of-00002.safetensors"
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    assert problems(path) == [
        ": model.safetensors.index.json names shards that are not in " f"{path}: model-00002-of-00002.safetensors"
    ]


def test_unsupported_quant_method(fixtures_root: Path, tmp_path: Path) -> None:
    def gptq(config: dict) -> None:
        config["quantization_config"] = {"quant_method": "gptq", "bits": 4}

    [problem] = problems(corrupt(fixtures_root / "bf16", tmp_path / "c", config=gptq))
    assert "quantization_config.quant_method: 'gptq' is not supported" in problem


def test_quantized_weights_without_quantization_config(fixtures_root: Path, tmp_path: Path) -> None:
    def drop(config: dict) -> None:
        del config["quantization_config"]

    found = problems(corrupt(fixtures_root / "quark-mxfp4-fse", tmp_path / "c", config=drop))
    assert (
        f"{L0}.mlp.shared_expert.down_proj: stored quantized, but the quantization_config excludes it "
        "(expected one BF16 weight)"
    ) in found


def test_leftover_zero_points(fixtures_root: Path, tmp_path: Path) -> None:
    name = f"{L0}.linear_attn.in_proj_a.weight_zero_point"
    path = corrupt(fixtures_root / "quark-w8a8-int8", tmp_path / "c", lambda t: {**t, name: torch.zeros(4, dtype=torch.int32)})
    assert problems(path) == [f"{name}: unexpected tensor: zero points are not read for symmetric schemes; drop them"]


def test_cli_prints_problems_and_exits_1(fixtures_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    name = f"{L0}.mlp.experts.2.up_proj.weight_scale_2"
    path = corrupt(fixtures_root / "modelopt-nvfp4", tmp_path / "c", lambda t: {k: v for k, v in t.items() if k != name})
    assert inspect_main([str(path)]) == 1
    out = capsys.readouterr().out
    assert "1 problem(s)" in out and f"{name}: missing (F32 [])" in out


def test_not_a_checkpoint_directory(tmp_path: Path) -> None:
    assert problems(tmp_path) == [f": no config.json in {tmp_path}: point at the checkpoint directory"]


def write_header_only(path: Path, entries: dict[str, tuple[str, list[int]]]) -> None:
    """A safetensors file with a real header and sparse zero data: checkpoint-sized without the disk."""
    itemsize = {"BF16": 2, "F32": 4, "U8": 1, "I8": 1, "F8_E4M3": 1}
    header, offset = {}, 0
    for name, (dtype, shape) in entries.items():
        nbytes = itemsize[dtype] * int(torch.tensor(shape).prod()) if shape else itemsize[dtype]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header).encode()
    with path.open("wb") as file:
        file.write(struct.pack("<Q", len(blob)) + blob)
    os.truncate(path, 8 + len(blob) + offset)


def test_a_397b_sized_checkpoint_is_checked_from_headers(fixtures_root: Path, tmp_path: Path) -> None:
    """60 layers x 512 experts, as Qwen3.5-397B-A17B: ~190k tensor names over 8 shards."""
    from sglang_ext.formats.layout import expected_tensors
    from sglang_ext.formats.schemes import detect_scheme

    config = json.loads((fixtures_root / "quark-mxfp4-fse" / "config.json").read_text())
    text = config["text_config"]
    text.update(num_experts=512, num_experts_per_tok=10)
    text["layer_types"] = ["linear_attention", "linear_attention", "linear_attention", "full_attention"] * 15
    # The exclusion list names modules of 4 layers; the real card's list covers all 60.
    config["quantization_config"]["exclude"] = [
        "lm_head", "re:^model\\.visual\\..*", "re:^mtp\\..*", "re:.*\\.mlp\\.gate$", "re:.*shared_expert_gate$",
        "re:.*\\.linear_attn\\..*", "re:.*\\.self_attn\\..*",
    ]  # fmt: skip
    scheme, quant_config = detect_scheme(config)
    expected = expected_tensors(config, scheme, quant_config)
    assert len(expected) > 180_000
    fixtures_root = tmp_path / "q397"
    fixtures_root.mkdir()
    (fixtures_root / "config.json").write_text(json.dumps(config))
    shards = [expected[i::8] for i in range(8)]
    weight_map = {}
    for index, shard in enumerate(shards):
        name = f"model-{index + 1:05d}-of-00008.safetensors"
        write_header_only(fixtures_root / name, {e.name: (e.dtypes[0], list(e.shape)) for e in shard})
        weight_map.update({e.name: name for e in shard})
    (fixtures_root / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))

    report = check_checkpoint(fixtures_root)
    assert report.ok, report.problems[:3]
    assert report.tensors == len(expected)
    assert report.quantized == {"routed experts": 60 * 512 * 3, "shared expert": 60 * 3}


def test_a_config_json_that_is_a_list_is_one_clean_problem(fixtures_root: Path, tmp_path: Path, capsys) -> None:
    path = shutil.copytree(fixtures_root / "bf16", tmp_path / "c")
    (path / "config.json").write_text("[1, 2]")
    assert inspect_main([str(path)]) == 1
    out = capsys.readouterr().out
    assert "config.json: a JSON object (mapping) is expected at the top level, not list" in out


def test_a_config_field_of_the_wrong_type_or_size_is_named(fixtures_root: Path, tmp_path: Path) -> None:
    def damage(config: dict) -> None:
        config["text_config"]["num_experts"] = 10**9
        config["text_config"]["hidden_size"] = "128"

    found = problems(corrupt(fixtures_root / "bf16", tmp_path / "c", config=damage))
    assert any("text_config.num_experts: Input should be less than or equal to 4096" in p for p in found), found
    assert any("text_config.hidden_size: Input should be a valid integer" in p for p in found), found


def test_a_missing_directory_or_a_file_is_named_as_such(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert problems(tmp_path / "nope") == [": no such directory: point at the checkpoint directory (config.json + *.safetensors)"]
    (tmp_path / "file").write_text("")
    assert problems(tmp_path / "file") == [": a file, not a directory: point at the checkpoint directory (config.json + *.safetensors)"]
    assert inspect_main([str(tmp_path / "nope")]) == 1
    out = capsys.readouterr().out
    assert f"{tmp_path / 'nope'}: no such directory" in out and out.count(str(tmp_path / "nope")) == 1

"""Fused shared expert (FSE): when Qwen3.5's shared expert may become routed-expert slot E, and where its
tensors go. Pure functions, no SGLang; tests/test_qwen3_5_override_sglang.py checks them inside SGLang."""

import json
from pathlib import Path

import pytest

from sglang_ext.fixtures import quant_configs
from sglang_ext.fixtures.model_config import model_config
from sglang_ext.formats.layout import expected_tensors
from sglang_ext.formats.schemes import detect_scheme
from sglang_ext.shared_expert_fusion import decide_shared_expert_fusion, shared_expert_slot

NUM_EXPERTS = 8  # the fixture's
L3 = "model.language_model.layers.3.mlp"


def config_of(fixtures_root: Path, fmt: str) -> dict:
    return json.loads((fixtures_root / fmt / "config.json").read_text())


def decide(config: dict, **flags) -> bool:
    return decide_shared_expert_fusion(config, config.get("quantization_config"), **flags).fuse


def with_exclusions(config: dict, field: str, entries: list[str]) -> dict:
    block = config["quantization_config"]
    return {**config, "quantization_config": {**block, field: entries}}


def shared_modules(config: dict) -> list[str]:
    layers = config["text_config"]["num_hidden_layers"]
    return [
        f"model.language_model.layers.{layer}.mlp.shared_expert.{proj}"
        for layer in range(layers)
        for proj in ("gate_proj", "up_proj", "down_proj")
    ]


DECISIONS = [
    ("bf16", True),
    ("quark-mxfp4-fse", True),
    ("quark-w8a8-int8", True),
    ("modelopt-nvfp4", False),  # routed experts only
    ("ct-mxfp4", False),  # routed experts only
]


@pytest.mark.parametrize("fmt, fused", DECISIONS)
def test_fixture_decision_table(fixtures_root: Path, fmt: str, fused: bool) -> None:
    decision = decide_shared_expert_fusion(config_of(fixtures_root, fmt), config_of(fixtures_root, fmt).get("quantization_config"))
    print(f"{fmt}: {decision}")
    assert decision.fuse is fused
    if not fused:
        assert "shared_expert" in decision.reason and "unquantized" in decision.reason


def test_disable_flag_wins(fixtures_root: Path) -> None:
    decision = decide_shared_expert_fusion(config_of(fixtures_root, "bf16"), None, disabled=True)
    assert not decision.fuse and "--disable-shared-experts-fusion" in decision.reason


def test_mismatched_intermediate_size_is_not_fused() -> None:
    config = model_config()
    config["text_config"]["shared_expert_intermediate_size"] = 2 * config["text_config"]["moe_intermediate_size"]
    decision = decide_shared_expert_fusion(config, None)
    assert not decision.fuse and "does not fit an expert slot" in decision.reason
    config["text_config"]["shared_expert_intermediate_size"] = 0
    assert not decide(config)


@pytest.mark.parametrize(
    "runner, fused", [("auto", True), ("triton", True), ("triton_kernel", False), ("flashinfer_mxfp4", False)]
)
def test_runners_that_drop_the_shared_slot_are_not_fused(runner: str, fused: bool) -> None:
    assert decide(model_config(), moe_runner_backend=runner) is fused


def test_exclusions_decide_not_the_format_name(fixtures_root: Path) -> None:
    # Quark MXFP4 with the shared expert excluded, and NVFP4 / ct-MXFP4 with it quantized.
    quark = config_of(fixtures_root, "quark-mxfp4-fse")
    excluded = quark["quantization_config"]["exclude"] + shared_modules(quark)
    assert not decide(with_exclusions(quark, "exclude", excluded))
    for fmt, field in (("modelopt-nvfp4", "ignore"), ("ct-mxfp4", "ignore")):
        config = config_of(fixtures_root, fmt)
        kept = [e for e in config["quantization_config"][field] if ".shared_expert." not in e]
        assert decide(with_exclusions(config, field, kept)), fmt


def test_one_excluded_layer_is_enough_to_refuse(fixtures_root: Path) -> None:
    quark = config_of(fixtures_root, "quark-w8a8-int8")
    excluded = quark["quantization_config"]["exclude"] + [f"{L3}.shared_expert.down_proj"]
    decision = decide_shared_expert_fusion(quark, {**quark["quantization_config"], "exclude": excluded})
    assert not decision.fuse and f"{L3}.shared_expert.down_proj is unquantized" in decision.reason


@pytest.mark.parametrize(
    "fmt, field, entry",
    [
        ("ct-mxfp4", "ignore", r"re:.*\.shared_expert\..*"),  # compressed-tensors regex
        ("modelopt-nvfp4", "ignore", "*shared_expert*"),  # ModelOpt glob
        ("modelopt-nvfp4", "ignore", "shared_expert"),  # ModelOpt matches any dotted part
        ("quark-mxfp4-fse", "exclude", "*.shared_expert.*"),  # Quark glob
    ],
)
def test_pattern_exclusions(fixtures_root: Path, fmt: str, field: str, entry: str) -> None:
    config = config_of(fixtures_root, fmt)
    kept = [e for e in config["quantization_config"][field] if ".shared_expert." not in e]
    assert decide(with_exclusions(config, field, kept))
    assert not decide(with_exclusions(config, field, kept + [entry]))


def test_modelopt_settings_from_hf_quant_config_json_or_rewritten_by_sglang(fixtures_root: Path) -> None:
    nvfp4 = config_of(fixtures_root, "modelopt-nvfp4")
    hf_quant_config = json.loads((fixtures_root / "modelopt-nvfp4" / quant_configs.HF_QUANT_CONFIG_FILE).read_text())
    decision = decide_shared_expert_fusion(model_config(), hf_quant_config)
    assert not decision.fuse and "unquantized" in decision.reason
    # SGLang's ModelConfig rewrites the block's quant_method in place when it parses it.
    rewritten = {**nvfp4["quantization_config"], "quant_method": "modelopt_fp4"}
    decision = decide_shared_expert_fusion(nvfp4, rewritten)
    assert not decision.fuse and "unquantized" in decision.reason


def test_compressed_tensors_targets_decide_too(fixtures_root: Path) -> None:
    config = config_of(fixtures_root, "ct-mxfp4")
    kept = [e for e in config["quantization_config"]["ignore"] if ".shared_expert." not in e]
    block = {**config["quantization_config"], "ignore": kept}
    block["config_groups"] = {"group_0": {**block["config_groups"]["group_0"], "targets": [r"re:.*\.mlp\.experts\..*"]}}
    assert not decide_shared_expert_fusion(config, block).fuse
    block["config_groups"]["group_0"]["targets"].append(r"re:.*\.mlp\.shared_expert\..*")
    assert decide_shared_expert_fusion(config, block).fuse


def test_quark_per_layer_spec_must_match(fixtures_root: Path) -> None:
    config = config_of(fixtures_root, "quark-mxfp4-fse")
    block = dict(config["quantization_config"])
    int8 = quant_configs.quark_w8a8_int8([])["global_quant_config"]
    block["layer_quant_config"] = {"*.shared_expert.*": int8}
    decision = decide_shared_expert_fusion(config, block)
    assert not decision.fuse and "another Quark spec" in decision.reason
    block["layer_quant_config"] = {"*.shared_expert.*": block["global_quant_config"]}
    assert decide_shared_expert_fusion(config, block).fuse


def test_unknown_quantization_is_left_unfused() -> None:
    decision = decide_shared_expert_fusion(model_config(), {"quant_method": "fp8", "weight_block_size": [128, 128]})
    assert not decision.fuse and "'fp8'" in decision.reason


def test_shared_and_routed_both_unquantized_is_fused(fixtures_root: Path) -> None:
    config = config_of(fixtures_root, "quark-w8a8-int8")
    linears = {t.module for t in expected_tensors(config, fused_experts=False) if t.module}
    moe = [m for m in linears if ".mlp.experts." in m or ".mlp.shared_expert." in m]
    assert decide(with_exclusions(config, "exclude", config["quantization_config"]["exclude"] + moe))


@pytest.mark.parametrize(
    "proj, param, shard",
    [("gate_proj", "w13_", "w1"), ("up_proj", "w13_", "w3"), ("down_proj", "w2_", "w2")],
)
@pytest.mark.parametrize("suffix", ["weight", "weight_scale", "weight_packed", "weight_scale_2", "input_scale"])
def test_shared_expert_tensor_goes_to_slot_e(proj: str, param: str, shard: str, suffix: str) -> None:
    slot = shared_expert_slot(f"{L3}.shared_expert.{proj}.{suffix}", NUM_EXPERTS)
    assert slot is not None
    expected = (f"{L3}.experts.{param}{suffix}", 3, NUM_EXPERTS, shard)
    assert (slot.param_name, slot.layer, slot.expert_id, slot.shard_id) == expected
    # SGLang's loader sees the language model under "model.", the mapping follows whatever prefix it is given.
    slot = shared_expert_slot(f"model.layers.3.mlp.shared_expert.{proj}.{suffix}", NUM_EXPERTS)
    assert slot is not None and slot.param_name == f"model.layers.3.mlp.experts.{param}{suffix}"


@pytest.mark.parametrize(
    "name",
    [
        f"{L3}.shared_expert_gate.weight",
        f"{L3}.gate.weight",
        f"{L3}.experts.0.gate_proj.weight",
        f"{L3}.experts.gate_up_proj",
        "mtp.layers.0.mlp.shared_expert.gate_proj.weight",  # the MTP draft keeps its shared expert separate
        "model.language_model.layers.3.self_attn.q_proj.weight",
    ],
)
def test_other_tensors_are_not_remapped(name: str) -> None:
    assert shared_expert_slot(name, NUM_EXPERTS) is None


def routed_param(name: str) -> str:
    """The FusedMoE parameter of a per-expert routed tensor (SGLang's make_expert_params_mapping rule)."""
    head, tail = name.split(".mlp.experts.")
    _, proj, suffix = tail.split(".", 2)
    return f"{head}.mlp.experts.{'w2_' if proj == 'down_proj' else 'w13_'}{suffix}"


@pytest.mark.parametrize("fmt", ["quark-mxfp4-fse", "quark-w8a8-int8"])
def test_every_shared_tensor_of_a_fused_checkpoint_lands_where_the_routed_ones_do(fixtures_root: Path, fmt: str) -> None:
    config = config_of(fixtures_root, fmt)
    scheme, block = detect_scheme(config)
    names = [t.name for t in expected_tensors(config, scheme, block) if not t.name.startswith("mtp.")]
    slots = [slot for slot in (shared_expert_slot(n, NUM_EXPERTS) for n in names) if slot is not None]
    for layer in range(config["text_config"]["num_hidden_layers"]):
        mlp = f"model.language_model.layers.{layer}.mlp"
        routed = {routed_param(n) for n in names if n.startswith(f"{mlp}.experts.0.")}
        ours = [s for s in slots if s.layer == layer]
        assert {s.param_name for s in ours} == routed, layer
        assert {s.shard_id for s in ours} == {"w1", "w2", "w3"}
        assert {s.expert_id for s in ours} == {NUM_EXPERTS}

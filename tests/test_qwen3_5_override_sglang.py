"""The Qwen3.5 FSE override inside SGLang (0.5.17, 0.5.23), on the CPU: what it registers, the decision it takes from
SGLang's own parsed configs, the MoE block its decoder layers get, and where its loader puts the shared
expert. The forward pass needs a GPU: tests/gpu/test_fse_bf16.py. Skipped where SGLang is not installed."""

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("sglang.srt")

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from sglang.srt.models import qwen2_moe, qwen3_5, qwen3_5_mtp  # noqa: E402
from sglang.srt.models.registry import import_model_classes  # noqa: E402
from sglang.srt.runtime_context import get_context  # noqa: E402

from sglang_ext.models import qwen3_5 as override  # noqa: E402
from sglang_cpu import SGLANG, cpu_model, fusion_published_off, sglang_configs, sglang_cpu  # noqa: E402,F401  (fixtures)

NUM_EXPERTS = 8  # the fixture's; the shared expert becomes expert 8
FORMATS = ("bf16", "quark-mxfp4-fse", "quark-w8a8-int8", "modelopt-nvfp4", "ct-mxfp4")


def test_entry_class_replaces_the_stock_moe_model_only() -> None:
    classes = import_model_classes("sglang_ext.models")
    ours = classes["Qwen3_5MoeForConditionalGeneration"]
    assert ours is override.Qwen3_5MoeForConditionalGeneration
    assert issubclass(ours, qwen3_5.Qwen3_5MoeForConditionalGeneration)
    # SGLang serves NEXTN for this architecture with Qwen3_5ForCausalLMMTP (configs/model_config.py); its
    # override changes only which quantization config it is built with.
    assert issubclass(classes["Qwen3_5ForCausalLMMTP"], qwen3_5_mtp.Qwen3_5ForCausalLMMTP)


@pytest.mark.parametrize(
    "fmt, fused",
    [("bf16", True), ("quark-mxfp4-fse", True), ("quark-w8a8-int8", True), ("modelopt-nvfp4", False),
     ("ct-mxfp4", False)],
)
def test_decision_from_sglangs_parsed_configs(sglang_cpu, fixtures_root: Path, fmt: str, fused: bool) -> None:
    hf_config, quant_config = sglang_configs(fixtures_root / fmt)
    decision = override.fusion_decision(hf_config, quant_config)
    print(f"{fmt}: {decision}")
    assert decision.fuse is fused
    # SGLang's own check passes all five on 0.5.17 (only Quark's config has a veto), so alone it would fuse NVFP4
    # and ct-MXFP4, whose BF16 shared expert cannot sit in their quantized expert weights; 0.5.23's ModelOpt
    # config vetoes its excluded shared expert itself (`ModelOptFp4Config.can_fuse_shared_expert`).
    sglang_refuses = SGLANG == "0.5.23" and fmt == "modelopt-nvfp4"
    assert qwen2_moe.can_fuse_shared_expert(hf_config.text_config, quant_config) is not sglang_refuses


def test_decision_honours_the_disable_flag(fixtures_root: Path) -> None:
    hf_config, _ = sglang_configs(fixtures_root / "bf16")
    with get_context().override_server_args(device="cpu", disable_shared_experts_fusion=True):
        decision = override.fusion_decision(hf_config, None)
    assert not decision.fuse and "--disable-shared-experts-fusion" in decision.reason


def test_modelopt_settings_only_in_hf_quant_config_json(sglang_cpu, fixtures_root: Path, tmp_path: Path) -> None:
    path = shutil.copytree(fixtures_root / "modelopt-nvfp4", tmp_path / "nvfp4")
    config = json.loads((path / "config.json").read_text())
    del config["quantization_config"]
    (path / "config.json").write_text(json.dumps(config))
    hf_config, quant_config = sglang_configs(path)
    assert getattr(hf_config, "quantization_config", None) is None and quant_config.get_name() == "modelopt_fp4"
    decision = override.fusion_decision(hf_config, quant_config)
    assert not decision.fuse and "shared_expert" in decision.reason


@pytest.mark.parametrize(
    "fmt, flags, fused",
    [("bf16", {}, True), ("quark-mxfp4-fse", {}, True), ("ct-mxfp4", {}, False),
     ("bf16", {"disable_shared_experts_fusion": True}, False)],
)
def test_model_fuses_as_decided_and_publishes_an_off_decision(
    cpu_model, fixtures_root: Path, fmt: str, flags: dict, fused: bool
) -> None:
    hf_config, quant_config = sglang_configs(fixtures_root / fmt)
    with get_context().override_server_args(device="cpu", **flags):
        model = cpu_model(hf_config, quant_config)
        assert fusion_published_off(model) is not fused
    assert model.enable_shared_expert_fusion is fused and model.num_fused_shared_experts == int(fused)
    text = hf_config.text_config
    for decoder_layer in model.model.layers:
        block = decoder_layer.mlp
        assert isinstance(block, override.CudaFusableSparseMoeBlock)
        assert block.num_fused_shared_experts == int(fused) and (block.shared_expert is None) is fused
        assert block.experts.num_experts == NUM_EXPERTS + int(fused)
        assert block.experts.top_k == text.num_experts_per_tok + int(fused)
    # Outside the model's construction the name is SGLang's block again (the MTP draft gets that one).
    assert qwen3_5.Qwen2MoeSparseMoeBlock is qwen2_moe.Qwen2MoeSparseMoeBlock


def moe_tensors(path: Path) -> dict[str, torch.Tensor]:
    tensors = load_file(str(path / "model.safetensors"))
    return {name: t for name, t in tensors.items() if name.startswith("model.language_model.") and ".mlp." in name}


@pytest.mark.parametrize("fmt", ["bf16", "quark-mxfp4-fse"])
def test_loader_puts_the_shared_expert_in_slot_e_as_the_aiter_path_does(cpu_model, fixtures_root: Path, fmt: str) -> None:
    hf_config, quant_config = sglang_configs(fixtures_root / fmt)
    ours = cpu_model(hf_config, quant_config)
    assert ours.enable_shared_expert_fusion
    checkpoint = moe_tensors(fixtures_root / fmt)
    ours.load_weights(iter(checkpoint.items()))

    suffixes = ["weight"] + (["weight_scale"] if fmt != "bf16" else [])
    for layer in range(hf_config.text_config.num_hidden_layers):
        shared = f"model.language_model.layers.{layer}.mlp.shared_expert"
        experts = ours.model.layers[layer].mlp.experts
        for suffix in suffixes:
            w13, w2 = getattr(experts, f"w13_{suffix}"), getattr(experts, f"w2_{suffix}")
            gate_up = torch.cat([checkpoint[f"{shared}.gate_proj.{suffix}"], checkpoint[f"{shared}.up_proj.{suffix}"]])
            assert torch.equal(w13[NUM_EXPERTS], gate_up), (layer, suffix)
            assert torch.equal(w2[NUM_EXPERTS], checkpoint[f"{shared}.down_proj.{suffix}"]), (layer, suffix)
            assert gate_up.float().abs().sum() > 0

    # The stock loader's aiter branch (what this override turns on for CUDA) fills every parameter alike.
    stock = cpu_model(hf_config, quant_config)
    qwen3_5.Qwen3_5MoeForConditionalGeneration.load_weights(stock, iter(checkpoint.items()))
    stock_params = dict(stock.named_parameters())
    for name, param in ours.named_parameters():
        assert torch.equal(param, stock_params[name]), name


def test_a_shared_tensor_without_a_routed_counterpart_is_refused(cpu_model, fixtures_root: Path) -> None:
    hf_config, _ = sglang_configs(fixtures_root / "bf16")
    model = cpu_model(hf_config, None)
    stray = "model.language_model.layers.0.mlp.shared_expert.gate_proj.weight_scale"
    with pytest.raises(ValueError, match=r"w13_weight_scale.*--disable-shared-experts-fusion"):
        model.load_weights(iter([(stray, torch.ones(64, 4))]))


def mtp_moe_standin(text) -> torch.nn.Module:
    """What `Qwen3_5ForCausalLMMTP.load_weights` loads MoE tensors into, without the kernels a CPU lacks: the
    MTP layer's MoE block under the name SGLang gives it (`model.layers.0.mlp`), unquantized as SGLang builds
    the MTP of every format here."""
    from sglang.srt.models import qwen3_5_mtp

    standin = torch.nn.Module()
    standin.config = text
    standin.model = torch.nn.Module()
    standin.model.layers = torch.nn.ModuleList([torch.nn.Module()])
    standin.model.layers[0].mlp = qwen2_moe.Qwen2MoeSparseMoeBlock(layer_id=0, config=text, prefix="model.layers.0.mlp")
    standin.load_weights = lambda weights: qwen3_5_mtp.Qwen3_5ForCausalLMMTP.load_weights(standin, weights)
    with torch.no_grad():
        for param in standin.parameters():
            param.zero_()
    return standin


@pytest.mark.parametrize("fmt", ["bf16", "quark-w8a8-int8"])
def test_sglangs_mtp_loader_reads_both_expert_layouts_alike(cpu_model, tmp_path: Path, fmt: str) -> None:
    from sglang_ext.fixtures import write_fixture

    loaded = {}
    for layout in ("per-expert", "fused"):
        path = write_fixture(tmp_path / layout, fmt, mtp_fused_experts=layout == "fused")
        hf_config, _ = sglang_configs(path)
        standin = mtp_moe_standin(hf_config.text_config)
        mlp = {n: t for n, t in load_file(str(path / "model.safetensors")).items() if n.startswith("mtp.layers.0.mlp.")}
        assert ("mtp.layers.0.mlp.experts.gate_up_proj" in mlp) is (layout == "fused")
        standin.load_weights(iter(mlp.items()))
        loaded[layout] = dict(standin.named_parameters())
    experts = loaded["per-expert"]["model.layers.0.mlp.experts.w13_weight"]
    assert experts.abs().sum(dim=(1, 2)).min() > 0  # every expert filled
    assert loaded["per-expert"]["model.layers.0.mlp.shared_expert.gate_up_proj.weight"].abs().sum() > 0
    for name, param in loaded["per-expert"].items():
        assert torch.equal(param, loaded["fused"][name]), name


@pytest.mark.parametrize("fmt, unquantized", [("ct-mxfp4", True), ("bf16", False), ("modelopt-nvfp4", False),
                                              ("quark-w8a8-int8", False)])  # fmt: skip
def test_a_compressed_tensors_mtp_head_listed_as_ignored_is_built_unquantized(fixtures_root: Path, fmt: str, unquantized: bool) -> None:
    from sglang_ext.models import qwen3_5_mtp as mtp_override

    _, quant_config = sglang_configs(fixtures_root / fmt)
    # ModelOpt and Quark are SGLang's own cases (qwen3_5_mtp.py:63-82); BF16 has no config
    assert mtp_override.ships_unquantized_mtp(quant_config) is unquantized

"""What `sglang_ext.quantize` writes, read back by SGLang (0.5.17, 0.5.23) on a CPU: SGLang's config parsing and quantization
config for the output directory, SGLang's own safetensors iterator over its shards, and SGLang's Qwen3.5 MoE
loader filling every expert slot (the fused shared expert's included) from them, in both source layouts.
Skipped where SGLang is not installed."""

import json
from pathlib import Path

import pytest

pytest.importorskip("sglang.srt")

import torch  # noqa: E402
from sglang.srt.model_loader.weight_utils import safetensors_weights_iterator  # noqa: E402

from quantized_checkpoints import LAYOUTS, load_dir, quantized, sources  # noqa: E402,F401  (fixtures)
from sglang_cpu import cpu_model, sglang_configs, sglang_cpu  # noqa: E402,F401  (fixtures)

# FusedMoE parameter suffix <- checkpoint suffix (SGLang's ct-MXFP4 MoE method takes weight_packed as weight).
MOE_PARAMS = {
    "quark-mxfp4-fse": {"weight": "weight", "weight_scale": "weight_scale"},
    "ct-mxfp4": {"weight": "weight_packed", "weight_scale": "weight_scale"},
    "quark-w8a8-int8": {"weight": "weight", "weight_scale": "weight_scale"},
    "modelopt-nvfp4": {"weight": "weight", "weight_scale": "weight_scale"},
}


def sglang_read(path: Path) -> list[tuple[str, torch.Tensor]]:
    return list(safetensors_weights_iterator(sorted(str(p) for p in path.glob("*.safetensors"))))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("fmt", list(MOE_PARAMS))
def test_sglangs_loader_fills_every_expert_slot(cpu_model, quantized, fmt: str, layout: str) -> None:
    if fmt == "modelopt-nvfp4" and not torch.cuda.is_available():
        pytest.skip("SGLang builds its NVFP4 MoE method only on CUDA (Blackwell, or the Marlin fallback on "
                    "SM80+, which queries the device at construction); its config parsing is tested below")
    out = quantized(fmt, layout)
    hf_config, quant_config = sglang_configs(out)
    model = cpu_model(hf_config, quant_config)
    read = sglang_read(out)
    ours = load_dir(out)
    assert {name for name, _ in read} == ours.keys()
    model.load_weights(iter([(n, t) for n, t in read if n.startswith("model.language_model.") and ".mlp." in n]))

    text = hf_config.text_config
    fused_shared = model.enable_shared_expert_fusion
    # MXFP4-FSE quantizes the shared expert as the routed ones, so it is fused; ct-MXFP4 keeps it BF16, so it is
    # not. (INT8's fusion depends on sglang_ext's Quark INT8 registration, which these configs do not make.)
    assert {"quark-mxfp4-fse": True, "ct-mxfp4": False}.get(fmt, fused_shared) is fused_shared
    for layer in range(text.num_hidden_layers):
        mlp = f"model.language_model.layers.{layer}.mlp"
        block = model.model.layers[layer].mlp
        slots = [f"{mlp}.experts.{e}" for e in range(text.num_experts)] + ([f"{mlp}.shared_expert"] if fused_shared else [])
        for slot, module in enumerate(slots):
            for param, stored in MOE_PARAMS[fmt].items():
                gate_up = torch.cat([ours[f"{module}.gate_proj.{stored}"], ours[f"{module}.up_proj.{stored}"]])
                assert torch.equal(getattr(block.experts, f"w13_{param}")[slot].float(), gate_up.float()), (module, param)
                assert torch.equal(getattr(block.experts, f"w2_{param}")[slot].float(), ours[f"{module}.down_proj.{stored}"].float())
        if not fused_shared:
            shared = block.shared_expert
            gate_up = torch.cat([ours[f"{mlp}.shared_expert.gate_proj.weight"], ours[f"{mlp}.shared_expert.up_proj.weight"]])
            assert torch.equal(shared.gate_up_proj.weight, gate_up)
            assert torch.equal(shared.down_proj.weight, ours[f"{mlp}.shared_expert.down_proj.weight"])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_sglang_parses_the_nvfp4_output(sglang_cpu, quantized, layout: str) -> None:
    out = quantized("modelopt-nvfp4", layout)
    _, quant_config = sglang_configs(out)
    assert quant_config.get_name() == "modelopt_fp4"
    assert quant_config.group_size == 16 and quant_config.is_checkpoint_nvfp4_serialized
    ignore = json.loads((out / "config.json").read_text())["quantization_config"]["ignore"]
    assert list(quant_config.exclude_modules) == ignore
    assert {name for name, _ in sglang_read(out)} == load_dir(out).keys()


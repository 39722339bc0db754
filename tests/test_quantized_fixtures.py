"""The quantized fixtures: the tools' config blocks, each card's choices, and the dequantized model.

The codecs are checked bit-exactly against the tools in test_codecs_*; here the question is whether the
writers apply them to the right modules with the right settings, and whether what they wrote is the
same model as the BF16 fixture up to quantization error.
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText

from sglang_ext.codecs import mxfp4
from tests.conftest import bf16_source
from sglang_ext.fixtures import FORMATS, write_fixture
from sglang_ext.fixtures.tensors import unfuse_experts
from sglang_ext.formats.dequantize import dequantized_state_dict, write_dequantized
from vendor_exports import assert_ct_block, assert_quark_block, quark_int8_config, quark_mxfp4_config

QUANTIZED = FORMATS[1:]
L0 = "model.language_model.layers.0"


def config_of(path: Path) -> dict:
    return json.loads((path / "config.json").read_text())


def test_formats() -> None:
    assert QUANTIZED == ("quark-mxfp4-fse", "modelopt-nvfp4", "ct-mxfp4", "quark-w8a8-int8")


@pytest.mark.parametrize("fmt", QUANTIZED)
def test_same_seed_same_bytes(fixtures_root: Path, fmt: str, tmp_path: Path) -> None:
    again = write_fixture(tmp_path / fmt, fmt, seed=0)
    for name in ("model.safetensors", "config.json"):
        assert (again / name).read_bytes() == (fixtures_root / fmt / name).read_bytes(), name


def test_quark_mxfp4_block_is_what_quark_writes(fixtures_root: Path) -> None:
    assert_quark_block(config_of(fixtures_root / "quark-mxfp4-fse")["quantization_config"], quark_mxfp4_config())


def test_quark_int8_block_is_what_quark_writes(fixtures_root: Path) -> None:
    ours = config_of(fixtures_root / "quark-w8a8-int8")["quantization_config"]
    assert ours["global_quant_config"] == quark_int8_config()["global_quant_config"]


def test_compressed_tensors_block_is_what_compressed_tensors_writes(fixtures_root: Path) -> None:
    assert_ct_block(config_of(fixtures_root / "ct-mxfp4")["quantization_config"])


def test_modelopt_writes_both_config_files(fixtures_root: Path) -> None:
    block = config_of(fixtures_root / "modelopt-nvfp4")["quantization_config"]
    legacy = json.loads((fixtures_root / "modelopt-nvfp4" / "hf_quant_config.json").read_text())
    assert block["quant_algo"] == legacy["quantization"]["quant_algo"] == "NVFP4"
    assert block["ignore"] == legacy["quantization"]["exclude_modules"]
    assert f"{L0}.mlp.shared_expert.gate_proj" in block["ignore"]
    assert not any(".mlp.experts." in module and not module.startswith("mtp.") for module in block["ignore"])


def test_nvfp4_gate_and_up_share_the_global_scale(fixtures_root: Path) -> None:
    tensors = load_file(str(fixtures_root / "modelopt-nvfp4" / "model.safetensors"))
    for expert in range(8):
        prefix = f"{L0}.mlp.experts.{expert}"
        gate, up = tensors[f"{prefix}.gate_proj.weight_scale_2"], tensors[f"{prefix}.up_proj.weight_scale_2"]
        assert torch.equal(gate, up)
        assert not torch.equal(gate, tensors[f"{prefix}.down_proj.weight_scale_2"])
    assert tensors[f"{L0}.mlp.experts.0.down_proj.input_scale"].item() == pytest.approx(8.0 / 2688)


def test_ct_uses_the_cards_mse_scale_choice(fixtures_root: Path) -> None:
    bf16 = unfuse_experts(load_file(str(fixtures_root / "bf16" / "model.safetensors")))
    tensors = load_file(str(fixtures_root / "ct-mxfp4" / "model.safetensors"))
    name = f"{L0}.mlp.experts.0.gate_proj"
    minmax = mxfp4.quantize(bf16[f"{name}.weight"], mxfp4.Producer.COMPRESSED_TENSORS)[1]
    assert not torch.equal(tensors[f"{name}.weight_scale"], minmax)  # MSE3 moves some block exponents
    assert (tensors[f"{name}.weight_scale"].int() - minmax.int()).abs().max() == 1


def test_int8_scales_follow_quark(fixtures_root: Path) -> None:
    bf16 = unfuse_experts(load_file(str(fixtures_root / "bf16" / "model.safetensors")))
    tensors = load_file(str(fixtures_root / "quark-w8a8-int8" / "model.safetensors"))
    name = f"{L0}.linear_attn.in_proj_qkv"
    weight = bf16[f"{name}.weight"]
    assert torch.equal(tensors[f"{name}.weight_scale"], (weight.float().abs().amax(-1) / 127.5).to(torch.bfloat16))
    assert tensors[f"{name}.weight"].dtype == torch.int8


TOLERANCE = {  # per-tensor relative error of the dequantized weights (Frobenius norm)
    "quark-mxfp4-fse": 0.16,
    "modelopt-nvfp4": 0.12,
    "ct-mxfp4": 0.15,
    "quark-w8a8-int8": 0.01,
}


@pytest.mark.parametrize("fmt", QUANTIZED)
def test_dequantized_weights_are_the_bf16_weights_up_to_quantization(fixtures_root: Path, fmt: str) -> None:
    bf16 = load_file(str(bf16_source(fixtures_root, fmt) / "model.safetensors"))
    ours = dequantized_state_dict(fixtures_root / fmt)
    assert ours.keys() == bf16.keys()
    changed = 0
    for name, reference in bf16.items():
        if torch.equal(ours[name], reference):
            continue
        changed += 1
        error = ((ours[name].float() - reference.float()).norm() / reference.float().norm()).item()
        assert 0 < error < TOLERANCE[fmt], (name, error)
    expected_changed = {"quark-mxfp4-fse": 4 * 5, "modelopt-nvfp4": 4 * 2, "ct-mxfp4": 4 * 2, "quark-w8a8-int8": 4 * 5 + 3 * 5 + 4}
    assert changed == expected_changed[fmt]


# Logits of the dequantized model against the BF16 model on 4 x 48 random tokens: bounds a little above
# what the formats' weight error gives (measured: MXFP4-FSE 0.078, NVFP4 0.058, ct-MXFP4 0.065, INT8
# 0.011; the BF16 model run in bf16 instead of float32 moves them by 0.011). The control below shows that
# a wrong mapping lands far above them.
LOGIT_REL_ERROR = {"quark-mxfp4-fse": 0.12, "modelopt-nvfp4": 0.1, "ct-mxfp4": 0.1, "quark-w8a8-int8": 0.03}


def logits(path: Path) -> torch.Tensor:
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    tokens = torch.randint(0, 3000, (4, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model(input_ids=tokens).logits.float()


@pytest.fixture(scope="module")
def bf16_logits(fixtures_root: Path) -> torch.Tensor:
    return logits(fixtures_root / "bf16")


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return ((ours - reference).norm() / reference.norm()).item()


@pytest.mark.parametrize("fmt", QUANTIZED)
def test_dequantized_model_matches_bf16_logits(fixtures_root: Path, fmt: str, bf16_logits: torch.Tensor, tmp_path: Path) -> None:
    ours = logits(write_dequantized(fixtures_root / fmt, tmp_path / fmt))
    error = relative_error(ours, bf16_logits)
    agreement = (ours.argmax(-1) == bf16_logits.argmax(-1)).float().mean().item()
    print(f"{fmt}: logits relative error {error:.3f}, top-1 agreement {agreement:.3f}")
    assert torch.isfinite(ours).all()
    assert 0 < error < LOGIT_REL_ERROR[fmt]
    assert agreement > 0.8


def test_a_mismapped_checkpoint_fails_the_logit_bound(fixtures_root: Path, bf16_logits: torch.Tensor, tmp_path: Path) -> None:
    """Control: the INT8 fixture with gate and up swapped in every routed expert."""
    target = write_dequantized(fixtures_root / "quark-w8a8-int8", tmp_path / "swapped")
    tensors = load_file(str(target / "model.safetensors"))
    for name in [n for n in tensors if n.endswith("experts.gate_up_proj")]:
        gate, up = tensors[name].chunk(2, dim=-2)
        tensors[name] = torch.cat((up, gate), dim=-2)
    from safetensors.torch import save_file

    save_file(tensors, str(target / "model.safetensors"), metadata={"format": "pt"})
    assert relative_error(logits(target), bf16_logits) > 2 * LOGIT_REL_ERROR["quark-w8a8-int8"]


def test_reference_experts_forward_is_transformers_own(fixtures_root: Path) -> None:
    from sglang_ext.formats.reference import _quantized_experts_forward

    model = AutoModelForImageTextToText.from_pretrained(fixtures_root / "bf16", dtype=torch.float32).eval()
    tokens = torch.randint(0, 3000, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(input_ids=tokens).logits
        for name, module in model.named_modules():
            if name.endswith("mlp.experts"):
                module.forward = _quantized_experts_forward(module, lambda x: x)
        after = model(input_ids=tokens).logits
    assert (after - before).abs().max() < 1e-5


@pytest.mark.parametrize(("fmt", "hooked"), [("quark-mxfp4-fse", 4 + 12), ("quark-w8a8-int8", 4 + 12 + 4 + 15), ("ct-mxfp4", 0)])
def test_reference_quantizes_the_activations_of_quantized_modules(fixtures_root: Path, fmt: str, hooked: int, tmp_path: Path) -> None:
    from sglang_ext.formats.reference import apply_activation_quantization

    dequantized = write_dequantized(fixtures_root / fmt, tmp_path / fmt)
    model = AutoModelForImageTextToText.from_pretrained(dequantized, dtype=torch.float32).eval()
    tokens = torch.randint(0, 3000, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        weight_only = model(input_ids=tokens).logits
        assert apply_activation_quantization(model, fixtures_root / fmt) == hooked
        reference = model(input_ids=tokens).logits
    error = relative_error(reference, weight_only)
    print(f"{fmt}: activation quantization moves the logits by {error:.4f} (relative)")
    assert (error > 0.005) if hooked else (error == 0)

"""The producing tools' own per-tensor export paths (CPU), which the codec and quantizer tests compare bytes with:
amd-quark 0.13 (MXFP4, INT8), nvidia-modelopt 0.47.0 (NVFP4), compressed-tensors 0.20.0 (MXFP4). Each import
is inside its function, so a module using one tool does not need the others."""

import json

import torch

from sglang_ext.codecs import nvfp4

CPU = torch.device("cpu")


def ct_scheme():
    from compressed_tensors.quantization import QuantizationScheme
    from compressed_tensors.quantization.quant_scheme import MXFP4A16

    return QuantizationScheme(targets=["Linear"], weights=MXFP4A16["weights"])


def ct_export(w: torch.Tensor) -> dict[str, torch.Tensor]:
    """llm-compressor's default path: memoryless min/max observer per group -> MXFP4PackedCompressor.compress."""
    from compressed_tensors.compressors import MXFP4PackedCompressor
    from compressed_tensors.quantization.utils.helpers import compute_dynamic_scales_and_zp

    scheme = ct_scheme()
    scale, zero_point = compute_dynamic_scales_and_zp(value=w, args=scheme.weights, module=None)
    state = {"weight": w, "weight_scale": scale, "weight_zero_point": zero_point}
    return MXFP4PackedCompressor.compress(state, scheme)


def _quark_static_export(spec, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[no-untyped-def]
    """Quark's static weight export: observer, then StaticScaledRealQuantizer.to_real_quantize_params (for MXFP4
    scaled_real_quantize + Pack_fp4.pack + to_e8m0_uint8), the scale as exported."""
    from quark.torch.export.nn.modules.realquantizer import StaticScaledRealQuantizer
    from quark.torch.quantization.tensor_quantize import FakeQuantizeBase

    fake = FakeQuantizeBase.get_fake_quantize(spec, CPU)
    fake(w)
    real = StaticScaledRealQuantizer(spec, fake, reorder=False, real_quantized=False, float_dtype=w.dtype, device=CPU)
    quantized = real.to_real_quantize_params(w)
    real.maybe_convert_and_transpose_scale()
    return quantized, real.scale


def quark_export(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quark's static MXFP4 weight export: (packed, E8M0 scales)."""
    from quark.torch.quantization.config.config import OCP_MXFP4Spec

    return _quark_static_export(OCP_MXFP4Spec(ch_axis=-1, is_dynamic=False).to_quantization_spec(), w)


def modelopt_export(w: torch.Tensor, weight_scale_2: torch.Tensor | None = None) -> nvfp4.NVFP4Weight:
    """``export/quant_utils.py:to_quantized_weight`` for NVFP4 on a dynamic (max-calibrated) weight quantizer."""
    from modelopt.torch.quantization.qtensor import NVFP4QTensor

    if weight_scale_2 is None:
        weight_scale_2 = NVFP4QTensor.get_weights_scaling_factor_2(w)
    scale, _ = NVFP4QTensor.get_weights_scaling_factor(w, nvfp4.BLOCK, weight_scale_2)
    qtensor, scale_out, scale_2_out = NVFP4QTensor.quantize(w, nvfp4.BLOCK, scale, weight_scale_2)
    return nvfp4.NVFP4Weight(qtensor._quantized_data, scale_out, scale_2_out)


def quark_weight_export(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quark's static per-channel INT8 weight export: (int8 codes, scales)."""
    from quark.torch.quantization.config.config import Int8PerChannelSpec

    return _quark_static_export(Int8PerChannelSpec(ch_axis=0, symmetric=True, is_dynamic=False).to_quantization_spec(), w)


def quark_mxfp4_config() -> dict:
    """Quark's own config for its "mxfp4" LLM template (what the MXFP4 cards were exported with)."""
    from quark.torch import LLMTemplate

    template = LLMTemplate(model_type="qwen3_5_moe_fixture", kv_layers_name=["*k_proj", "*v_proj"], q_layer_name="*q_proj")
    LLMTemplate.register_template(template)
    return LLMTemplate.get("qwen3_5_moe_fixture").get_config(scheme="mxfp4", exclude_layers=["lm_head"]).to_dict()


def quark_int8_config() -> dict:
    from quark.torch.quantization.config.config import Config, Int8PerChannelSpec, QLayerConfig

    def spec(is_dynamic: bool):  # type: ignore[no-untyped-def]
        return Int8PerChannelSpec(ch_axis=0, symmetric=True, is_dynamic=is_dynamic).to_quantization_spec()

    return Config(global_quant_config=QLayerConfig(weight=spec(False), input_tensors=spec(True))).to_dict()


def assert_quark_block(ours: dict, quark: dict) -> None:
    """Field by field, less what the export adds or the model decides (exclude, version, export settings)."""
    assert ours["global_quant_config"] == quark["global_quant_config"]
    assert {k: v for k, v in ours.items() if k not in ("exclude", "version", "export")} == {
        k: v for k, v in quark.items() if k not in ("exclude", "version")
    }


def assert_ct_block(ours: dict) -> None:
    """compressed-tensors' own QuantizationConfig for MXFP4A16 with our ignore list, field by field."""
    from compressed_tensors.quantization import QuantizationConfig, QuantizationStatus, preset_name_to_scheme

    theirs = QuantizationConfig(
        config_groups={"group_0": preset_name_to_scheme("MXFP4A16", ["Linear"])},
        format="mxfp4-pack-quantized",
        ignore=ours["ignore"],
        quantization_status=QuantizationStatus.COMPRESSED,
    )
    assert {k: v for k, v in ours.items() if k != "version"} == json.loads(json.dumps(theirs.model_dump(), default=str))
    assert QuantizationConfig.model_validate(ours).format == "mxfp4-pack-quantized"


def modelopt_input_scale(amax: float) -> torch.Tensor:
    """ModelOpt's `input_scale` for a calibrated activation amax."""
    from modelopt.torch.quantization.qtensor import NVFP4QTensor

    class Quantizer:  # the attributes get_activation_scaling_factor reads
        is_enabled, maxbound = True, 6.0

        def export_amax(self) -> torch.Tensor:
            return torch.tensor(amax)

    return NVFP4QTensor.get_activation_scaling_factor(Quantizer())

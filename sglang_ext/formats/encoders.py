"""How each quantized format turns BF16 Linears into its stored tensors: which modules it quantizes, the codec
and settings of the producing tool, the config it writes. The fixture writers and `sglang_ext.quantize` both
encode through this module, so a fixture and a user's quantized checkpoint are one format by construction.

Each format follows its card (docs/formats.md): which Linears are quantized (the rest is listed as excluded
in the tool's config block, MTP and ViT always), experts stored per expert, and each tool's codec:

* quark-mxfp4-fse: routed experts and the shared expert, Quark MXFP4 (AMD Qwen3.5-397B MXFP4 card).
* modelopt-nvfp4: routed experts, gate/up sharing one global scale (Qwen3.5-397B NVFP4 card).
* ct-mxfp4: routed experts, compressed-tensors MXFP4 (olka-fi Qwen3.5-35B-A3B MXFP4).
* quark-w8a8-int8: attention, DeltaNet, routed and shared experts; Quark-native scale names renamed the way
  the Qwen3.6 INT8 card did.

`Options.fuse_shared_expert` also quantizes the shared expert where the card leaves it BF16 (NVFP4, ct-MXFP4),
so that SGLang can fuse it into the routed MoE (`sglang_ext.shared_expert_fusion`).

Activations: Quark MXFP4 and INT8 quantize them dynamically and compressed-tensors MXFP4 is weight-only, so
those need no calibration. ModelOpt NVFP4 stores one static activation scale per Linear (`input_scale`, the
calibrated input amax / 2688; the per-16 block scales are dynamic): this module does not calibrate, so the
amax must be given (`Options.input_amax`) and is never guessed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from sglang_ext.codecs import int8, mxfp4, nvfp4
from sglang_ext.fixtures import quant_configs
from sglang_ext.fixtures.tensors import checkpoint_specs
from sglang_ext.formats import layout
from sglang_ext.formats.schemes import CT_MXFP4, MODELOPT_NVFP4, QUARK_INT8, QUARK_MXFP4, Scheme

WeightLookup = Callable[[str], torch.Tensor]
"""BF16 weight by checkpoint name, main-layer experts per expert (`experts.{i}.gate_proj.weight`)."""

_MAIN_LAYERS = r"^model\.language_model\.layers\.\d+\."
ROUTED = _MAIN_LAYERS + r"mlp\.experts\.\d+\.(gate|up|down)_proj$"
SHARED = _MAIN_LAYERS + r"mlp\.shared_expert\.(gate|up|down)_proj$"
MIXERS = _MAIN_LAYERS + r"(self_attn\.[qkvo]_proj|linear_attn\.(in_proj_qkv|in_proj_z|in_proj_b|in_proj_a|out_proj))$"


class NeedsCalibration(ValueError):
    """The format stores a static activation scale that only calibration (or the user) can give."""


@dataclass(frozen=True)
class Options:
    scales: mxfp4.ScaleRule = mxfp4.ScaleRule.MINMAX  # MXFP4 block exponents; MINMAX is the tools' default
    fuse_shared_expert: bool = False  # quantize the shared expert too where the card keeps it BF16
    input_amax: float | None = None  # NVFP4's activation amax for `input_scale` (no calibration here)


@dataclass(frozen=True)
class Plan:
    """What a quantized checkpoint of one model holds."""

    exclude: list[str]  # Linears kept BF16
    quantization_config: dict[str, Any]
    tensors: list[layout.ExpectedTensor]  # in write order
    extra_files: dict[str, dict[str, Any]]  # JSON files beside config.json, by name


@dataclass(frozen=True)
class Encoder:
    name: str
    scheme: Scheme
    quantized: re.Pattern[str]  # full module names of the Linears this format quantizes
    encode: Callable[[str, WeightLookup], dict[str, torch.Tensor]]  # module -> {suffix: stored tensor}
    config_block: Callable[[list[str]], dict[str, Any]]  # exclusion list -> quantization_config
    extra_files: Callable[[list[str]], dict[str, dict[str, Any]]]  # exclusion list -> {file name: JSON}

    def exclude(self, config: dict[str, Any], mtp_fused_experts: bool) -> list[str]:
        """Every Linear of the model this format keeps BF16, in checkpoint order."""
        linears = [spec.module for spec in checkpoint_specs(config, False, mtp_fused_experts) if spec.linear]
        return [module for module in linears if not self.quantized.match(module)]

    def plan(self, config: dict[str, Any], mtp_fused_experts: bool) -> Plan:
        exclude = self.exclude(config, mtp_fused_experts)
        block = self.config_block(exclude)
        expected = layout.expected_tensors(config, self.scheme, block, mtp_fused_experts=mtp_fused_experts)
        return Plan(exclude, block, expected, self.extra_files(exclude))

    def is_quantized(self, expected: layout.ExpectedTensor) -> bool:
        return expected.precision == self.scheme.precision

    def units(self, expected: list[layout.ExpectedTensor]) -> list[list[layout.ExpectedTensor]]:
        """`expected` (a plan's tensors) cut into what is computed at once: a quantized Linear's tensors, or
        one tensor stored as it is."""
        units: list[list[layout.ExpectedTensor]] = []
        for entry in expected:
            if self.is_quantized(entry) and units and self.is_quantized(units[-1][0]) and units[-1][0].module == entry.module:
                units[-1].append(entry)
            else:
                units.append([entry])
        return units

    def unit_tensors(self, unit: list[layout.ExpectedTensor], weight: WeightLookup) -> dict[str, torch.Tensor]:
        """The stored tensors of one unit, by full name."""
        if not self.is_quantized(unit[0]):
            return {unit[0].name: weight(unit[0].name)}
        module = unit[0].module
        return {f"{module}.{suffix}": t.contiguous() for suffix, t in self.encode(module, weight).items()}

    def tensors(self, expected: list[layout.ExpectedTensor], weight: WeightLookup) -> Iterator[tuple[str, torch.Tensor]]:
        """Every stored tensor of `expected`, unit by unit."""
        for unit in self.units(expected):
            yield from self.unit_tensors(unit, weight).items()


def _mxfp4(producer: mxfp4.Producer, packed_name: str, options: Options) -> Callable[[str, WeightLookup], dict[str, torch.Tensor]]:
    def encode(module: str, weight: WeightLookup) -> dict[str, torch.Tensor]:
        packed, scales = mxfp4.quantize(weight(f"{module}.weight"), producer, options.scales)
        return {packed_name: packed, "weight_scale": scales}

    return encode


def _nvfp4(options: Options) -> Callable[[str, WeightLookup], dict[str, torch.Tensor]]:
    if options.input_amax is None:
        raise NeedsCalibration(
            "modelopt-nvfp4 stores a static activation scale per Linear (input_scale = calibrated input amax / 2688); "
            "this tool does not calibrate: give the activation amax to use for every quantized Linear"
        )
    input_scale = nvfp4.input_scale(torch.tensor(float(options.input_amax)))

    def encode(module: str, weight: WeightLookup) -> dict[str, torch.Tensor]:
        shared_global = None
        if module.endswith(("gate_proj", "up_proj")):  # gate and up fuse into w13: one global scale
            mlp = module.rsplit(".", 1)[0]
            pair = (weight(f"{mlp}.gate_proj.weight"), weight(f"{mlp}.up_proj.weight"))
            shared_global = nvfp4.global_scale(torch.stack([w.abs().amax() for w in pair]).amax())
        quantized = nvfp4.quantize(weight(f"{module}.weight"), shared_global)
        return {**quantized._asdict(), "input_scale": input_scale.clone()}

    return encode


def _quark_int8(module: str, weight: WeightLookup) -> dict[str, torch.Tensor]:
    codes, scale = int8.quantize(weight(f"{module}.weight"))
    native = {  # what Quark's own export holds, before the card's rename
        "weight": codes,
        "weight_quantizer.scale": scale.unsqueeze(1),
        "weight_quantizer.zero_point": torch.zeros(scale.shape[0], 1, dtype=torch.int32, device=codes.device),
    }
    return int8.rename_quark_checkpoint(native)


def _no_extra_files(exclude: list[str]) -> dict[str, dict[str, Any]]:
    return {}


def _modelopt_files(exclude: list[str]) -> dict[str, dict[str, Any]]:
    return {quant_configs.HF_QUANT_CONFIG_FILE: quant_configs.modelopt_hf_quant_config(exclude)}


FORMATS = ("quark-mxfp4-fse", "modelopt-nvfp4", "ct-mxfp4", "quark-w8a8-int8")
MXFP4_FORMATS = ("quark-mxfp4-fse", "ct-mxfp4")


def encoder(fmt: str, options: Options = Options()) -> Encoder:
    """The encoder of `fmt` (one of `FORMATS`) with `options`; raises ValueError for an option the format
    has no use for and `NeedsCalibration` where it would need a calibrated activation scale."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    if options.scales is not mxfp4.ScaleRule.MINMAX and fmt not in MXFP4_FORMATS:
        raise ValueError(f"{fmt} has no E8M0 block exponents to choose: the scale rule applies to {' and '.join(MXFP4_FORMATS)}")
    if options.input_amax is not None and fmt != "modelopt-nvfp4":
        raise ValueError(f"{fmt} stores no static activation scale: an activation amax applies to modelopt-nvfp4 only")
    shared = f"|{SHARED}" if options.fuse_shared_expert else ""
    if fmt == "quark-mxfp4-fse":
        return Encoder(fmt, QUARK_MXFP4, re.compile(f"{ROUTED}|{SHARED}"), _mxfp4(mxfp4.Producer.QUARK, "weight", options),
                       quant_configs.quark_mxfp4, _no_extra_files)  # fmt: skip
    if fmt == "modelopt-nvfp4":
        return Encoder(fmt, MODELOPT_NVFP4, re.compile(ROUTED + shared), _nvfp4(options), quant_configs.modelopt_nvfp4,
                       _modelopt_files)  # fmt: skip
    if fmt == "ct-mxfp4":
        return Encoder(fmt, CT_MXFP4, re.compile(ROUTED + shared),
                       _mxfp4(mxfp4.Producer.COMPRESSED_TENSORS, "weight_packed", options),
                       quant_configs.compressed_tensors_mxfp4, _no_extra_files)  # fmt: skip
    return Encoder(fmt, QUARK_INT8, re.compile(f"{ROUTED}|{SHARED}|{MIXERS}"), _quark_int8, quant_configs.quark_w8a8_int8,
                   _no_extra_files)  # fmt: skip

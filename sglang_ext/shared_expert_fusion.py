"""Fused shared expert (FSE) for Qwen3.5-MoE: whether the shared expert may run as one more expert of the
routed MoE kernel, and where its checkpoint tensors go when it does. No SGLang import, so CPU CI tests it;
`sglang_ext.models.qwen3_5` applies both inside SGLang.

With FSE the shared expert occupies expert slot E (E = num_experts) of the FusedMoE `w13`/`w2` parameters
and every token picks it with weight sigmoid(shared_expert_gate(x)). The routed-expert kernel applies one
quantization scheme to all slots, so this is only exact when the checkpoint stored the shared expert the
way it stored the routed experts: both quantized by the same spec, or both left unquantized. That is read
from the checkpoint's own quantization config (exclude / ignore lists, per-layer overrides), never from
the format's name.
"""

import fnmatch
import re
from dataclasses import dataclass
from typing import Any

from sglang_ext.formats.schemes import CT_MXFP4, QUARK_INT8, QUARK_MXFP4, UnsupportedQuantization, detect_scheme

SHARED_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")

# FusedMoE shard of each projection: gate and up fill w13 (gate rows first), down fills w2; the names
# are those of `FusedMoE.make_expert_params_mapping` in SGLang.
_SHARDS = {"gate_proj": ("w13_", "w1"), "up_proj": ("w13_", "w3"), "down_proj": ("w2_", "w2")}

# SGLang appends the shared slot only to a STANDARD top-k output (`Qwen2MoeSparseMoeBlock.
# _forward_router_experts`); these runners make `TopK` return another format, so a fused shared expert
# would silently drop out of the sum.
NON_STANDARD_TOPK_RUNNERS = frozenset(
    {
        "triton_kernel",
        "flashinfer_trtllm",
        "flashinfer_trtllm_routed",
        "flashinfer_mxfp4",
        "flashinfer_cutedsl",
        "experimental_sgl_trtllm",
    }
)

# Main-layer shared-expert tensors; `mtp.*` never matches, the MTP draft keeps its shared expert apart.
_SHARED_EXPERT_TENSOR = re.compile(
    r"^(?!mtp\.)(?P<mlp>(?:[\w.]+\.)?layers\.(?P<layer>\d+)\.mlp\.)"
    r"shared_expert\.(?P<proj>gate_proj|up_proj|down_proj)\.(?P<suffix>\w+)$"
)


@dataclass(frozen=True)
class FusionDecision:
    fuse: bool
    reason: str


@dataclass(frozen=True)
class ExpertSlot:
    """Where one shared-expert tensor lands: FusedMoE parameter, expert id and shard (SGLang's weight_loader
    arguments)."""

    param_name: str
    layer: int
    expert_id: int
    shard_id: str


def shared_expert_slot(name: str, num_experts: int) -> ExpertSlot | None:
    """The FSE destination of a checkpoint tensor, None for anything but a main-layer shared-expert tensor.

    `model.language_model.layers.3.mlp.shared_expert.up_proj.weight_scale` with 8 routed experts goes to
    `model.language_model.layers.3.mlp.experts.w13_weight_scale`, expert 8, shard w3: weights and every
    scale suffix alike, as SGLang's per-expert mapping does for `experts.8.up_proj.*`.
    """
    match = _SHARED_EXPERT_TENSOR.match(name)
    if match is None:
        return None
    prefix, shard = _SHARDS[match["proj"]]
    return ExpertSlot(
        param_name=f"{match['mlp']}experts.{prefix}{match['suffix']}",
        layer=int(match["layer"]),
        expert_id=num_experts,
        shard_id=shard,
    )


def _normalized(quant_config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(config.json-like dict, hf_quant_config.json dict or None) for `formats.schemes.detect_scheme`.

    Accepts a config.json `quantization_config` block, or a ModelOpt hf_quant_config.json. SGLang rewrites
    a ModelOpt block's quant_method in place to `modelopt_fp4` etc. when it parses it."""
    if "quant_method" not in quant_config and "quantization" in quant_config:
        return {}, quant_config
    method = str(quant_config.get("quant_method", ""))
    if method.startswith("modelopt"):
        quant_config = {**quant_config, "quant_method": "modelopt"}
    return {"quantization_config": quant_config}, None


def _ct_targets(block: dict[str, Any], module: str) -> bool:
    """compressed-tensors quantizes a module only if a config group targets it; class-name targets such as
    "Linear" cover every Linear."""
    for group in (block.get("config_groups") or {}).values():
        for target in group.get("targets") or []:
            if target.startswith("re:"):
                if re.match(target[3:], module):
                    return True
            elif target == module or target[:1].isupper():
                return True
    return False


def _quark_spec(block: dict[str, Any], module: str) -> Any:
    """The Quark spec a module gets: the first matching `layer_quant_config` glob, else the global one
    (`QuarkConfig._find_matched_config` in SGLang)."""
    for pattern, spec in (block.get("layer_quant_config") or {}).items():
        if fnmatch.fnmatch(module, pattern):
            return spec
    return block.get("global_quant_config")


def decide_shared_expert_fusion(
    config: dict[str, Any],
    quant_config: dict[str, Any] | None = None,
    *,
    disabled: bool = False,
    moe_runner_backend: str = "auto",
) -> FusionDecision:
    """Whether to fuse the shared expert of a Qwen3.5-MoE checkpoint.

    `config` is config.json (or its `text_config`); `quant_config` its `quantization_config` block, or a
    ModelOpt hf_quant_config.json, None for an unquantized checkpoint; `disabled` is SGLang's
    `--disable-shared-experts-fusion`; `moe_runner_backend` SGLang's `--moe-runner-backend`.
    """
    text = config.get("text_config", config)
    if disabled:
        return FusionDecision(False, "--disable-shared-experts-fusion is set")
    shared_size = text.get("shared_expert_intermediate_size") or 0
    if shared_size <= 0:
        return FusionDecision(False, "the model has no shared expert")
    if shared_size != text["moe_intermediate_size"]:
        return FusionDecision(
            False,
            f"shared_expert_intermediate_size {shared_size} != moe_intermediate_size "
            f"{text['moe_intermediate_size']}: the shared expert does not fit an expert slot",
        )
    if moe_runner_backend in NON_STANDARD_TOPK_RUNNERS:
        return FusionDecision(False, f"--moe-runner-backend {moe_runner_backend} does not take a fused shared expert")
    if quant_config is None:
        return FusionDecision(True, "unquantized checkpoint: shared and routed experts share the model dtype")

    try:
        scheme, block = detect_scheme(*_normalized(quant_config))
    except UnsupportedQuantization as error:
        return FusionDecision(False, f"quantization not known to sglang_ext, so not fused: {error}")
    is_quark = scheme is QUARK_MXFP4 or scheme is QUARK_INT8
    if is_quark and block.get("layer_type_quant_config"):
        return FusionDecision(False, "Quark layer_type_quant_config overrides: shared and routed specs not comparable")

    def stored_as(module: str) -> str:
        if scheme.is_excluded(module, block) or (scheme is CT_MXFP4 and not _ct_targets(block, module)):
            return "unquantized"
        return scheme.precision

    layers = "model.language_model.layers" if "text_config" in config else "model.layers"
    for layer in range(text["num_hidden_layers"]):
        for proj in SHARED_PROJECTIONS:
            shared = f"{layers}.{layer}.mlp.shared_expert.{proj}"
            routed = f"{layers}.{layer}.mlp.experts.0.{proj}"
            if stored_as(shared) != stored_as(routed):
                return FusionDecision(
                    False,
                    f"{shared} is {stored_as(shared)}, the routed experts {stored_as(routed)} "
                    "(the quantization_config's exclusions)",
                )
            if is_quark and _quark_spec(block, shared) != _quark_spec(block, routed):
                return FusionDecision(False, f"{shared} has another Quark spec than the routed experts")
    return FusionDecision(True, f"{scheme.name}: the shared expert is stored like the routed experts")

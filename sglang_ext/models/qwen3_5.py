"""Qwen3.5-MoE with the shared expert fused into the routed MoE on CUDA (FSE).

SGLang 0.5.17 and 0.5.23 fuse Qwen3.5's shared expert only under aiter: the decoder layers build
`Qwen2MoeSparseMoeBlock` without the `enable_cuda_shared_expert_fusion` that Qwen3-Next passes, and
`Qwen3_5MoeForConditionalGeneration` loads the shared expert into expert slot E only under aiter. This
override builds the same layers with that flag, decides from the checkpoint whether the shared expert
may be fused (`sglang_ext.shared_expert_fusion`, on top of SGLang's `can_fuse_shared_expert`), and loads
it into slot E wherever the layers fused. The block then appends slot E to every token's top-k with
weight sigmoid(shared_expert_gate(x)) (`Qwen2MoeSparseMoeBlock._append_shared_to_topk_output`).

The MTP draft (`Qwen3_5ForCausalLMMTP`, which SGLang picks for NEXTN from this architecture) builds its own
layers, outside this class, so it keeps its shared expert separate, which its own loader expects; its
override (`qwen3_5_mtp.py`) only decides its quantization.
"""

import functools
import logging
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from sglang.srt.layers.moe import get_moe_runner_backend
from sglang.srt.models import qwen3_5
from sglang.srt.models.qwen2_moe import Qwen2MoeSparseMoeBlock, can_fuse_shared_expert
from sglang.srt.runtime_context import get_exec

from sglang_ext import require_supported_sglang
from sglang_ext.kernels.shared_gate import gate_and_append_shared
from sglang_ext.quantization.mxfp4_ct_names import ct_mxfp4_expert_name, serves_experts_with_mxfp4_moe_method
from sglang_ext.shared_expert_fusion import FusionDecision, decide_shared_expert_fusion, shared_expert_slot

logger = logging.getLogger(__name__)
SGLANG = require_supported_sglang()
FUSED_SHARED_GATE = "SGLANG_EXT_FUSED_SHARED_GATE"


class CudaFusableSparseMoeBlock(Qwen2MoeSparseMoeBlock):
    """The stock block as Qwen3-Next builds it: shared-expert fusion allowed on CUDA as well as aiter. The
    layer's own `support_shared_expert_fusion` (off under --disable-shared-experts-fusion) still gates it.

    With `SGLANG_EXT_FUSED_SHARED_GATE=1`, the shared slot's gate, sigmoid and append run as one kernel
    (`sglang_ext.kernels.shared_gate`) where the block holds SGLang's CUDA gate (a plain one-row Linear), its
    expert parallelism leaves the weight unscaled and torch.compile is not tracing; elsewhere SGLang's own path
    runs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, enable_cuda_shared_expert_fusion=True, **kwargs)

    def _append_shared_to_topk_output(self, topk_output: Any, hidden_states: torch.Tensor) -> Any:
        if not self._gate_in_one_launch(topk_output, hidden_states):
            return super()._append_shared_to_topk_output(topk_output, hidden_states)
        ids, weights = gate_and_append_shared(hidden_states, self.shared_expert_gate.weight, topk_output.topk_ids,
                                              topk_output.topk_weights, shared_id=self.num_experts)  # fmt: skip
        return topk_output._replace(topk_ids=ids, topk_weights=weights)

    def _gate_in_one_launch(self, topk_output: Any, hidden_states: torch.Tensor) -> bool:
        if not fused_shared_gate() or not self.enable_shared_expert_fusion:
            return False
        if torch.compiler.is_compiling():  # as small_m_gemv: code torch.compile traces keeps SGLang's path
            return False
        # Imported here: SGLang releases other than 0.5.17 never take this path unless asked to.
        from sglang.srt.layers.moe.topk import StandardTopKOutput
        from sglang.srt.runtime_context import get_parallel

        gate = self.shared_expert_gate
        return (type(topk_output) is StandardTopKOutput and self.num_fused_shared_experts == 1
                and type(gate) is torch.nn.Linear and gate.bias is None and hidden_states.dim() == 2
                and hidden_states.stride(1) == 1 and get_parallel().moe_ep_size == 1)  # fmt: skip


def fused_shared_gate() -> bool:
    """Whether SGLANG_EXT_FUSED_SHARED_GATE asks for the one-launch shared gate (1); a value it does not know is
    off, and named once."""
    value = os.environ.get(FUSED_SHARED_GATE, "0")
    if value not in ("0", "1"):
        _unknown_value(value)
    return value == "1"


@functools.cache
def _unknown_value(value: str) -> None:
    logger.warning("%s=%s: expected 1 (the shared gate in one launch) or 0; off", FUSED_SHARED_GATE, value)


@contextmanager
def cuda_fusable_moe_blocks() -> Iterator[None]:
    """Qwen3.5's decoder layers look `Qwen2MoeSparseMoeBlock` up in their module while being built; point
    that name at the fusable block for the duration, so the layers are not copied here. Scoped, so the MTP
    draft and any other model built in this process get the stock block."""
    stock = qwen3_5.Qwen2MoeSparseMoeBlock
    qwen3_5.Qwen2MoeSparseMoeBlock = CudaFusableSparseMoeBlock
    try:
        yield
    finally:
        qwen3_5.Qwen2MoeSparseMoeBlock = stock


def checkpoint_quant_config(config: Any, quant_config: Any) -> dict[str, Any] | None:
    """The checkpoint's quantization config as a dict, from where SGLang's `get_quant_config` reads it;
    for a ModelOpt checkpoint whose settings live only in hf_quant_config.json, rebuilt from SGLang's
    parsed ModelOpt config."""
    for holder, field in (
        (config, "quantization_config"),
        (config.text_config, "quantization_config"),
        (config, "compression_config"),
    ):
        block = getattr(holder, field, None)
        if block is not None:
            return block if isinstance(block, dict) else block.to_dict()
    if quant_config is None:
        return None
    if quant_config.get_name() == "modelopt_fp4":
        exclude_modules = list(quant_config.exclude_modules)
        return {"quant_method": "modelopt", "quant_algo": "NVFP4", "exclude_modules": exclude_modules}
    return {"quant_method": quant_config.get_name()}


def publish_fusion_off_0_5_17() -> None:
    """SGLang 0.5.17: the off decision declared before the layers are built, which read the flag; SGLang's
    other readers (this model's aiter path, the routed-experts capturer) then agree, as after its own
    `_maybe_autodisable_shared_experts_fusion` on ROCm. 0.5.23 removed the call and asks
    `shared_experts_fusion_disable_reason` instead."""
    from sglang.srt.arg_groups.overrides import declare_load_time_override

    if not get_exec().moe.disable_shared_experts_fusion:
        declare_load_time_override(f"{__name__}.fusion_decision", {"disable_shared_experts_fusion": True})


def fusion_decision(config: Any, quant_config: Any) -> FusionDecision:
    decision = decide_shared_expert_fusion(
        config.to_dict(),
        checkpoint_quant_config(config, quant_config),
        disabled=get_exec().moe.disable_shared_experts_fusion,
        moe_runner_backend=get_moe_runner_backend().value,
    )
    if decision.fuse and not can_fuse_shared_expert(config.text_config, quant_config):
        return FusionDecision(False, "SGLang's can_fuse_shared_expert refuses (DeepEP all-to-all, Quark specs differ)")
    return decision


class Qwen3_5MoeForConditionalGeneration(qwen3_5.Qwen3_5MoeForConditionalGeneration):
    @staticmethod
    def shared_experts_fusion_disable_reason(hf_config: Any, quant_config: Any) -> str | None:
        """SGLang 0.5.23's hook: its loader asks the model class before building it and publishes a reason as
        fusion off for every reader (`resolve_shared_experts_config`); the stock answer is ROCm's
        `can_fuse_shared_expert` alone. SGLang 0.5.17 never asks: `__init__` publishes it there."""
        decision = fusion_decision(hf_config, quant_config)
        return None if decision.fuse else f"Qwen3.5 shared expert kept separate: {decision.reason}."

    def __init__(
        self,
        config: Any,
        quant_config: Any = None,
        prefix: str = "",
        language_model_cls: type = qwen3_5.Qwen3_5MoeForCausalLM,
    ) -> None:
        decision = fusion_decision(config, quant_config)
        if not decision.fuse and SGLANG == "0.5.17":
            publish_fusion_off_0_5_17()
        with cuda_fusable_moe_blocks():
            super().__init__(config, quant_config, prefix, language_model_cls)
        self.num_fused_shared_experts = self._get_num_fused_shared_experts()
        self.enable_shared_expert_fusion = self.num_fused_shared_experts > 0
        self.renames_ct_mxfp4_experts = serves_experts_with_mxfp4_moe_method(quant_config)
        if self.enable_shared_expert_fusion:
            logger.info("Qwen3.5 shared expert fused into the routed MoE as expert %d: %s",
                        self.config.num_experts, decision.reason)
        elif decision.fuse:
            logger.info("Qwen3.5 shared expert kept separate: SGLang's MoE block does not fuse it on this platform")
        else:
            logger.info("Qwen3.5 shared expert kept separate: %s", decision.reason)

    def _get_num_fused_shared_experts(self) -> int:
        # Any MoE layer this rank holds: under pipeline parallelism layers[0] may be on another rank.
        model = getattr(self, "model", None)
        if model is None:
            return 0
        held = model.layers[self.start_layer : self.end_layer]
        return max((getattr(layer.mlp, "num_fused_shared_experts", 0) for layer in held), default=0)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """The stock loader, with main-layer shared-expert tensors (weights and scales) sent to expert slot E
        of w13/w2 first, as the stock loader does only under aiter. compressed-tensors MXFP4 experts are
        renamed to the parameters SGLang's MXFP4 MoE method creates (its Kimi loader does the same)."""
        if self.renames_ct_mxfp4_experts:
            weights = ((ct_mxfp4_expert_name(name), tensor) for name, tensor in weights)
        if not self.enable_shared_expert_fusion:
            return super().load_weights(weights)
        params = dict(self.named_parameters(remove_duplicate=False))
        loaded: set[str] = set()

        def others(weights: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
            for name, tensor in weights:
                slot = shared_expert_slot(name.replace("model.language_model.", "model."), self.config.num_experts)
                if slot is None:
                    yield name, tensor
                    continue
                if not self.start_layer <= slot.layer < self.end_layer:
                    continue
                param = params.get(slot.param_name)
                if param is None:
                    raise ValueError(
                        f"{name}: the fused shared expert has no parameter {slot.param_name}, so the routed experts "
                        "were stored differently; serve with --disable-shared-experts-fusion"
                    )
                param.weight_loader(param, tensor, slot.param_name, slot.shard_id, slot.expert_id)
                loaded.add(slot.param_name)

        return super().load_weights(others(weights)) | loaded


EntryClass = [Qwen3_5MoeForConditionalGeneration]

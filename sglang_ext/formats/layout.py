"""Every tensor a Qwen3.5-MoE checkpoint must hold, derived from its config.json alone.

The module inventory is the model's (`fixtures.tensors.checkpoint_specs`, the same list the fixture
writers materialise); the scheme and the config's own exclusion list decide, module by module, whether
a Linear is stored in BF16 or as the scheme's quantized tensors. Writers and the inspector both call
`expected_tensors`, so a fixture and the check of it cannot disagree about the layout.
"""

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from sglang_ext.fixtures.tensors import TensorSpec, checkpoint_specs
from sglang_ext.formats.schemes import Scheme

SAFETENSORS_DTYPES = {torch.bfloat16: "BF16", torch.float32: "F32", torch.float16: "F16"}

# (group, pattern) in priority order; the first match names a tensor's group in reports.
_GROUPS = (
    ("MTP", re.compile(r"^mtp\.")),
    ("vision", re.compile(r"^model\.visual\.")),
    ("routed experts", re.compile(r"\.mlp\.experts\.")),
    ("shared expert", re.compile(r"\.mlp\.shared_expert\.")),
    ("router", re.compile(r"\.mlp\.(gate|shared_expert_gate)\.weight$")),
    ("attention", re.compile(r"\.self_attn\.")),
    ("DeltaNet", re.compile(r"\.linear_attn\.")),
    ("embeddings", re.compile(r"(embed_tokens|lm_head)\.weight$")),
    ("norms", re.compile(r"norm\.weight$")),
)


def tensor_group(name: str) -> str:
    return next((group for group, pattern in _GROUPS if pattern.search(name)), "other")


@dataclass(frozen=True)
class ExpectedTensor:
    name: str
    shape: tuple[int, ...]
    dtypes: tuple[str, ...]  # accepted safetensors dtypes
    precision: str  # "BF16", "F32" or the scheme's label
    module: str  # the quantizable Linear it belongs to, "" if none


def _unquantized(spec: TensorSpec) -> ExpectedTensor:
    dtype = SAFETENSORS_DTYPES[spec.dtype]
    return ExpectedTensor(spec.name, spec.shape, (dtype,), dtype, spec.module if spec.linear else "")


def quantized_tensors(scheme: Scheme, module: str, out: int, in_: int) -> list[ExpectedTensor]:
    return [
        ExpectedTensor(f"{module}.{stored.suffix}", stored.shape, stored.dtypes, scheme.precision, module)
        for stored in scheme.stored(out, in_)
    ]


_MTP_FUSED_EXPERTS = re.compile(r"^mtp\.layers\.\d+\.mlp\.experts\.(gate_up_proj|down_proj)$")


def mtp_experts_fused(names: Iterable[str]) -> bool:
    """Whether a checkpoint with these tensor names stores its MTP experts fused 3-D (the Qwen3.6 layout)
    rather than per expert (the Qwen3.5 layout)."""
    return any(_MTP_FUSED_EXPERTS.match(name) for name in names)


def expected_tensors(
    config: dict[str, Any],
    scheme: Scheme | None = None,
    quant_config: dict[str, Any] | None = None,
    fused_experts: bool | None = None,
    mtp_fused_experts: bool = False,
) -> list[ExpectedTensor]:
    """The checkpoint's tensors: BF16 when `scheme` is None, else every Linear that `quant_config` does
    not exclude stored the scheme's way. Quantized checkpoints store experts per expert; BF16 ones
    fused unless `fused_experts=False` (a per-expert BF16 re-export). The MTP layer's experts, never
    quantized, are per expert unless `mtp_fused_experts`."""
    if fused_experts is None:
        fused_experts = scheme is None
    excluded = scheme.excluded(quant_config or {}) if scheme is not None else None
    expected = []
    for spec in checkpoint_specs(config, fused_experts, mtp_fused_experts):
        if excluded is None or not spec.linear or excluded(spec.module):
            expected.append(_unquantized(spec))
        else:
            out, in_ = spec.shape
            expected += quantized_tensors(scheme, spec.module, out, in_)
    return expected


def quantized_modules(config: dict[str, Any], scheme: Scheme, quant_config: dict[str, Any]) -> list[str]:
    excluded = scheme.excluded(quant_config)
    return [spec.module for spec in checkpoint_specs(config, fused_experts=False) if spec.linear and not excluded(spec.module)]

"""Dequantize a quantized Qwen3.5-MoE checkpoint back to the published BF16 layout.

The result is the exact BF16 model that the quantized checkpoint represents (each codec's `dequantize`,
experts re-fused), the reference any serving path of that checkpoint should reproduce up to its own
activation quantization and kernel arithmetic. `write_dequantized` writes it as a BF16 checkpoint
directory that transformers or SGLang load like any other.
"""

import json
import shutil
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from sglang_ext.codecs import int8, mxfp4, nvfp4
from sglang_ext.fixtures.model_config import write_json
from sglang_ext.fixtures.tensors import fuse_experts
from sglang_ext.formats import layout
from sglang_ext.formats.check import CONFIG_FILE, checkpoint_scheme, side_files
from sglang_ext.formats.schemes import CT_MXFP4, MODELOPT_NVFP4, QUARK_INT8, QUARK_MXFP4

Decoder = Callable[[dict[str, torch.Tensor]], torch.Tensor]

DECODERS: dict[str, Decoder] = {
    QUARK_MXFP4.name: lambda t: mxfp4.dequantize(t["weight"], t["weight_scale"]),
    CT_MXFP4.name: lambda t: mxfp4.dequantize(t["weight_packed"], t["weight_scale"]),
    MODELOPT_NVFP4.name: lambda t: nvfp4.dequantize(t["weight"], t["weight_scale"], t["weight_scale_2"]),
    QUARK_INT8.name: lambda t: int8.dequantize(t["weight"], t["weight_scale"]),
}


def _load_all(directory: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for path in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(str(path)))
    return tensors


def dequantized_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    """The BF16 checkpoint tensors (fused main-layer experts) that `directory` quantizes."""
    directory = Path(directory)
    scheme, quant_config, config = checkpoint_scheme(directory)
    stored = _load_all(directory)
    if scheme is None:
        return stored
    out: dict[str, torch.Tensor] = {}
    parts: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    for expected in layout.expected_tensors(config, scheme, quant_config, mtp_fused_experts=layout.mtp_experts_fused(stored)):
        if expected.precision == scheme.precision:
            parts[expected.module][expected.name.removeprefix(f"{expected.module}.")] = stored[expected.name]
        else:
            out[expected.name] = stored[expected.name]
    for module, tensors in parts.items():
        out[f"{module}.weight"] = DECODERS[scheme.name](tensors)
    return fuse_experts(out, config["text_config"])


def write_dequantized(source: Path, target: Path) -> Path:
    """A BF16 checkpoint directory holding `source` dequantized: same JSON and tokenizer files, no
    quantization_config."""
    source, target = Path(source), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    for path in side_files(source):
        shutil.copyfile(path, target / path.name)
    config = json.loads((source / CONFIG_FILE).read_text(encoding="utf-8"))
    config.pop("quantization_config", None)
    write_json(target / CONFIG_FILE, config)
    tensors = {name: t.contiguous() for name, t in dequantized_state_dict(source).items()}
    save_file(tensors, str(target / "model.safetensors"), metadata={"format": "pt"})
    return target

"""Compare a checkpoint directory with what its config.json says it must hold.

`check_checkpoint(path)` reads config.json (+ hf_quant_config.json), detects the scheme, expands the
expected tensor list (`layout.expected_tensors`) and compares it with the safetensors headers. Problems
are grouped per module where that says more than per tensor: a Linear stored in BF16 that the config
quantizes is one problem ("stored BF16, config quantizes it"), not one missing tensor per scale.
"""

import json
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sglang_ext.formats import layout
from sglang_ext.formats.config_fields import ConfigError, check_config_fields
from sglang_ext.formats.safetensors_headers import INDEX_FILE, HeaderError, StoredEntry, read_checkpoint
from sglang_ext.formats.schemes import Scheme, UnsupportedQuantization, detect_scheme

CONFIG_FILE = "config.json"
HF_QUANT_CONFIG_FILE = "hf_quant_config.json"
_MAIN_LAYER_EXPERT = re.compile(r"^model\.language_model\.layers\.\d+\.mlp\.experts\.\d+\.")
_FUSED_EXPERTS = re.compile(r"^(model\.language_model\.layers\.\d+)\.mlp\.experts\.(gate_up_proj|down_proj)$")


@dataclass(frozen=True)
class Problem:
    tensor: str  # tensor or module name ("" for the whole checkpoint)
    message: str


@dataclass
class Report:
    path: str
    scheme: str  # "bf16" or a scheme name
    problems: list[Problem] = field(default_factory=list)
    # (group, precision) -> [tensor count, bytes], over the stored tensors
    summary: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    excluded: dict[str, int] = field(default_factory=dict)  # group -> Linear modules left unquantized
    quantized: dict[str, int] = field(default_factory=dict)  # group -> Linear modules quantized
    tensors: int = 0
    mtp_experts: str = ""  # how the MTP layer stores its routed experts

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "scheme": self.scheme,
            "ok": self.ok,
            "tensors": self.tensors,
            "mtp_experts": self.mtp_experts,
            "problems": [{"tensor": p.tensor, "message": p.message} for p in self.problems],
            "summary": [
                {"group": group, "precision": precision, "tensors": count, "bytes": nbytes}
                for (group, precision), (count, nbytes) in sorted(self.summary.items())
            ],
            "quantized_modules": self.quantized,
            "excluded_modules": self.excluded,
        }


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path.name}: not valid JSON ({error})") from None
    except OSError as error:
        raise ConfigError(f"{path.name}: cannot be read ({error.strerror or error})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path.name}: a JSON object (mapping) is expected at the top level, not {type(data).__name__}")
    return data


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def _mismatch_hint(expected: layout.ExpectedTensor, entry: StoredEntry) -> str:
    if expected.precision in ("BF16", "F32") and entry.dtype in ("U8", "I8", "F8_E4M3"):
        return (
            ": quantized weights under a config that does not quantize this module "
            "(config.json lost its quantization_config or lists the module as excluded)"
        )
    if len(expected.shape) == 2 and entry.shape in (expected.shape[::-1], (2 * expected.shape[1], expected.shape[0] // 2)):
        return ": looks transposed; pack and scale along the input (last) dimension, [out, in/…]"
    return ""


def checkpoint_scheme(path: Path) -> tuple[Scheme | None, dict[str, Any], dict[str, Any]]:
    """(scheme, the dict its exclusions are read from, config.json) of a checkpoint directory; raises
    ConfigError / HeaderError / UnsupportedQuantization naming the file and field."""
    config, hf_quant_config = _read_configs(Path(path))
    return (*detect_scheme(config, hf_quant_config), config)


def side_files(directory: Path, skip: Iterable[str] = ()) -> list[Path]:
    """The files of a checkpoint directory besides its weights, index, config.json and hf_quant_config.json
    (tokenizer, processor, chat template, generation config, licence), less those named in `skip`."""
    skipped = {CONFIG_FILE, HF_QUANT_CONFIG_FILE, INDEX_FILE, *skip}
    return sorted(p for p in Path(directory).iterdir() if p.is_file() and p.suffix != ".safetensors" and p.name not in skipped)


def _read_configs(path: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    if not path.exists():
        raise HeaderError("no such directory: point at the checkpoint directory (config.json + *.safetensors)")
    if not path.is_dir():
        raise HeaderError("a file, not a directory: point at the checkpoint directory (config.json + *.safetensors)")
    config_path = path / CONFIG_FILE
    if not config_path.exists():
        raise HeaderError(f"no {CONFIG_FILE} in {path}: point at the checkpoint directory")
    config = _read_json(config_path)
    check_config_fields(config, CONFIG_FILE)
    hf_quant = path / HF_QUANT_CONFIG_FILE
    return config, _read_json(hf_quant) if hf_quant.exists() else None


def check_checkpoint(path: Path) -> Report:
    path = Path(path)
    report = Report(str(path), "unknown")
    try:
        scheme, quant_config, config = checkpoint_scheme(path)
        stored = read_checkpoint(path)
    except (HeaderError, ConfigError) as error:
        report.problems.append(Problem("", str(error)))
        return report
    except UnsupportedQuantization as error:
        report.problems.append(Problem("", f"{CONFIG_FILE}: {error}"))
        return report
    report.scheme = scheme.name if scheme else "bf16"
    report.tensors = len(stored)
    # BF16 checkpoints come fused (as published) or per expert (a re-export); quantized ones per expert.
    fused = scheme is None and not any(_MAIN_LAYER_EXPERT.match(entry.name) for entry in stored)
    mtp_fused = layout.mtp_experts_fused(entry.name for entry in stored)
    if config["text_config"]["mtp_num_hidden_layers"]:
        report.mtp_experts = "fused 3-D (Qwen3.6 layout)" if mtp_fused else "per expert (Qwen3.5 layout)"
    expected = layout.expected_tensors(config, scheme, quant_config, fused, mtp_fused)
    _compare(report, expected, {entry.name: entry for entry in stored})
    if scheme is not None:
        precision = {e.module: e.precision for e in expected if e.module}
        for module, stored_as in precision.items():
            counts = report.quantized if stored_as == scheme.precision else report.excluded
            group = layout.tensor_group(f"{module}.weight")
            counts[group] = counts.get(group, 0) + 1
    return report


def _compare(report: Report, expected: list[layout.ExpectedTensor], stored: dict[str, StoredEntry]) -> None:
    wanted = {e.name: e for e in expected}
    for entry in stored.values():
        precision = wanted[entry.name].precision if entry.name in wanted else entry.dtype
        cell = report.summary.setdefault((layout.tensor_group(entry.name), precision), [0, 0])
        cell[0] += 1
        cell[1] += entry.nbytes

    missing = [e for e in expected if e.name not in stored]
    unexpected = [name for name in stored if name not in wanted]
    explained: set[str] = set()
    _explain_fused_experts(report, missing, unexpected, explained)
    _explain_precision_swaps(report, expected, unexpected, stored, explained)

    for e in expected:
        entry = stored.get(e.name)
        if e.name in explained:
            continue
        if entry is None:
            report.problems.append(Problem(e.name, f"missing ({'/'.join(e.dtypes)} {_shape(e.shape)})"))
        elif entry.dtype not in e.dtypes:
            report.problems.append(
                Problem(e.name, f"dtype {entry.dtype}, expected {' or '.join(e.dtypes)}{_mismatch_hint(e, entry)}")
            )
        elif entry.shape != e.shape:
            report.problems.append(
                Problem(e.name, f"shape {_shape(entry.shape)}, expected {_shape(e.shape)}{_mismatch_hint(e, entry)}")
            )
    for name in unexpected:
        if name not in explained:
            report.problems.append(Problem(name, f"unexpected tensor{_unexpected_hint(name)}"))


def _unexpected_hint(name: str) -> str:
    if name.endswith("_quantizer.scale"):
        return ": Quark-native scale name; rename *_quantizer.scale to *_scale (sglang_ext.codecs.int8.rename_quark_checkpoint)"
    if name.endswith(("zero_point", "_zero_point")):
        return ": zero points are not read for symmetric schemes; drop them"
    return ": nothing the config describes loads it (wrong expert or layer count in config.json?)"


def _explain_fused_experts(
    report: Report, missing: list[layout.ExpectedTensor], unexpected: list[str], explained: set[str]
) -> None:
    """Fused 3-D experts where the scheme stores them per expert: one problem per layer."""
    for name in unexpected:
        match = _FUSED_EXPERTS.match(name)
        if not match:
            continue
        layer = match.group(1)
        explained.add(name)
        explained.update(e.name for e in missing if e.name.startswith(f"{layer}.mlp.experts."))
        if name.endswith("gate_up_proj"):
            report.problems.append(
                Problem(
                    f"{layer}.mlp.experts",
                    f"routed experts stored fused 3-D (experts.gate_up_proj / down_proj); {report.scheme} "
                    "checkpoints are loaded per expert (experts.{i}.gate_proj / up_proj / down_proj)",
                )
            )


def _explain_precision_swaps(
    report: Report,
    expected: list[layout.ExpectedTensor],
    unexpected: list[str],
    stored: dict[str, StoredEntry],
    explained: set[str],
) -> None:
    """A Linear stored BF16 that the config quantizes, or stored quantized that the config excludes."""
    by_module: dict[str, list[layout.ExpectedTensor]] = defaultdict(list)
    for e in expected:
        if e.module:
            by_module[e.module].append(e)
    extra: dict[str, list[str]] = defaultdict(list)
    for name in unexpected:
        extra[name.rsplit(".", 1)[0]].append(name)
    for module, tensors in by_module.items():
        weight = stored.get(f"{module}.weight")
        quantized = tensors[0].precision not in ("BF16", "F32")
        if quantized and weight is not None and weight.dtype in ("BF16", "F16", "F32") and not extra[module]:
            absent = [e.name.rsplit(".", 1)[1] for e in tensors if e.name not in stored]
            what = "the shared expert is" if ".shared_expert." in module else "this module is"
            report.problems.append(
                Problem(
                    module,
                    f"stored {weight.dtype}, but the quantization_config does not exclude it, so {what} expected "
                    f"as {report.scheme} ({', '.join(absent)} missing); quantize it or add it to the config's "
                    "exclusion list",
                )
            )
        elif not quantized and extra[module] and (weight is None or weight.dtype not in tensors[0].dtypes):
            report.problems.append(
                Problem(module, "stored quantized, but the quantization_config excludes it (expected one BF16 weight)")
            )
        else:
            continue
        explained.update(e.name for e in tensors)
        explained.update(extra[module])

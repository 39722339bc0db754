"""The four quantized checkpoint schemes as stored on disk, and how each tool's config names what it skipped.

A scheme knows, for one quantized nn.Linear of shape [out, in], which tensors the producing tool writes
(suffix, shape, dtype), how that tool's `quantization_config` says a module was left unquantized, and how
to write such a config block. Everything else (which modules exist, their shapes) comes from config.json,
see `layout`.

Exclusion semantics follow the tool that wrote the list, which is also what SGLang 0.5.17 reads:

* Quark `exclude`: exact module names or `re:` regexes (SGLang `quark/utils.py:should_ignore_layer`);
  Quark itself also takes fnmatch globs when quantizing, so those are honoured too.
* ModelOpt `exclude_modules`: globs matched against the whole name or any dotted part
  (SGLang `modelopt_quant.py:is_layer_excluded`).
* compressed-tensors `ignore`: exact names or `re:` regexes (`re.match`), applied to `Linear` targets.
"""

import fnmatch
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MXFP4_GROUP = 32
NVFP4_GROUP = 16

# Versions whose config blocks the writers reproduce (the cards' tools).
QUARK_VERSION = "0.12"
MODELOPT_VERSION = "0.37.0"
COMPRESSED_TENSORS_VERSION = "0.20.0"


@dataclass(frozen=True)
class StoredTensor:
    suffix: str
    shape: tuple[int, ...]
    dtypes: tuple[str, ...]  # accepted safetensors dtypes; writers write the first


@dataclass(frozen=True)
class Scheme:
    name: str
    precision: str  # label in reports
    group_size: int  # the input dimension must divide by it
    stored: Callable[[int, int], list[StoredTensor]]
    exclusions: Callable[[dict[str, Any]], list[str]]  # the exclusion list of a quantization_config
    matches: Callable[[str, str], bool]  # does exclusion entry (1st) cover module (2nd)?
    names: Callable[[str], tuple[str, ...]] = lambda module: (module,)  # what a plain-name entry is compared with

    def is_excluded(self, module: str, quant_config: dict[str, Any]) -> bool:
        return self.excluded(quant_config)(module)

    def excluded(self, quant_config: dict[str, Any]) -> Callable[[str], bool]:
        """`is_excluded` for the modules of one config, its list read once: a published exclusion list names
        thousands of modules (every BF16 MTP expert), and a model has as many to look up."""
        entries = self.exclusions(quant_config)
        plain = {entry for entry in entries if not _is_pattern(entry)}
        patterns = [entry for entry in entries if _is_pattern(entry)]

        def excluded(module: str) -> bool:
            return any(name in plain for name in self.names(module)) or any(self.matches(p, module) for p in patterns)

        return excluded


def _is_pattern(entry: str) -> bool:
    return entry.startswith("re:") or any(c in entry for c in "*?[")


def _exact_or_regex(entry: str, module: str) -> bool:
    if entry.startswith("re:"):
        return re.match(entry[3:], module) is not None
    return entry == module


def _quark_match(entry: str, module: str) -> bool:
    return _exact_or_regex(entry, module) or fnmatch.fnmatchcase(module, entry)


def _module_and_parts(module: str) -> tuple[str, ...]:
    return (module, *module.split("."))


def _modelopt_match(entry: str, module: str) -> bool:
    return any(fnmatch.fnmatchcase(part, entry) for part in _module_and_parts(module))


def _mxfp4_stored(out: int, in_: int, packed: str) -> list[StoredTensor]:
    return [
        StoredTensor(packed, (out, in_ // 2), ("U8",)),
        StoredTensor("weight_scale", (out, in_ // MXFP4_GROUP), ("U8",)),
    ]


def _nvfp4_stored(out: int, in_: int) -> list[StoredTensor]:
    return [
        StoredTensor("weight", (out, in_ // 2), ("U8",)),
        StoredTensor("weight_scale", (out, in_ // NVFP4_GROUP), ("F8_E4M3",)),
        StoredTensor("weight_scale_2", (), ("F32",)),
        StoredTensor("input_scale", (), ("F32",)),
    ]


def _int8_stored(out: int, in_: int) -> list[StoredTensor]:
    # Quark keeps the scale in the weight's dtype; a float32 re-export loads the same.
    return [StoredTensor("weight", (out, in_), ("I8",)), StoredTensor("weight_scale", (out,), ("BF16", "F32", "F16"))]


def _names(qc: dict[str, Any], key: str) -> list[str]:
    """An exclusion list of a quantization_config, checked: names, globs or `re:` regexes."""
    names = qc.get(key) or []
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise UnsupportedQuantization(f"quantization_config.{key}: a list of module names is expected, not {names!r:.80}")
    for name in names:
        if name.startswith("re:"):
            try:
                re.compile(name[3:])
            except re.error as error:
                raise UnsupportedQuantization(f"quantization_config.{key}: {name!r} is not a valid regex ({error})") from None
    return names


def _mapping(parent: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = parent.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UnsupportedQuantization(f"{where}.{key}: a mapping is expected, not {type(value).__name__}")
    return value


QUARK_MXFP4 = Scheme(
    name="quark-mxfp4",
    precision="MXFP4",
    group_size=MXFP4_GROUP,
    stored=lambda out, in_: _mxfp4_stored(out, in_, "weight"),
    exclusions=lambda qc: _names(qc, "exclude"),
    matches=_quark_match,
)
QUARK_INT8 = Scheme(
    name="quark-w8a8-int8",
    precision="INT8",
    group_size=1,
    stored=_int8_stored,
    exclusions=lambda qc: _names(qc, "exclude"),
    matches=_quark_match,
)
MODELOPT_NVFP4 = Scheme(
    name="modelopt-nvfp4",
    precision="NVFP4",
    group_size=NVFP4_GROUP,
    stored=_nvfp4_stored,
    exclusions=lambda qc: _names(qc, "exclude_modules") or _names(qc, "ignore"),
    matches=_modelopt_match,
    names=_module_and_parts,
)
CT_MXFP4 = Scheme(
    name="ct-mxfp4",
    precision="MXFP4",
    group_size=MXFP4_GROUP,
    stored=lambda out, in_: _mxfp4_stored(out, in_, "weight_packed"),
    exclusions=lambda qc: _names(qc, "ignore"),
    matches=_exact_or_regex,
)
SCHEMES = (QUARK_MXFP4, QUARK_INT8, MODELOPT_NVFP4, CT_MXFP4)


class UnsupportedQuantization(ValueError):
    """A quantization_config this repository does not know; the message names the field and the fix."""


def _quark_scheme(qc: dict[str, Any]) -> Scheme:
    weight = _mapping(_mapping(qc, "global_quant_config", "quantization_config"), "weight",
                      "quantization_config.global_quant_config")
    dtype = weight.get("dtype")
    if dtype == "fp4" and weight.get("group_size") == MXFP4_GROUP and weight.get("scale_format") == "e8m0":
        return QUARK_MXFP4
    if dtype == "int8" and weight.get("qscheme") == "per_channel":
        return QUARK_INT8
    raise UnsupportedQuantization(
        f"quantization_config.global_quant_config.weight: Quark dtype={dtype!r} qscheme={weight.get('qscheme')!r} "
        "is not one of the supported Quark schemes (OCP MXFP4 group 32 e8m0; INT8 per_channel)"
    )


def _ct_scheme(qc: dict[str, Any]) -> Scheme:
    groups = _mapping(qc, "config_groups", "quantization_config")
    formats = [qc.get("format"), *(_mapping(groups, name, "quantization_config.config_groups").get("format") for name in groups)]
    if "mxfp4-pack-quantized" in formats:
        return CT_MXFP4
    raise UnsupportedQuantization(
        f"quantization_config.format: compressed-tensors format {qc.get('format')!r} is not supported "
        "(supported: 'mxfp4-pack-quantized')"
    )


def _modelopt_scheme(qc: dict[str, Any]) -> Scheme:
    if qc.get("quant_algo") == "NVFP4":
        return MODELOPT_NVFP4
    raise UnsupportedQuantization(
        f"quant_algo: ModelOpt {qc.get('quant_algo')!r} is not supported (supported: 'NVFP4')"
    )


def modelopt_section(config: dict[str, Any], hf_quant_config: dict[str, Any] | None) -> dict[str, Any] | None:
    """ModelOpt's settings: config.json's block, else hf_quant_config.json's `quantization` section."""
    block = config.get("quantization_config")
    if block and block.get("quant_method") == "modelopt" and "quant_algo" in block:
        return block
    if hf_quant_config is not None:
        return hf_quant_config.get("quantization")
    return None


def detect_scheme(
    config: dict[str, Any], hf_quant_config: dict[str, Any] | None = None
) -> tuple[Scheme | None, dict[str, Any]]:
    """The scheme of a checkpoint and the dict its exclusions are read from; (None, {}) for BF16."""
    block = config.get("quantization_config")
    if block is not None and not isinstance(block, dict):
        raise UnsupportedQuantization(f"quantization_config: a mapping is expected, not {type(block).__name__}")
    if block is None and hf_quant_config is not None:
        block = {"quant_method": "modelopt"}
    if block is None:
        return None, {}
    method = block.get("quant_method")
    if method == "quark":
        scheme, section = _quark_scheme(block), block
    elif method == "compressed-tensors":
        scheme, section = _ct_scheme(block), block
    elif method == "modelopt":
        section = modelopt_section(config, hf_quant_config)
        if section is None:
            raise UnsupportedQuantization(
                "quantization_config says quant_method 'modelopt' but names no quant_algo and there is no "
                "hf_quant_config.json beside config.json: copy hf_quant_config.json from the original export"
            )
        if not isinstance(section, dict):
            raise UnsupportedQuantization(f"hf_quant_config.json: quantization: a mapping is expected, not {type(section).__name__}")
        scheme = _modelopt_scheme(section)
    else:
        scheme = None
    if scheme is not None:
        scheme.exclusions(section)  # checked here, so the layout never meets a malformed list
        return scheme, section
    raise UnsupportedQuantization(
        f"quantization_config.quant_method: {method!r} is not supported "
        "(supported: 'quark', 'modelopt', 'compressed-tensors', or no quantization_config for BF16)"
    )

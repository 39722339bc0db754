"""Which Quark layer configs are the INT8 W8A8 scheme sglang_ext serves.

A Quark layer config (the `global_quant_config`, or the `layer_quant_config` / `layer_type_quant_config`
entry SGLang matched for a layer) holds `weight`, `input_tensors`, `output_tensors` and `bias` specs. The
served scheme is the Qwen3.6 INT8 card's: INT8 weights per output channel (ch_axis 0), static and
symmetric; INT8 activations `per_channel` and dynamic, i.e. one scale per token computed at run time
(Quark's spelling; vLLM's `_is_dynamic_per_token_w8a8` test), symmetric; outputs and bias unquantized.
"""

from typing import Any

_SERVED = (
    "weight int8 per_channel ch_axis 0 static symmetric, input_tensors int8 per_channel dynamic symmetric, "
    "output_tensors and bias null"
)


def is_quark_w8a8_int8(layer_config: dict[str, Any]) -> bool:
    """True for the served scheme; False when the weight is not INT8 (SGLang's own Quark schemes decide).

    An INT8 weight in any other combination raises NotImplementedError naming each field that differs,
    rather than falling through to SGLang's generic "no quark compatible scheme".
    """
    weight = layer_config.get("weight") or {}
    if weight.get("dtype") != "int8":
        return False
    inputs = layer_config.get("input_tensors") or {}
    expected = {
        "weight.qscheme": (weight.get("qscheme"), "per_channel"),
        "weight.ch_axis": (weight.get("ch_axis"), 0),
        "weight.is_dynamic": (bool(weight.get("is_dynamic")), False),
        "weight.symmetric": (weight.get("symmetric"), True),
        "input_tensors.dtype": (inputs.get("dtype"), "int8"),
        "input_tensors.qscheme": (inputs.get("qscheme"), "per_channel"),
        "input_tensors.is_dynamic": (inputs.get("is_dynamic"), True),
        "input_tensors.symmetric": (inputs.get("symmetric"), True),
        "output_tensors": (layer_config.get("output_tensors"), None),
        "bias": (layer_config.get("bias"), None),
    }
    wrong = [f"{field}={got!r} (needs {want!r})" for field, (got, want) in expected.items() if got != want]
    if wrong:
        raise NotImplementedError(
            "quantization_config: this Quark INT8 scheme is not served by sglang_ext: "
            + ", ".join(wrong)
            + f". Served: {_SERVED}."
        )
    return True

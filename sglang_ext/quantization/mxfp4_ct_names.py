"""Checkpoint names of compressed-tensors MXFP4 experts, as SGLang's MXFP4 MoE method loads them.

compressed-tensors `mxfp4-pack-quantized` stores each expert projection as `<module>.weight_packed` (uint8,
two E2M1 codes per byte) and `<module>.weight_scale` (E8M0). SGLang 0.5.17 serves such MoE layers with
`Mxfp4MoEMethod` (layers/quantization/compressed_tensors/compressed_tensors.py:184-190), whose packed
parameters are `w13_weight` / `w2_weight`; Qwen3.5's loader turns
`mlp.experts.{e}.gate_proj.weight_packed` into `mlp.experts.w13_weight_packed`, which is no parameter,
and fails with a KeyError (models/qwen3_5.py:2257, `params_dict[name_mapped]`). SGLang's DeepSeek and Kimi
loaders rename the tensor first (models/deepseek_common/deepseek_weight_loader.py:278,
models/kimi_k3.py:2761-2763); :func:`ct_mxfp4_expert_name` is that rename for Qwen3.5. SGLang 0.5.23 is the
same (compressed_tensors.py:236-242, qwen3_5.py:2925).
"""

_PACKED = ".weight_packed"


def ct_mxfp4_expert_name(name: str) -> str:
    """`...mlp.experts.{e}.{gate,up,down}_proj.weight_packed` -> `....weight`; any other name unchanged.

    Only routed experts are renamed: compressed-tensors' own linear schemes keep `weight_packed`.
    """
    if ".mlp.experts." in name and name.endswith(_PACKED):
        return name[: -len(_PACKED)] + ".weight"
    return name


def serves_experts_with_mxfp4_moe_method(quant_config: object) -> bool:
    """True when SGLang gives this checkpoint's MoE layers `Mxfp4MoEMethod` (compressed_tensors.py:184),
    i.e. when :func:`ct_mxfp4_expert_name` must rename them. Other compressed-tensors MoE schemes (NVFP4,
    WNA16) do have `w13_weight_packed` parameters, so the rename must not apply to them."""
    return (
        quant_config is not None
        and quant_config.get_name() == "compressed_tensors"
        and quant_config._is_mxfp4_moe(layer_name="")
    )

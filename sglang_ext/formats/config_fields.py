"""The config.json fields the Qwen3.5-MoE layout is derived from, checked before anything is derived.

A checkpoint's config.json is user input: a field of the wrong type, a negative size or an expert count in
the billions must come back as one line naming the field, not as a TypeError from deep inside the layout,
and not as a loop over a billion experts. Bounds are far above every published Qwen3.5 / Qwen3.6 config
(397B-A17B: 512 experts, 60 layers, vocab 248,320) and far below what would exhaust a machine.
"""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

Size = Annotated[int, Field(strict=True, ge=1, le=1 << 20)]
Count = Annotated[int, Field(strict=True, ge=1, le=4096)]


class _Fields(BaseModel):
    model_config = ConfigDict(extra="allow")  # every other key of the published configs is fine


class TextFields(_Fields):
    hidden_size: Size
    head_dim: Size
    num_attention_heads: Count
    num_key_value_heads: Count
    linear_num_key_heads: Count
    linear_num_value_heads: Count
    linear_key_head_dim: Size
    linear_value_head_dim: Size
    linear_conv_kernel_dim: Annotated[int, Field(strict=True, ge=1, le=64)]
    num_experts: Count
    num_experts_per_tok: Count
    moe_intermediate_size: Size
    shared_expert_intermediate_size: Size
    vocab_size: Annotated[int, Field(strict=True, ge=1, le=1 << 24)]
    layer_types: Annotated[list[Literal["linear_attention", "full_attention"]], Field(min_length=1, max_length=1024)]
    mtp_num_hidden_layers: Annotated[int, Field(strict=True, ge=0, le=16)]


class VisionFields(_Fields):
    depth: Annotated[int, Field(strict=True, ge=0, le=256)]
    hidden_size: Size
    intermediate_size: Size
    in_channels: Annotated[int, Field(strict=True, ge=1, le=16)]
    patch_size: Annotated[int, Field(strict=True, ge=1, le=1024)]
    temporal_patch_size: Annotated[int, Field(strict=True, ge=1, le=64)]
    spatial_merge_size: Annotated[int, Field(strict=True, ge=1, le=64)]
    num_position_embeddings: Size
    out_hidden_size: Size


class ConfigError(ValueError):
    """config.json does not describe a Qwen3.5-MoE model this repository can lay out; names the field."""


def check_config_fields(config: Any, file: str = "config.json") -> None:
    """Raise ConfigError naming every bad field of `config` (a parsed config.json) at once."""
    if not isinstance(config, dict):
        raise ConfigError(f"{file}: a JSON object (mapping) is expected at the top level, not {type(config).__name__}")
    problems = []
    for key, fields in (("text_config", TextFields), ("vision_config", VisionFields)):
        section = config.get(key)
        if not isinstance(section, dict):
            found = "missing" if section is None else f"a {type(section).__name__}"
            problems.append(f"{key}: a mapping is expected, found {found} (architectures: {config.get('architectures')})")
            continue
        try:
            fields.model_validate(section)
        except ValidationError as error:
            problems += [f"{key}.{'.'.join(map(str, p['loc']))}: {p['msg']}" for p in error.errors()]
    if problems:
        raise ConfigError(f"{file}: " + f"\n{file}: ".join(problems))

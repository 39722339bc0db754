"""sglang_ext.formats.schemes: the exclusion matcher a checkpoint's modules are looked up in answers as each tool's
own rule does, entry by entry (SGLang's readers), for plain names, globs and regexes alike."""

import pytest

from sglang_ext.formats.schemes import CT_MXFP4, MODELOPT_NVFP4, QUARK_INT8, QUARK_MXFP4

MODULES = [
    "lm_head",
    "mtp.layers.0.mlp.experts.3.gate_proj",
    "mtp.fc",
    "model.language_model.layers.0.mlp.gate",
    "model.language_model.layers.0.mlp.shared_expert_gate",
    "model.language_model.layers.0.mlp.experts.7.down_proj",
    "model.language_model.layers.3.self_attn.q_proj",
    "model.language_model.layers.1.linear_attn.in_proj_qkvz",
    "model.visual.blocks.0.attn.qkv",
]
ENTRIES = [
    "lm_head", "mtp.layers.0.mlp.experts.3.gate_proj", "gate", "q_proj",  # plain names, whole or one dotted part
    "*.linear_attn.*", "mtp.*", "model.visual*",  # globs
    r"re:.*\.mlp\.gate$", r"re:^model\.language_model\.layers\.0\.mlp\.experts\..*",  # regexes
]  # fmt: skip


@pytest.mark.parametrize("scheme", [QUARK_MXFP4, QUARK_INT8, MODELOPT_NVFP4, CT_MXFP4], ids=lambda s: s.name)
def test_the_matcher_answers_as_the_tools_rule_entry_by_entry(scheme) -> None:
    config = {"exclude": ENTRIES, "exclude_modules": ENTRIES, "ignore": ENTRIES}
    excluded = scheme.excluded(config)
    expected = {m: any(scheme.matches(entry, m) for entry in ENTRIES) for m in MODULES}
    assert {m: excluded(m) for m in MODULES} == expected
    assert any(expected.values()) and not all(expected.values())  # the list tells modules apart


def test_modelopt_names_match_a_whole_name_or_one_dotted_part_and_quark_the_whole_name() -> None:
    config = {"exclude": ["q_proj"], "exclude_modules": ["q_proj"]}
    module = "model.language_model.layers.3.self_attn.q_proj"
    assert MODELOPT_NVFP4.excluded(config)(module) and not QUARK_INT8.excluded(config)(module)

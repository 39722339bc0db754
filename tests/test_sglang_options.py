import importlib.util

import pytest

from launch.sglang_options import SNAPSHOT_DIR, OptionTable, installed_sglang_version, parse_with_sglang, sglang_parser
from launch.sglang_rules import RULES
from sglang_ext import SUPPORTED_SGLANG


@pytest.fixture(scope="module", params=list(SUPPORTED_SGLANG))
def table(request) -> OptionTable:
    return OptionTable.snapshot(request.param)


def test_every_supported_release_has_a_snapshot_and_its_start_rules():
    assert sorted(p.stem for p in SNAPSHOT_DIR.glob("*.json")) == sorted(SUPPORTED_SGLANG) == sorted(RULES)


def test_snapshot_knows_the_options_the_recipes_rely_on(table):
    for name in ("tp-size", "tensor-parallel-size", "attention-backend", "moe-runner-backend",
                 "mamba-radix-cache-strategy", "speculative-algorithm", "kv-cache-dtype"):
        assert name in table.by_name
    assert table.by_name["tp-size"] is table.by_name["tensor-parallel-size"]
    assert "aiter" in table.by_name["attention-backend"].choices


def test_renders_values_flags_and_lists(table):
    cli = table.to_cli({"tp-size": 4, "enable-torch-compile": True, "disable-radix-cache": False,
                        "cuda-graph-bs-decode": [1, 2, 4], "mem-fraction-static": 0.8})
    assert cli == ["--tp-size", "4", "--enable-torch-compile", "--cuda-graph-bs-decode", "1", "2", "4",
                   "--mem-fraction-static", "0.8"]


def test_json_options_take_mappings(table):
    cli = table.to_cli({"preferred-sampling-params": {"temperature": 0.6, "top_k": 20}})
    assert cli == ["--preferred-sampling-params", '{"temperature":0.6,"top_k":20}']


@pytest.mark.parametrize("args, message", [
    ({"tp_size": 2}, "did you mean 'tp-size'"),
    ({"--tp-size": 2}, "without dashes"),
    ({"tp-size": "four"}, "takes an integer"),
    ({"tp-size": True}, "takes an integer"),
    ({"attention-backend": "flash"}, "must be one of"),
    ({"disable-radix-cache": "yes"}, "on/off flag"),
    ({"tp-size": 2, "tensor-parallel-size": 2}, "same option as 'tp-size'"),
    ({"mem-fraction-static": [0.5]}, "takes one value"),
])
def test_rejects_with_a_message_naming_the_fix(table, args, message):
    with pytest.raises(ExceptionGroup) as caught:
        table.to_cli(args)
    assert any(message in str(e) for e in caught.value.exceptions), [str(e) for e in caught.value.exceptions]


# What the card flags SGLang renamed became: 0.5.17 keeps the old names as deprecated aliases, 0.5.23 drops
# them (and turns --enable-dp-attention into an alias of --attn-dp-size).
RENAMED = {
    "0.5.17": [({"cuda-graph-max-bs": 10}, "use 'cuda-graph-max-bs-decode'"),
               ({"mamba-scheduler-strategy": "extra_buffer"}, "use 'mamba-radix-cache-strategy'")],
    "0.5.23": [({"cuda-graph-max-bs": 10}, "SGLang 0.5.23 has no option '--cuda-graph-max-bs'"),
               ({"mamba-scheduler-strategy": "extra_buffer"}, "SGLang 0.5.23 has no option '--mamba-scheduler-strategy'"),
               ({"enable-dp-attention": True}, "use 'attn-dp-size <dp-size>'")],
}  # fmt: skip


@pytest.mark.parametrize("version, args, message", [(v, *case) for v, cases in RENAMED.items() for case in cases])
def test_renamed_flags_name_their_successor_in_each_release(version, args, message):
    with pytest.raises(ExceptionGroup) as caught:
        OptionTable.snapshot(version).to_cli(args)
    assert any(message in str(e) for e in caught.value.exceptions), [str(e) for e in caught.value.exceptions]


def test_reports_every_problem_at_once(table):
    with pytest.raises(ExceptionGroup) as caught:
        table.to_cli({"tp_size": 1, "attention-backend": "nope", "page-size": 64})
    assert sorted(e.key for e in caught.value.exceptions) == ["attention-backend", "tp_size"]


def test_unknown_version_names_the_known_ones():
    with pytest.raises(FileNotFoundError, match="0.5.17"):
        OptionTable.snapshot("0.0.1")


sglang_present = pytest.mark.skipif(
    importlib.util.find_spec("sglang") is None, reason="SGLang is not installed here; the snapshot is used instead"
)


@sglang_present
def test_the_installed_sglangs_snapshot_matches_its_parser():
    installed = installed_sglang_version()
    if installed not in SUPPORTED_SGLANG:
        pytest.skip(f"SGLang {installed} is not one sglang_ext supports; no snapshot to compare")
    live = OptionTable.from_parser(sglang_parser(), installed, source="sglang (installed)")
    assert {o.flags: o for o in live.options} == {o.flags: o for o in OptionTable.snapshot(installed).options}


@sglang_present
def test_sglang_parser_rejects_what_the_snapshot_rejects():
    with pytest.raises(ValueError, match="rejected|does not know"):
        parse_with_sglang(["--model-path", "x", "--attention-backend", "nope"])

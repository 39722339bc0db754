import importlib.util

import pytest

from launch.sglang_options import OptionTable, option_table, parse_with_sglang

PINNED = "0.5.17"


@pytest.fixture(scope="module")
def table() -> OptionTable:
    return OptionTable.snapshot(PINNED)


def test_snapshot_knows_the_options_the_recipes_rely_on(table):
    for name in ("tp-size", "tensor-parallel-size", "attention-backend", "moe-runner-backend",
                 "mamba-radix-cache-strategy", "speculative-algorithm", "kv-cache-dtype"):
        assert name in table.by_name
    assert table.by_name["tp-size"] is table.by_name["tensor-parallel-size"]
    assert "aiter" in table.by_name["attention-backend"].choices


def test_renders_values_flags_and_lists(table):
    cli = table.to_cli({"tp-size": 4, "enable-dp-attention": True, "disable-radix-cache": False,
                        "cuda-graph-bs-decode": [1, 2, 4], "mem-fraction-static": 0.8})
    assert cli == ["--tp-size", "4", "--enable-dp-attention", "--cuda-graph-bs-decode", "1", "2", "4",
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
    ({"enable-dp-attention": "yes"}, "on/off flag"),
    ({"cuda-graph-max-bs": 10}, "use 'cuda-graph-max-bs-decode'"),
    ({"mamba-scheduler-strategy": "extra_buffer"}, "use 'mamba-radix-cache-strategy'"),
    ({"tp-size": 2, "tensor-parallel-size": 2}, "same option as 'tp-size'"),
    ({"mem-fraction-static": [0.5]}, "takes one value"),
])
def test_rejects_with_a_message_naming_the_fix(table, args, message):
    with pytest.raises(ExceptionGroup) as caught:
        table.to_cli(args)
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
def test_snapshot_matches_the_installed_sglang(table):
    live = option_table(PINNED)
    if live.source == table.source:
        pytest.skip("installed SGLang is not the pinned version")
    assert {o.flags: o for o in live.options} == {o.flags: o for o in table.options}


@sglang_present
def test_sglang_parser_rejects_what_the_snapshot_rejects():
    with pytest.raises(ValueError, match="rejected|does not know"):
        parse_with_sglang(["--model-path", "x", "--attention-backend", "nope"])

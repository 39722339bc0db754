"""eval.perf.bench_suite without a GPU: every step runs as its own process with the suite's options and --out,
a failing step does not stop the next, and a bad --set stops the suite before any step."""

import json
import sys
from pathlib import Path

import pytest

from eval.perf import bench_suite


def test_each_step_runs_and_a_failure_does_not_stop_the_next(tmp_path: Path, monkeypatch, capfd) -> None:
    argv = ["bench_suite", "--formats", "bf16", "--layers", "4", "--set", "bf16:port=31000", "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    assert bench_suite.main() == 1  # no GPU here: each step says so and exits 1
    steps = json.loads((tmp_path / "bench_suite.json").read_text())["steps"]
    assert [s["name"] for s in steps] == ["bench_decode", "profile_decode", "bench_serving"]
    assert all(s["exit_code"] == 1 for s in steps)
    for s in steps:
        assert s["command"][1:3] == ["-m", f"eval.perf.{s['name']}"]
        assert s["command"][s["command"].index("--out") + 1] == str(tmp_path)
        assert "--set=bf16:port=31000" in s["command"] and "4" in s["command"]
    assert "--stock-moe-configs" in steps[0]["command"]
    assert capfd.readouterr().err.count("measuring needs a CUDA GPU") == 3


def test_the_serving_sweep_takes_the_suites_concurrency(tmp_path: Path) -> None:
    parse = bench_suite.build_parser().parse_args
    *_, serving = bench_suite.steps(parse(["--concurrency", "1,8", "--out", str(tmp_path)]))
    assert serving.command[serving.command.index("--concurrency") + 1] == "1,8"
    assert all("--concurrency" not in step.command for step in bench_suite.steps(parse(["--out", str(tmp_path)])))


def test_tune_runs_first_into_its_own_folder(tmp_path: Path) -> None:
    tune, *_ = bench_suite.steps(bench_suite.build_parser().parse_args(["--tune", "--out", str(tmp_path)]))
    assert tune.name == "tune_moe" and tune.result == str(tmp_path / "tune_moe" / "tune_moe.json")


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--set", "bf17:port=1"], "no tiny recipe serves format 'bf17'"),
        (["--concurrency", "1,x"], "--concurrency: expected comma-separated integers, got '1,x'"),
    ],
)
def test_bad_input_stops_the_suite_before_any_step(option, message, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(sys, "argv", ["bench_suite", *option, "--out", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_info:
        bench_suite.main()
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "bench_suite.json").exists()

"""eval.perf.bench_serving without a GPU: each case's server options, and the resume path (completed sweeps
are read back, not rerun; ratios against BF16 at the same prompt shape and concurrency)."""

import argparse
import json
import sys
from pathlib import Path

import pytest

from eval.perf import bench_decode, bench_serving
from launch.recipe import load_recipe


def test_a_case_serves_its_checkpoint_with_its_fse_setting(tmp_path: Path) -> None:
    case = bench_decode.Case("quark-w8a8-int8", False)
    overrides = bench_serving.case_overrides(case, tmp_path / "ckpt", ["context-length=4096"])
    loaded = load_recipe(bench_decode.tiny_recipe(case.fmt), overrides)
    assert loaded.recipe.model.path == str(tmp_path / "ckpt") and loaded.recipe.model.fixture is None
    cli = loaded.server_cli
    assert "--disable-shared-experts-fusion" in cli
    assert cli[cli.index("--mem-fraction-static") + 1] == "0.8" and cli[cli.index("--context-length") + 1] == "4096"
    fused = load_recipe("tiny-int8", bench_serving.case_overrides(bench_decode.Case("quark-w8a8-int8", True), tmp_path, []))
    assert "--disable-shared-experts-fusion" not in fused.server_cli


def test_the_sweep_command_is_one_eval_speed_accepts(tmp_path: Path) -> None:
    from eval.__main__ import parser

    command = bench_serving.speed_command("http://127.0.0.1:30000", "tiny", tmp_path, [1, 8], tmp_path / "out")
    assert command[1:4] == ["-m", "eval", "speed"]
    args = parser().parse_args(command[3:])
    assert args.concurrency == [1, 8] and args.dataset == "random-ids" and args.tokenizer == str(tmp_path)


def _cli(case: bench_decode.Case, *sets: str) -> list[str]:
    return bench_serving.case_recipe(case, Path("checkpoint"), list(sets)).server_cli


def _sweep(folder: Path, tok_s: dict[int, float], failure: dict | None = None, server_cli: list[str] = (),
           tpot_ms: float = 5.0) -> None:  # fmt: skip
    folder.mkdir(parents=True)
    (folder / "server_args.json").write_text(json.dumps(list(server_cli)))
    points = [{"server": "quantized", "shape": "in512-out128", "concurrency": c, "request_throughput": t / 128,
               "output_throughput": t, "median_ttft_ms": 20.0, "median_tpot_ms": tpot_ms, "completed": 3 * c}
              for c, t in tok_s.items()]  # fmt: skip
    (folder / "speed.json").write_text(json.dumps({"points": points, "failure": failure}))


def test_completed_sweeps_resume_and_give_ratios(tmp_path: Path, monkeypatch, capsys) -> None:
    root = tmp_path / "serving" / "qwen3.5-35b-a3b-20L"
    Case = bench_decode.Case
    _sweep(root / "bf16-fse", {1: 200.0, 8: 1200.0}, server_cli=_cli(Case("bf16", True)), tpot_ms=6.0)
    _sweep(root / "quark-w8a8-int8-fse", {1: 260.0, 8: 1500.0}, server_cli=_cli(Case("quark-w8a8-int8", True)),
           tpot_ms=4.0)  # fmt: skip
    _sweep(root / "quark-w8a8-int8-no-fse", {1: 300.0, 8: 1600.0}, server_cli=_cli(Case("quark-w8a8-int8", False)),
           tpot_ms=5.0)  # fmt: skip
    argv = ["bench_serving", "--formats", "quark-w8a8-int8", "--concurrency", "1,8", "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    assert bench_serving.main() == 0  # every sweep completed: no server, no GPU
    rows = json.loads((tmp_path / "bench_serving.json").read_text())["rows"]
    by = {(r["case"], r["concurrency"]): r for r in rows}
    assert len(rows) == 6  # the BF16 baseline is measured although --formats does not name it
    assert by[("quark-w8a8-int8 fse", 1)]["vs_bf16"] == pytest.approx(1.3)
    assert by[("quark-w8a8-int8 no-fse", 8)]["vs_bf16"] == pytest.approx(1600 / 1200)
    assert by[("quark-w8a8-int8 fse", 8)]["fse_vs_unfused"] == pytest.approx(1500 / 1600)
    assert by[("quark-w8a8-int8 no-fse", 8)]["fse_vs_unfused"] is None
    # per-request decode speed: the inverse ratio of median TPOT
    assert by[("quark-w8a8-int8 fse", 8)]["tpot_vs_bf16"] == pytest.approx(1.5)
    assert by[("quark-w8a8-int8 fse", 8)]["tpot_fse_vs_unfused"] == pytest.approx(1.25)
    assert by[("quark-w8a8-int8 no-fse", 1)]["tpot_fse_vs_unfused"] is None
    printed = capsys.readouterr().out
    assert "quark-w8a8-int8 no-fse" in printed and "0.94 (1.25)" in printed


def test_without_a_gpu_the_saved_sweeps_are_reported_and_the_rest_named(tmp_path: Path, monkeypatch, capsys) -> None:
    root = tmp_path / "serving" / "qwen3.5-35b-a3b-20L"
    _sweep(root / "bf16-fse", {1: 200.0}, server_cli=_cli(bench_decode.Case("bf16", True)))
    argv = ["bench_serving", "--formats", "quark-w8a8-int8", "--concurrency", "1", "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert bench_serving.main() == 1  # the INT8 sweeps need the GPU this machine lacks
    report = json.loads((tmp_path / "bench_serving.json").read_text())
    assert [r["case"] for r in report["rows"]] == ["bf16 fse"]
    assert set(report["failures"]) == {"quark-w8a8-int8 fse", "quark-w8a8-int8 no-fse"}
    printed = capsys.readouterr()
    assert "bf16 fse" in printed.out and "not measured: measuring needs a CUDA GPU" in printed.err


def test_a_failed_sweep_or_one_under_other_options_is_not_completed(tmp_path: Path) -> None:
    cli = _cli(bench_decode.Case("bf16", True))
    _sweep(tmp_path / "c", {1: 100.0}, failure={"server": "quantized", "shape": "in512-out128", "concurrency": 8,
                                                "reason": "timed out"}, server_cli=cli)  # fmt: skip
    assert not bench_serving.completed(tmp_path / "c", cli)
    assert not bench_serving.completed(tmp_path / "missing", cli)
    _sweep(tmp_path / "ok", {1: 100.0}, server_cli=cli)
    assert bench_serving.completed(tmp_path / "ok", cli)
    assert not bench_serving.completed(tmp_path / "ok", _cli(bench_decode.Case("bf16", True), "attention-backend=fa3"))


def test_a_sweep_under_other_variables_is_not_completed(tmp_path: Path) -> None:
    """A recipe's env item (the GEMV's switch) or SGLang alone makes another server: its saved sweep does not
    count for the plain one, and a sweep saved before env.json existed ran with sglang_ext alone."""
    case = bench_decode.Case("bf16", True)
    plain = bench_serving.case_recipe(case, Path("checkpoint"), [])
    gemv = bench_serving.case_recipe(case, Path("checkpoint"), ["env.SGLANG_EXT_SMALL_M_GEMV=1"])
    assert plain.server_cli == gemv.server_cli
    _sweep(tmp_path / "old", {1: 100.0}, server_cli=plain.server_cli)  # no env.json
    assert bench_serving.completed(tmp_path / "old", plain.server_cli, bench_serving.served_env(plain))
    assert not bench_serving.completed(tmp_path / "old", gemv.server_cli, bench_serving.served_env(gemv))
    assert not bench_serving.completed(tmp_path / "old", plain.server_cli, bench_serving.served_env(plain, stock=True))
    assert bench_serving.served_env(plain, stock=True) == {}


def test_stock_sglang_serves_without_sglang_ext_and_every_row_gets_its_ratio(tmp_path: Path, monkeypatch, capsys) -> None:
    import contextlib
    import subprocess

    started = []

    @contextlib.contextmanager
    def running(plan, timeout_s):
        started.append(plan)
        yield plan

    monkeypatch.setattr(bench_serving.server, "running", running)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0))
    stock, fused = bench_serving.STOCK, bench_decode.Case("bf16", True)
    for case in (stock, fused):
        bench_serving.sweep(case, bench_serving.case_recipe(case, tmp_path, []), tmp_path, [1], tmp_path / case.slug)
    assert "SGLANG_EXTERNAL_MODEL_PACKAGE" not in started[0].env and "PYTHONPATH" in started[0].env
    assert started[1].env["SGLANG_EXTERNAL_MODEL_PACKAGE"] == "sglang_ext.models"
    assert json.loads((tmp_path / stock.slug / "env.json").read_text()) == {}
    assert stock.label == "bf16 stock-sglang" and "--disable-shared-experts-fusion" not in started[0].command

    root = tmp_path / "out" / "serving" / "qwen3.5-35b-a3b-20L"
    _sweep(root / "bf16-fse", {1: 220.0}, server_cli=_cli(fused), tpot_ms=4.0)
    _sweep(root / stock.slug, {1: 200.0}, server_cli=_cli(stock), tpot_ms=5.0)
    (root / stock.slug / "env.json").write_text("{}")
    monkeypatch.setattr(sys, "argv", ["bench_serving", "--formats", "bf16", "--concurrency", "1", "--stock-sglang",
                                      "--set", "bf16:env.SGLANG_EXT_SMALL_M_GEMV=1", "--out", str(tmp_path / "out")])  # fmt: skip
    (root / "bf16-fse" / "env.json").write_text(json.dumps({"SGLANG_EXT_SMALL_M_GEMV": "1", "SGLANG_EXTERNAL_MODEL_PACKAGE": "sglang_ext.models"}))
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    code = bench_serving.main()
    by = {r["case"]: r for r in json.loads((tmp_path / "out" / "bench_serving.json").read_text())["rows"]}
    assert code == 1 and set(by) == {"bf16 fse", "bf16 stock-sglang"}  # BF16 FSE off was never measured
    assert by["bf16 fse"]["vs_stock"] == pytest.approx(1.1) and by["bf16 fse"]["tpot_vs_stock"] == pytest.approx(1.25)
    assert by["bf16 stock-sglang"]["vs_bf16"] == pytest.approx(200 / 220) and by["bf16 stock-sglang"]["fse_vs_unfused"] is None
    assert "× stock" in capsys.readouterr().out


def test_stock_sglang_is_refused_while_the_extension_variable_is_set(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("SGLANG_EXTERNAL_MODEL_PACKAGE", "sglang_ext.models")
    monkeypatch.setattr(sys, "argv", ["bench_serving", "--stock-sglang", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        bench_serving.main()
    assert "unset SGLANG_EXTERNAL_MODEL_PACKAGE" in capsys.readouterr().err


def test_a_busy_port_is_named_with_the_set_that_moves_it(tmp_path: Path) -> None:
    import socket

    from launch.errors import LaunchError

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        case = bench_decode.Case("bf16", True)
        loaded = bench_serving.case_recipe(case, tmp_path, [f"port={port}"])
        with pytest.raises(LaunchError, match=f"port {port} on 127.0.0.1 is already in use") as error:
            bench_serving.sweep(case, loaded, tmp_path, [1], tmp_path / "out")
    assert f"--set bf16:port={port + 1}" in str(error.value)
    assert not (tmp_path / "out").exists()  # nothing started


def test_a_bench_serving_that_does_not_import_is_named_before_any_server(capsys) -> None:
    parser = argparse.ArgumentParser(prog="bench_serving")
    with pytest.raises(SystemExit):
        bench_serving.require_importable(parser, "no_such_module_for_bench_serving")
    error = capsys.readouterr().err
    assert "No module named 'no_such_module_for_bench_serving'" in error and "eval/gpu-wheels.txt" in error
    bench_serving.require_importable(parser, "json")  # importable: no error

"""eval.perf.headline without a GPU: the line and its numbers from what the steps saved in --out (graph time
against the checkpoint's byte floor; TPOT at concurrency 1 against SGLang alone, the lower shape's ratio)."""

import argparse
import json
import sys
from pathlib import Path

import pytest

from eval.perf import bench_decode, byte_bound, headline
from sglang_ext.fixtures import write_fixture


def _saved_run(out: Path, layers: int = 1) -> Path:
    checkpoint = bench_decode.checkpoint_path(out, "tiny", layers, "bf16")
    write_fixture(checkpoint, "bf16", shape="tiny", num_layers=layers)
    (out / "bandwidth.json").write_text(json.dumps({"hbm_copy_gbs": 1.0}))
    profile = {"case": "bf16 fse", "fmt": "bf16", "fse": True, "batch": 1, "graph_us": 2000.0}
    (out / "profile_decode.json").write_text(json.dumps({"profiles": [profile, {**profile, "batch": 8, "graph_us": 1.0}]}))
    rows = [{"case": case, "shape": shape, "concurrency": 1, "median_tpot_ms": tpot}
            for case, shape, tpot in (("bf16 fse", "in4000-out200", 2.0), ("bf16 fse", "in512-out128", 2.0),
                                      ("bf16 stock-sglang", "in4000-out200", 3.0), ("bf16 stock-sglang", "in512-out128", 2.5),
                                      ("bf16 no-fse", "in512-out128", 1.0))]  # fmt: skip
    (out / "bench_serving.json").write_text(json.dumps({"rows": rows}))
    return checkpoint


def test_the_line_from_a_saved_run(tmp_path: Path) -> None:
    checkpoint = _saved_run(tmp_path)
    config = json.loads((checkpoint / "config.json").read_text())
    floor_us = byte_bound.decode_bytes(checkpoint, config, 1) / 1e9 * 1e6  # at 1 GB/s
    numbers = headline.headline(tmp_path, "tiny", 1, 1.0)
    assert numbers["graph_us"] == 2000.0 and numbers["floor_us"] == pytest.approx(floor_us)
    assert numbers["of_floor"] == pytest.approx(floor_us / 2000.0)
    assert numbers["vs_stock"] == pytest.approx(1.25)  # the lower of 3.0/2.0 and 2.5/2.0; FSE off is not the server
    assert numbers["tpot_concurrency_1"]["in4000-out200"] == {"served_ms": 2.0, "stock_ms": 3.0}
    text = headline.line({**numbers, "of_floor": 0.374, "layers": 40})
    assert text == ("Headline: batch-1 decode at 37% of the bandwidth floor (graph time, BF16, 40 layers), 1.25× stock "
                    "SGLang 0.5.17 serving TPOT at concurrency 1.")  # fmt: skip


def test_a_run_without_the_stock_server_says_what_is_missing(tmp_path: Path) -> None:
    _saved_run(tmp_path)
    rows = json.loads((tmp_path / "bench_serving.json").read_text())["rows"]
    (tmp_path / "bench_serving.json").write_text(json.dumps({"rows": [r for r in rows if "stock" not in r["case"]]}))
    numbers = headline.headline(tmp_path, "tiny", 1, None)
    assert numbers["vs_stock"] is None and numbers["floor_us"] is None  # no bandwidth measured either
    assert "?% (not measured)" in headline.line(numbers) and "?× (not measured)" in headline.line(numbers)


def test_the_steps_share_one_out_and_the_set_items(tmp_path: Path) -> None:
    args = argparse.Namespace(shape="qwen3.5-35b-a3b", layers=40, sets=["bf16:env.X=1"], out=tmp_path)
    profile, serving = headline.steps(args)
    assert profile[2] == "eval.perf.profile_decode" and profile[-4:] == ["--fse", "on", "--batch-sizes", "1"]
    assert serving[2] == "eval.perf.bench_serving" and serving[-3:] == ["--concurrency", "1", "--stock-sglang"]
    for step in (profile, serving):
        assert step[step.index("--out") + 1] == str(tmp_path) and "--set=bf16:env.X=1" in step
        assert step[step.index("--layers") + 1] == "40" and step[step.index("--formats") + 1] == "bf16"


def test_another_format_is_a_usage_error(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(sys, "argv", ["headline", "--formats", "quark-w8a8-int8", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        headline.main()
    assert "the headline is BF16's" in capsys.readouterr().err

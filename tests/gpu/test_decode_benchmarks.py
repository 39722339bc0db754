"""eval.bench_decode, eval.profile_decode and eval.bench_serving end to end through real SGLang, at the tiny
shape: every case measured at every batch size or concurrency, the ratios filled from the same run, and a
profiled step whose kernels fall into the MoE, DeltaNet and attention groups."""

import json
import sys
from pathlib import Path

import pytest

from eval import bench_decode, bench_serving, profile_decode

pytestmark = pytest.mark.gpu
SHAPE = ["--shape", "tiny", "--layers", "4"]  # one full-attention layer among three DeltaNet ones


def test_bench_decode_measures_every_case(tmp_path: Path, monkeypatch) -> None:
    argv = ["bench_decode", *SHAPE, "--formats", "bf16", "--batch-sizes", "1,8", "--stock-moe-configs", "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    assert bench_decode.main() == 0
    rows = json.loads((tmp_path / "bench_decode.json").read_text())["rows"]
    by = {(r["case"], r["batch"]): r for r in rows}
    assert set(by) == {(case, batch) for case in ("bf16 fse", "bf16 no-fse", "bf16 fse stock-cfg") for batch in (1, 8)}
    assert all(r["decode_ms"] > 0 and 0 < r["bandwidth_fraction"] < 1 for r in rows)
    assert by[("bf16 fse", 8)]["vs_bf16"] == 1.0 and by[("bf16 fse", 8)]["fse_vs_unfused"] > 0


def test_profile_decode_groups_the_kernels(tmp_path: Path, monkeypatch) -> None:
    argv = ["profile_decode", *SHAPE, "--formats", "bf16", "--fse", "on", "--batch-sizes", "1", "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    assert profile_decode.main() == 0
    (profile,) = json.loads((tmp_path / "profile_decode.json").read_text())["profiles"]
    assert profile["kernels_per_step"] > 10 and 0 < profile["busy_us"] <= profile["span_us"]
    assert all(profile["groups_us"].get(group, 0) > 0 for group in ("moe", "deltanet", "attention"))


def test_bench_serving_sweeps_every_case_against_bf16(tmp_path: Path, monkeypatch) -> None:
    argv = ["bench_serving", *SHAPE, "--formats", "bf16", "--concurrency", "1,2", "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    assert bench_serving.main() == 0
    rows = json.loads((tmp_path / "bench_serving.json").read_text())["rows"]
    assert {(r["case"], r["concurrency"]) for r in rows} == {(c, n) for c in ("bf16 fse", "bf16 no-fse") for n in (1, 2)}
    assert all(r["output_throughput"] > 0 for r in rows)
    assert all(r["vs_bf16"] == 1.0 for r in rows if r["case"] == "bf16 fse")

"""eval.perf.bench_suite end to end through real SGLang at the tiny shape, one run for the three benchmarks:
every decode case measured at every batch size with the ratios from the same run, a profiled step whose
kernels fall into the MoE, DeltaNet and attention groups, and a serving sweep of every case against BF16."""

import json
import sys
from pathlib import Path

import pytest

from eval.perf import bench_suite

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench_suite")
    # 4 layers: one full-attention layer among three DeltaNet ones
    argv = ["bench_suite", "--shape", "tiny", "--layers", "4", "--formats", "bf16", "--concurrency", "1,8",
            "--out", str(out)]  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", argv)
        assert bench_suite.main() == 0, (out / "bench_suite.json").read_text()
    return out


def test_bench_decode_measures_every_case(suite: Path) -> None:
    rows = json.loads((suite / "bench_decode.json").read_text())["rows"]
    by = {(r["case"], r["batch"]): r for r in rows}
    assert set(by) == {(case, batch) for case in ("bf16 fse", "bf16 no-fse", "bf16 fse stock-cfg")
                       for batch in (1, 8, 32, 64, 128)}  # fmt: skip
    assert all(r["decode_ms"] > 0 and 0 < r["bandwidth_fraction"] < 1 for r in rows)
    assert by[("bf16 fse", 8)]["vs_bf16"] == 1.0 and by[("bf16 fse", 8)]["fse_vs_unfused"] > 0


def test_profile_decode_groups_the_kernels(suite: Path) -> None:
    profiles = json.loads((suite / "profile_decode.json").read_text())["profiles"]
    assert {(p["case"], p["batch"]) for p in profiles} == {(c, b) for c in ("bf16 fse", "bf16 no-fse") for b in (1, 64)}
    for p in profiles:
        assert p["kernels_per_step"] > 10 and 0 < p["busy_us"] <= p["span_us"] and 0 < p["graph_us"] <= p["span_us"]
        assert all(p["groups_us"].get(group, 0) > 0 for group in ("moe", "deltanet", "attention"))


def test_bench_serving_sweeps_every_case_against_bf16(suite: Path) -> None:
    rows = json.loads((suite / "bench_serving.json").read_text())["rows"]
    assert {(r["case"], r["concurrency"]) for r in rows} == {(c, n) for c in ("bf16 fse", "bf16 no-fse") for n in (1, 8)}
    assert all(r["output_throughput"] > 0 and r["median_tpot_ms"] > 0 for r in rows)
    assert all(r["vs_bf16"] == 1.0 and r["tpot_vs_bf16"] == 1.0 for r in rows if r["case"] == "bf16 fse")
    assert all(r["tpot_fse_vs_unfused"] > 0 for r in rows if r["case"] == "bf16 fse")

"""eval.perf.bench_spec without a GPU: the speed-up table from sweeps already in --out (ratios against MTP off at
the same shape and concurrency, beside each server's accept length), and its bad input."""

import json
from pathlib import Path

import pytest

from eval.perf import bench_spec


def _saved(out: Path, slug: str, tpot_ms: float, tok_s: float, accept: float | None) -> None:
    folder = out / "spec" / "qwen3.5-35b-a3b-8L" / slug
    folder.mkdir(parents=True)
    points = [{"shape": "in512-out128", "concurrency": c, "output_throughput": tok_s * c, "median_tpot_ms": tpot_ms,
               "request_throughput": 1.0, "median_ttft_ms": 10.0} for c in (1, 4)]  # fmt: skip
    (folder / "speed.json").write_text(json.dumps({"points": points}))
    (folder / "accept_length.json").write_text(json.dumps({"accept_length": accept}))


def test_speedups_against_mtp_off_from_saved_sweeps(tmp_path: Path, capsys) -> None:
    _saved(tmp_path, "bf16-mtp-off", tpot_ms=4.0, tok_s=250, accept=None)
    _saved(tmp_path, "bf16-NEXTN-5-1-6-P0.75", tpot_ms=1.6, tok_s=600, accept=3.3)
    assert bench_spec.main(["--layers", "8", "--acceptance", "0.75", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "bench_spec.json").read_text())["rows"]
    nextn = [r for r in rows if r["acceptance"] == 0.75]
    assert [r["tpot_vs_off"] for r in nextn] == [pytest.approx(2.5)] * 2
    assert [r["tok_s_vs_off"] for r in nextn] == [pytest.approx(2.4)] * 2 and nextn[0]["accept_length"] == 3.3
    assert "2.50" in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "message"), [(["--acceptance", "0"], "expected shares in (0, 1]"),
                                               (["--spec", "5,1"], "num-steps,eagle-topk,num-draft-tokens")])  # fmt: skip
def test_bad_acceptance_or_spec_is_a_usage_error(tmp_path: Path, capsys, argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit):
        bench_spec.main([*argv, "--out", str(tmp_path)])
    assert message in capsys.readouterr().err

"""eval.perf.bench_spec without a GPU: the speed-up table from sweeps already in --out (ratios against MTP off at
the same layers, shape and concurrency, beside each server's accept length), the projection to the full depth,
the weight-byte ratio of a speculative step, and bad input."""

import json
from pathlib import Path

import pytest

from eval.perf import bench_decode, bench_spec, byte_bound
from sglang_ext.fixtures import write_fixture
from sglang_ext.formats.safetensors_headers import read_checkpoint


def _saved(out: Path, slug: str, tpot_ms: float, tok_s: float, accept: float | None, layers: int = 8) -> None:
    folder = out / "spec" / f"qwen3.5-35b-a3b-{layers}L" / slug
    folder.mkdir(parents=True)
    points = [{"shape": "in512-out128", "concurrency": c, "output_throughput": tok_s * c, "median_tpot_ms": tpot_ms,
               "request_throughput": 1.0, "median_ttft_ms": 10.0} for c in (1, 4)]  # fmt: skip
    shapes = [{"name": s.name, "input_len": s.input_len, "output_len": s.output_len} for s in bench_spec.DEFAULT_SHAPES]
    (folder / "speed.json").write_text(json.dumps({"shapes": shapes, "points": points}))
    (folder / "accept_length.json").write_text(json.dumps({"accept_length": accept}))


def test_speedups_against_mtp_off_from_saved_sweeps(tmp_path: Path, capsys) -> None:
    _saved(tmp_path, "bf16-mtp-off", tpot_ms=4.0, tok_s=250, accept=None)
    _saved(tmp_path, "bf16-NEXTN-5-1-6-P0.75", tpot_ms=1.6, tok_s=600, accept=3.3)
    assert bench_spec.main(["--layers", "8", "--acceptance", "0.75", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "bench_spec.json").read_text())
    nextn = [r for r in report["rows"] if r["acceptance"] == 0.75]
    assert [r["tpot_vs_off"] for r in nextn] == [pytest.approx(2.5)] * 2
    assert [r["tok_s_vs_off"] for r in nextn] == [pytest.approx(2.4)] * 2 and nextn[0]["accept_length"] == 3.3
    assert report["projection"] == []  # one depth: nothing to fit
    assert "2.50" in capsys.readouterr().out


def test_a_sweep_saved_at_other_prompt_shapes_is_not_this_runs(tmp_path: Path) -> None:
    _saved(tmp_path, "bf16-mtp-off", tpot_ms=4.0, tok_s=250, accept=None)
    _saved(tmp_path, "bf16-NEXTN-5-1-6-P0.75", tpot_ms=1.6, tok_s=600, accept=3.3)
    argv = ["--layers", "8", "--acceptance", "0.75", "--prompt-shapes", "in128-out2048", "--out", str(tmp_path)]
    assert bench_spec.main(argv) == 1  # both to measure again, and no GPU here
    report = json.loads((tmp_path / "bench_spec.json").read_text())
    assert report["rows"] == [] and set(report["failures"]) == {"bf16 mtp-off, 8 layers", "bf16 NEXTN 5/1/6 P=0.75, 8 layers"}


def test_several_draft_shapes_and_depths_project_to_the_full_model(tmp_path: Path, capsys) -> None:
    # TPOT linear in the layers: off 1.0 + 0.1 L, 5/1/6 0.8 + 0.04 L, 3/1/4 saved at one depth only
    for layers in (4, 16):
        _saved(tmp_path, "bf16-mtp-off", 1.0 + 0.1 * layers, 100, None, layers)
        _saved(tmp_path, "bf16-NEXTN-5-1-6-P0.8", 0.8 + 0.04 * layers, 200, 3.7, layers)
    _saved(tmp_path, "bf16-NEXTN-3-1-4-P0.8", 1.0, 150, 2.9, 16)
    argv = ["--layers", "4,16", "--acceptance", "0.8", "--spec", "5,1,6", "3,1,4", "--out", str(tmp_path)]
    assert bench_spec.main(argv) == 1  # 3/1/4 at 4 layers is not measured here (no GPU)
    report = json.loads((tmp_path / "bench_spec.json").read_text())
    assert {(r["case"], r["layers"]) for r in report["rows"]} >= {("bf16 NEXTN 3/1/4 P=0.8", 16), ("bf16 mtp-off", 4)}
    assert list(report["failures"]) == ["bf16 NEXTN 3/1/4 P=0.8, 4 layers"]
    projected = {(p["case"], p["concurrency"]): p for p in report["projection"]}
    assert set(projected) == {(case, c) for case in ("bf16 mtp-off", "bf16 NEXTN 5/1/6 P=0.8") for c in (1, 4)}
    nextn = projected[("bf16 NEXTN 5/1/6 P=0.8", 1)]
    assert nextn["layers"] == 40 and nextn["layers_measured"] == [4, 16]  # the 35B's depth
    assert nextn["median_tpot_ms"] == pytest.approx(0.8 + 0.04 * 40)
    assert nextn["tpot_vs_off"] == pytest.approx((1.0 + 0.1 * 40) / (0.8 + 0.04 * 40))
    assert "projection to 40 layers" in capsys.readouterr().out


def test_the_byte_ratio_counts_verify_draft_extend_and_the_remaining_draft_forwards(tmp_path: Path) -> None:
    checkpoint = write_fixture(tmp_path / "bf16", "bf16")
    config = json.loads((checkpoint / "config.json").read_text())
    entries = read_checkpoint(checkpoint)
    lm_head = next(e.nbytes for e in entries if e.name == "lm_head.weight")
    mtp = sum(e.nbytes for e in entries if e.name.startswith("mtp."))
    assert byte_bound.weight_bytes(entries, config, 10_000, draft=True) == pytest.approx(mtp + lm_head)
    assert byte_bound.weight_bytes(entries, config, 1) == pytest.approx(byte_bound.decode_bytes(checkpoint, config, 1))

    def read(tokens: int, draft: bool = False) -> float:
        return byte_bound.weight_bytes(entries, config, tokens, draft=draft)

    ratio = bench_spec.step_bytes_ratio(entries, config, (5, 1, 6), 3.7, 1)
    assert ratio == pytest.approx(3.7 * read(1) / (read(6) + read(6, draft=True) + 4 * read(1, draft=True)))
    assert ratio < 3.7  # a step reads more than one plain step
    # once plain decoding touches every expert, a step reads the target once and the draft five times
    target, draft = read(10_000), read(10_000, draft=True)
    assert bench_spec.step_bytes_ratio(entries, config, (5, 1, 6), 3.7, 10_000) == pytest.approx(3.7 * target / (target + 5 * draft))


@pytest.mark.parametrize(("argv", "message"), [(["--acceptance", "0"], "expected shares in (0, 1]"),
                                               (["--spec", "5,1"], "num-steps,eagle-topk,num-draft-tokens"),
                                               (["--layers", "4,x"], "expected positive whole numbers")])  # fmt: skip
def test_bad_acceptance_spec_or_layers_is_a_usage_error(tmp_path: Path, capsys, argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit):
        bench_spec.main([*argv, "--out", str(tmp_path)])
    assert message in capsys.readouterr().err

"""eval.perf.bench_decode without a GPU: SGLang options per format, the weight bytes of the roofline, and the
saved-case path (a split or interrupted sweep resumes, and the table's ratios come from saved cases)."""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

from eval.perf import bench_decode, byte_bound
from sglang_ext.fixtures import STAMP_FILE, write_fixture
from sglang_ext.formats.safetensors_headers import read_checkpoint


def test_options_come_from_the_tiny_recipe_with_sets_on_top() -> None:
    ct = bench_decode.recipe_options("ct-mxfp4", []).server_cli
    assert "--moe-runner-backend" not in ct and "--mem-fraction-static" in ct  # the recipe's auto
    ct = bench_decode.recipe_options("ct-mxfp4", ["moe-runner-backend=marlin"]).server_cli
    assert ct[ct.index("--moe-runner-backend") + 1] == "marlin"
    nvfp4 = bench_decode.recipe_options("modelopt-nvfp4", []).server_cli
    assert nvfp4[nvfp4.index("--quantization") + 1] == "modelopt_fp4"


def test_real_shapes_serve_ct_mxfp4_on_marlin_as_its_real_recipe_does() -> None:
    def backend(shape: str, *sets: str) -> str | None:
        parser = argparse.ArgumentParser()
        bench_decode.add_checkpoint_arguments(parser)
        args = parser.parse_args(["--shape", shape, *(f"--set={s}" for s in sets)])
        cli = bench_decode.format_options(parser, args)["ct-mxfp4"].server_cli
        return cli[cli.index("--moe-runner-backend") + 1] if "--moe-runner-backend" in cli else None

    assert backend("qwen3.5-35b-a3b") == "marlin"
    assert backend("tiny") is None  # Marlin's 256-wide padding does not fit the tiny model
    assert backend("qwen3.5-35b-a3b", "ct-mxfp4:moe-runner-backend=triton") == "triton"  # --set has the last word


def test_cases_cover_fse_on_off_and_stock_configs() -> None:
    labels = [c.label for c in bench_decode.cases(["bf16", "quark-mxfp4-fse", "modelopt-nvfp4"], True)]
    assert labels == ["bf16 fse", "bf16 no-fse", "bf16 fse stock-cfg", "quark-mxfp4-fse fse",
                      "quark-mxfp4-fse no-fse", "modelopt-nvfp4"]  # fmt: skip


def test_decode_bytes_read_dense_weights_once_and_the_experts_a_batch_touches(tmp_path: Path) -> None:
    checkpoint = write_fixture(tmp_path / "bf16", "bf16")
    config = json.loads((checkpoint / "config.json").read_text())
    dense = routed = 0
    for path in checkpoint.glob("*.safetensors"):
        with safe_open(path, "pt") as f:
            for name in f.keys():
                if name.startswith(("mtp.", "model.visual.")) or "embed_tokens" in name:
                    continue
                size = f.get_slice(name).get_shape()
                nbytes = f.get_tensor(name).element_size()
                for dim in size:
                    nbytes *= dim
                if ".mlp.experts." in name:
                    routed += nbytes
                else:
                    dense += nbytes
    top_k, experts = config["text_config"]["num_experts_per_tok"], config["text_config"]["num_experts"]
    assert byte_bound.decode_bytes(checkpoint, config, 1) == pytest.approx(dense + routed * top_k / experts)
    assert byte_bound.decode_bytes(checkpoint, config, 10_000) == pytest.approx(dense + routed)


def test_a_benchmark_checkpoint_is_written_once_by_a_process_of_its_own(tmp_path: Path) -> None:
    checkpoint = bench_decode.ensure_checkpoint(tmp_path, "tiny", 2, "bf16", mtp_acceptance=0.8, device="cpu")
    assert checkpoint == bench_decode.checkpoint_path(tmp_path, "tiny", 2, "bf16", 0.8) and (checkpoint / STAMP_FILE).exists()
    config = json.loads((checkpoint / "config.json").read_text())
    assert len(config["text_config"]["layer_types"]) == 2 and config["text_config"]["vocab_size"] >= bench_decode.ONE_BATCH_PROMPT_IDS
    written = (checkpoint / "model.safetensors").stat().st_mtime_ns
    assert bench_decode.ensure_checkpoint(tmp_path, "tiny", 2, "bf16", mtp_acceptance=0.8, device="cpu") == checkpoint
    assert (checkpoint / "model.safetensors").stat().st_mtime_ns == written  # complete: kept


def test_benchmark_checkpoints_hold_every_prompt_id_one_batch_draws() -> None:
    assert bench_decode.vocab_size("qwen3.5-35b-a3b") == 248320  # the published vocab is wide enough
    assert bench_decode.vocab_size("tiny") >= bench_decode.ONE_BATCH_PROMPT_IDS > 3072  # 3072: the tiny tokenizer's
    one_batch = pytest.importorskip("sglang.benchmark.one_batch", reason="SGLang is not installed")
    reqs = one_batch.prepare_synthetic_inputs_for_latency_test(64, 256)
    assert max(max(req.origin_input_ids) for req in reqs) < bench_decode.vocab_size("tiny")


def _setup(fmt: str, *sets: str, shape: str = "qwen3.5-35b-a3b") -> dict:
    return {"shape": shape, "layers": 20, "server_args": bench_decode.recipe_options(fmt, list(sets)).server_cli}


def _saved(out: Path, case: bench_decode.Case, ms: dict[int, float], floor: float = 0.5, setup: dict | None = None) -> None:
    rows = [bench_decode.Row(case.label, case.fmt, case.fse, case.stock_moe_configs, batch, latency, batch / latency * 1e3,
                             latency / 20, floor, floor / latency, variant=case.variant, bound_ms=floor + 0.2)
            for batch, latency in ms.items()]  # fmt: skip
    bench_decode.save_case(out / "cases" / f"{case.slug}.json", case.options_key, rows, setup or _setup(case.fmt), 3000.0)


def test_saved_cases_resume_without_a_gpu_and_give_the_ratios(tmp_path: Path, monkeypatch, capsys) -> None:
    Case = bench_decode.Case
    _saved(tmp_path, Case("bf16", True), {1: 4.0, 8: 5.0})
    _saved(tmp_path, Case("bf16", False), {1: 4.4, 8: 6.0})
    _saved(tmp_path, Case("bf16", True, stock_moe_configs=True), {1: 4.0, 8: 6.5})
    _saved(tmp_path, Case("quark-w8a8-int8", True), {1: 2.5, 8: 4.0}, floor=0.4)  # another run's format: in the table too
    # saved under other options or another shape: not this run's, not in its table
    _saved(tmp_path, Case("modelopt-nvfp4", None), {1: 1.0}, setup=_setup("modelopt-nvfp4", "fp4-gemm-backend=flashinfer_cutlass"))
    _saved(tmp_path, Case("ct-mxfp4", None), {1: 1.0}, setup=_setup("ct-mxfp4", shape="qwen3.5-397b-a17b-tp4"))
    monkeypatch.setattr(sys, "argv", ["bench_decode", "--formats", "bf16", "--stock-moe-configs", "--out", str(tmp_path)])
    assert bench_decode.main() == 0  # every case saved: nothing to run, no GPU needed
    report = json.loads((tmp_path / "bench_decode.json").read_text())
    by = {(r["case"], r["batch"]): r for r in report["rows"]}
    assert by[("bf16 no-fse", 8)]["vs_bf16"] == pytest.approx(5.0 / 6.0)
    assert by[("quark-w8a8-int8 fse", 1)]["vs_bf16"] == pytest.approx(4.0 / 2.5)
    assert by[("bf16 fse", 8)]["tuned_vs_stock"] == pytest.approx(6.5 / 5.0)
    assert by[("bf16 fse stock-cfg", 8)]["tuned_vs_stock"] is None
    assert by[("bf16 fse", 8)]["fse_vs_unfused"] == pytest.approx(6.0 / 5.0)
    assert by[("bf16 no-fse", 8)]["fse_vs_unfused"] is None
    assert by[("quark-w8a8-int8 fse", 1)]["fse_vs_unfused"] is None  # its unfused case was not run
    assert by[("quark-w8a8-int8 fse", 1)]["floor_vs_bf16"] == pytest.approx(0.5 / 0.4)
    assert by[("quark-w8a8-int8 fse", 1)]["bound_vs_bf16"] == pytest.approx(0.7 / 0.6)  # the same cache on both sides
    assert len(report["rows"]) == 8
    assert "quark-w8a8-int8 fse" in capsys.readouterr().out


def test_a_case_saved_under_other_options_is_measured_again(tmp_path: Path) -> None:
    _saved(tmp_path, bench_decode.Case("bf16", True), {1: 4.0})
    same = {"bf16": _setup("bf16")}
    other = {"bf16": _setup("bf16", "attention-backend=fa3")}
    assert list(bench_decode.load_cases(tmp_path / "cases", same)) == ["bf16-fse"]
    assert bench_decode.load_cases(tmp_path / "cases", other) == {}


def _variant_options(*argv: str) -> dict[str, bench_decode.FormatOptions]:
    parser = argparse.ArgumentParser()
    bench_decode.add_checkpoint_arguments(parser)
    parser.add_argument("--variant", dest="variants", action="append", default=[])
    args = parser.parse_args(list(argv))
    return bench_decode.variant_options(parser, args, bench_decode.format_options(parser, args))


def test_a_variant_is_its_formats_options_with_its_items_on_top() -> None:
    options = _variant_options("--formats", "bf16,ct-mxfp4", "--variant", "compile=bf16:enable-torch-compile=true",
                               "--variant", "compile=bf16:torch-compile-max-bs=8", "--variant", "tri=ct-mxfp4:attention-backend=fa3")  # fmt: skip
    assert set(options) == {"bf16:compile", "ct-mxfp4:tri"}
    compiled = options["bf16:compile"].server_cli
    assert "--enable-torch-compile" in compiled and compiled[compiled.index("--torch-compile-max-bs") + 1] == "8"
    assert "--mem-fraction-static" in compiled  # the format's own options stay
    ct = options["ct-mxfp4:tri"].server_cli
    assert ct[ct.index("--moe-runner-backend") + 1] == "marlin" and ct[ct.index("--attention-backend") + 1] == "fa3"
    labels = [(c.label, c.slug) for c in bench_decode.cases(["bf16", "ct-mxfp4"], False, [("bf16", "compile"), ("ct-mxfp4", "tri")])]
    assert ("bf16 fse (compile)", "bf16-fse-compile") in labels and ("ct-mxfp4 (tri)", "ct-mxfp4-tri") in labels
    assert len(labels) == 5


def test_an_environment_variant_runs_one_batch_with_its_variable_and_is_saved_apart(tmp_path: Path, monkeypatch) -> None:
    """`--variant gemv=bf16:env.SGLANG_EXT_SMALL_M_GEMV=1`: same SGLang options as BF16, the variable in one_batch's
    environment, and a saved BF16 case does not stand in for it."""
    options = _variant_options("--formats", "bf16", "--variant", "gemv=bf16:env.SGLANG_EXT_SMALL_M_GEMV=1")
    gemv = options["bf16:gemv"]
    plain = bench_decode.recipe_options("bf16", gemv.sets[:-1])  # the format's own options
    assert gemv.server_cli == plain.server_cli and gemv.env == {"SGLANG_EXT_SMALL_M_GEMV": "1"} and plain.env == {}
    assert gemv.setup() != plain.setup() and plain.setup() == {"server_args": plain.server_cli}

    seen = {}

    def one_batch(command, env, stdout, stderr, timeout):
        seen.update(env)
        result = Path(command[command.index("--result-filename") + 1])
        result.write_text(json.dumps({"batch_size": 1, "latency": 0.1}) + "\n")
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(bench_decode.subprocess, "run", one_batch)
    case = bench_decode.Case("bf16", True, variant="gemv")
    assert bench_decode.run_case(tmp_path / "ckpt", gemv, case, [1], tmp_path)[1]["latency"] == 0.1
    assert seen["SGLANG_EXT_SMALL_M_GEMV"] == "1" and "SGLANG_EXTERNAL_MODEL_PACKAGE" in seen


@pytest.mark.parametrize(
    ("item", "says"),
    [
        ("compile:bf16:enable-torch-compile=true", "expected NAME=FORMAT:KEY=VALUE"),
        ("Compile=bf16:enable-torch-compile=true", "expected NAME=FORMAT:KEY=VALUE"),
        ("compile=modelopt-nvfp4:enable-torch-compile=true", "is not among --formats"),
        ("fa=bf16:attention-backend=flash", "--variant fa=bf16:attention-backend=flash: "),
    ],
)
def test_a_bad_variant_is_a_usage_error_naming_it(item: str, says: str, capsys) -> None:
    with pytest.raises(SystemExit):
        _variant_options("--formats", "bf16", "--variant", item)
    assert says in capsys.readouterr().err


def test_a_variant_is_compared_with_its_formats_own_options_from_the_same_run(tmp_path: Path, monkeypatch) -> None:
    Case = bench_decode.Case
    _saved(tmp_path, Case("bf16", True), {1: 4.0, 8: 5.0})
    _saved(tmp_path, Case("bf16", False), {1: 4.4, 8: 6.0})
    _saved(tmp_path, Case("bf16", True, variant="compile"), {1: 3.2, 8: 5.0}, setup=_setup("bf16", "enable-torch-compile=true"))
    _saved(tmp_path, Case("bf16", True, variant="fi"), {1: 1.0}, setup=_setup("bf16", "attention-backend=fa3"))  # not asked for
    monkeypatch.setattr(sys, "argv", ["bench_decode", "--formats", "bf16", "--variant", "compile=bf16:enable-torch-compile=true",
                                      "--out", str(tmp_path)])  # fmt: skip
    assert bench_decode.main() == 0  # every case saved: nothing to run, no GPU needed
    by = {(r["case"], r["batch"]): r for r in json.loads((tmp_path / "bench_decode.json").read_text())["rows"]}
    assert by[("bf16 fse (compile)", 1)]["vs_default"] == pytest.approx(4.0 / 3.2)
    assert by[("bf16 fse (compile)", 1)]["vs_bf16"] == pytest.approx(4.0 / 3.2)  # against BF16 as served, not itself
    assert by[("bf16 fse (compile)", 8)]["fse_vs_unfused"] is None  # no unfused compile case ran
    assert by[("bf16 fse", 1)]["vs_default"] is None
    assert ("bf16 fse (fi)", 1) not in by


def test_a_cases_bound_counts_the_deltanet_state_in_the_dtype_its_server_keeps(tmp_path: Path) -> None:
    """floor_ms: the weights; bound_ms adds the cache, the recurrent state in float32 unless the case's SGLang
    options say --mamba-ssm-dtype (a --variant may)."""
    checkpoint = write_fixture(tmp_path / "bf16", "bf16")
    config = json.loads((checkpoint / "config.json").read_text())
    case, measured = bench_decode.Case("bf16", True), {8: {"median_decode_latency": 0.004}}
    [wide] = bench_decode.case_rows(case, measured, checkpoint, 4, 1.0, [])
    [narrow] = bench_decode.case_rows(case, measured, checkpoint, 4, 1.0, ["--mamba-ssm-dtype", "bfloat16"])
    step = byte_bound.step_bytes(read_checkpoint(checkpoint), config, 8, byte_bound.ONE_BATCH_CONTEXT, fse=True)
    assert wide.floor_ms == narrow.floor_ms == pytest.approx(step.weights / 1e9 * 1e3)  # at 1 GB/s
    assert wide.bound_ms == pytest.approx(step.total / 1e9 * 1e3)
    text = config["text_config"]
    recurrent = text["linear_num_value_heads"] * text["linear_value_head_dim"] * text["linear_key_head_dim"]
    halved = 2 * recurrent * 2 * text["layer_types"].count("linear_attention") * 8  # read and written, 2 bytes less each
    assert wide.bound_ms - narrow.bound_ms == pytest.approx(halved / 1e9 * 1e3)

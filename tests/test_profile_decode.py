"""eval.perf.profile_decode's reading of a torch-profiler trace: per-step busy time counts overlapping kernels
once, kernels land in the group of what they compute, and the trace name is the one one_batch writes."""

import gzip
import json
from pathlib import Path

import pytest

from eval.perf import bench_decode, byte_bound, profile_decode
from sglang_ext.fixtures.model_config import model_config


def _kernel(name: str, ts: float, dur: float, stream: int = 7, correlation: int = 0, grid: list[int] | None = None) -> dict:
    return {"ph": "X", "cat": "kernel", "name": name, "ts": ts, "dur": dur,
            "args": {"stream": stream, "correlation": correlation, "grid": grid or [1, 1, 1]}}  # fmt: skip


def _graph_launch(ts: float, correlation: int) -> dict:
    return {"ph": "X", "cat": "cuda_runtime", "name": "cudaGraphLaunch", "ts": ts, "dur": 5.0,
            "args": {"correlation": correlation}}  # fmt: skip


def test_trace_summary_per_step(tmp_path: Path) -> None:
    events = [  # step 1: a graph replay (correlation 1) then a kernel outside it; step 2: a shorter replay
        _graph_launch(0.0, 1),
        _kernel("fused_moe_kernel", 10.0, 30.0, correlation=1),
        _kernel("fused_recurrent_gated_delta_rule_fwd_kernel", 40.0, 10.0, correlation=1),
        _kernel("_fwd_kernel_stage1", 50.0, 5.0, correlation=1),
        _kernel("nvjet_tst_64x8_64x16_4x1_v_bz_TNT", 30.0, 20.0, stream=9, correlation=1),  # 2nd stream, overlapping
        _kernel("triton_poi_fused_add_0", 100.0, 10.0, correlation=2),
        _graph_launch(200.0, 3),
        _kernel("fused_moe_kernel", 210.0, 30.0, correlation=3),
    ]
    path = tmp_path / "t.trace.json.gz"
    with gzip.open(path, "wt") as handle:
        json.dump({"traceEvents": events}, handle)
    p = profile_decode.summarise_trace(path, bench_decode.Case("bf16", True), 1, steps=2)
    assert p.kernels_per_step == 3.0
    assert p.busy_us == pytest.approx((45 + 10 + 30) / 2)  # 10-55, 100-110, 210-240
    assert p.span_us == pytest.approx((240 - 10) / 2)
    assert p.graph_us == pytest.approx((45 + 30) / 2)  # median of the replays' spans: 10-55 and 210-240
    assert p.groups_us == {"moe": 30.0, "gemm": 10.0, "deltanet": 5.0, "other": 5.0, "attention": 2.5}
    assert p.top_kernels[0] == ("fused_moe_kernel", 30.0)


def test_launches_are_told_apart_by_grid_and_stream(tmp_path: Path) -> None:
    """One kernel name at two weight shapes (grids) and on two streams: three launch rows, heaviest first,
    with launches and µs per step."""
    events = [
        _kernel("_gemv_kernel", 0.0, 8.0, grid=[128, 1, 1]),  # e.g. o_proj's N / BLOCK_N column blocks
        _kernel("_gemv_kernel", 10.0, 4.0, grid=[4, 32, 1], stream=9),  # in_proj_ba, split K, 2nd stream
        _kernel("_gemv_kernel", 20.0, 8.0, grid=[128, 1, 1]),
        _kernel("_gemv_kernel", 30.0, 3.0, grid=[4, 32, 1]),
    ]
    path = tmp_path / "t.trace.json"
    path.write_text(json.dumps({"traceEvents": events}))
    p = profile_decode.summarise_trace(path, bench_decode.Case("bf16", True), 1, steps=2)
    assert p.top_kernels == [("_gemv_kernel", 11.5)]
    assert p.top_launches == [("_gemv_kernel", "128x1x1", 7, 1.0, 8.0), ("_gemv_kernel", "4x32x1", 9, 0.5, 2.0),
                              ("_gemv_kernel", "4x32x1", 7, 0.5, 1.5)]  # fmt: skip


def test_no_kernels_names_the_trace(tmp_path: Path) -> None:
    path = tmp_path / "cpu-only.json"
    path.write_text(json.dumps({"traceEvents": [{"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 0, "dur": 1}]}))
    with pytest.raises(ValueError, match="cpu-only.json: no GPU kernel"):
        profile_decode.summarise_trace(path, bench_decode.Case("bf16", True), 1, steps=1)


def test_groups_of_sglang_kernel_names() -> None:
    assert profile_decode.group_of("moe_wna16_marlin_gemm_kernel<...>") == "moe"
    assert profile_decode.group_of("moe_align_block_size_kernel") == "moe"
    assert profile_decode.group_of("_causal_conv1d_update_kernel") == "deltanet"
    assert profile_decode.group_of("_decode_att_m_fwd_kernel") == "attention"
    assert profile_decode.group_of("void cutlass::Kernel2<cutlass_80_wmma_tensorop_bf16>") == "gemm"
    assert profile_decode.group_of("_gemv_kernel") == "gemm"  # sglang_ext.kernels.gemv (SGLANG_EXT_SMALL_M_GEMV=1)
    assert profile_decode.group_of("_gemma_rmsnorm_kernel") == "norm"
    assert profile_decode.group_of("triton_poi_fused_mul_sigmoid_0") == "other"


def test_trace_name_is_one_batchs() -> None:
    case = bench_decode.Case("quark-w8a8-int8", False)
    name = profile_decode.trace_file(Path("t"), case, 64).name
    assert name == "quark-w8a8-int8-no-fse_batch64_input256_output16_decode.trace.json.gz"


def test_saved_traces_are_summarised_without_a_gpu(tmp_path: Path, monkeypatch, capsys) -> None:
    traces = tmp_path / "traces" / "qwen3.5-35b-a3b-20L"
    traces.mkdir(parents=True)
    setup = {"server_args": bench_decode.recipe_options("bf16", []).server_cli, "steps": 1}
    for case, events in ((bench_decode.Case("bf16", True), [_kernel("fused_moe_kernel", 0.0, 25.0)]),
                         (bench_decode.Case("bf16", False), [])):  # fmt: skip
        with gzip.open(profile_decode.trace_file(traces, case, 1), "wt") as handle:
            json.dump({"traceEvents": events}, handle)
        profile_decode.setup_file(traces, case).write_text(json.dumps(setup))
    argv = ["profile_decode", "--formats", "bf16", "--batch-sizes", "1", "--steps", "1", "--out", str(tmp_path)]
    monkeypatch.setattr("sys.argv", argv)
    assert profile_decode.main() == 1  # the no-fse trace holds no kernel
    report = json.loads((tmp_path / "profile_decode.json").read_text())
    assert [p["groups_us"] for p in report["profiles"]] == [{"moe": 25.0}]
    assert list(report["profiles"][0]["group_gbs"]) == ["moe"]  # the groups that ran a kernel
    assert "no GPU kernel" in report["failures"]["bf16 no-fse"]
    assert "fused_moe_kernel" in capsys.readouterr().out
    # traces of one step do not stand for five: they are retaken, which needs the GPU
    assert not profile_decode.traced(traces, bench_decode.Case("bf16", True), [1], {**setup, "steps": 5})
    monkeypatch.setattr("sys.argv", [*argv[:-4], "--steps", "5", "--out", str(tmp_path)])
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert profile_decode.main() == 1
    assert "bf16 fse, bf16 no-fse: not measured: measuring needs a CUDA GPU" in capsys.readouterr().err
    report = json.loads((tmp_path / "profile_decode.json").read_text())
    assert report["profiles"] == [] and set(report["failures"]) == {"bf16 fse", "bf16 no-fse"}


def test_graph_time_ratios_against_bf16_and_unfused() -> None:
    def profile(fmt: str, fse: bool | None, graph_us: float | None) -> profile_decode.StepProfile:
        return profile_decode.StepProfile(f"{fmt} {fse}", fmt, fse, 1, 5, 500, 1.0, 2.0, graph_us)

    bf16, int8, int8_unfused, no_graph = profile_decode.with_graph_ratios(
        [profile("bf16", True, 2200.0), profile("quark-w8a8-int8", True, 2000.0),
         profile("quark-w8a8-int8", False, 2100.0), profile("modelopt-nvfp4", None, None)])  # fmt: skip
    assert bf16.graph_vs_bf16 == 1.0 and int8.graph_vs_bf16 == pytest.approx(1.1)
    assert int8.graph_fse_vs_unfused == pytest.approx(1.05) and int8_unfused.graph_fse_vs_unfused is None
    assert no_graph.graph_vs_bf16 is None  # a run without CUDA graphs has no replay to compare


def test_each_group_is_rated_by_the_bytes_it_must_read() -> None:
    """MoE by the experts a batch touches (the shared expert among them where fused), GEMMs by the other
    weights, DeltaNet by its state, attention by the KV: bytes / kernel time, GB/s."""
    groups = {"moe": 20.0, "gemm": 40.0, "deltanet": 5.0, "attention": 4.0, "other": 9.0}
    options = {"quark-w8a8-int8": bench_decode.recipe_options("quark-w8a8-int8", [])}
    fused, unfused = profile_decode.with_group_bandwidth(
        [profile_decode.StepProfile("int8 fse", "quark-w8a8-int8", True, 8, 5, 500, 1.0, 2.0, 80.0, dict(groups)),
         profile_decode.StepProfile("int8 no-fse", "quark-w8a8-int8", False, 8, 5, 500, 1.0, 2.0, 80.0, {"moe": 20.0})],
        "tiny", 4, options)  # fmt: skip
    config = model_config("tiny", 4, bench_decode.vocab_size("tiny"))
    step = byte_bound.step_bytes(byte_bound.planned_entries("quark-w8a8-int8", config), config, 8,
                                 profile_decode.PROFILE_CONTEXT, fse=True)  # fmt: skip
    assert fused.group_gbs == pytest.approx({"moe": step.experts / 20e3, "gemm": step.dense / 40e3,
                                             "deltanet": step.deltanet_state / 5e3, "attention": step.kv / 4e3})  # fmt: skip
    assert unfused.group_gbs["moe"] < fused.group_gbs["moe"]  # the shared expert's bytes are the GEMMs' there
    assert list(unfused.group_gbs) == ["moe"]
    narrow = {"quark-w8a8-int8": bench_decode.recipe_options("quark-w8a8-int8", ["mamba-ssm-dtype=bfloat16"])}
    [half] = profile_decode.with_group_bandwidth(
        [profile_decode.StepProfile("int8 fse", "quark-w8a8-int8", True, 8, 5, 500, 1.0, 2.0, 80.0, dict(groups))],
        "tiny", 4, narrow)  # fmt: skip
    assert half.group_gbs["moe"] == fused.group_gbs["moe"]
    assert half.group_gbs["deltanet"] < 0.6 * fused.group_gbs["deltanet"]  # a bfloat16 state, a little conv state


@pytest.mark.parametrize("module", [profile_decode, bench_decode])
def test_a_bad_batch_size_is_a_usage_error(module, monkeypatch, capsys, tmp_path: Path) -> None:
    monkeypatch.setattr("sys.argv", ["prog", "--batch-sizes", "1,x", "--out", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_:
        module.main()
    assert exit_.value.code == 2
    assert "--batch-sizes: expected positive whole numbers separated by commas, e.g. 4,16; got '1,x'" in capsys.readouterr().err

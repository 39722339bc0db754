"""eval.perf.bench_gemv on a CPU: the layer shapes it measures, and a clear refusal to time anything."""

import json

import pytest
import torch

from eval.perf import bench_gemv
from eval.perf.bench_gemv import DenseLinear, dense_linears
from sglang_ext.kernels import gemv_wins
from sglang_ext.kernels.gemv import K_MULTIPLE, MAX_M


def test_35b_dense_linears_as_sglang_serves_them() -> None:
    """Qwen3.5-35B-A3B: 30 DeltaNet and 10 attention layers, each with a router and an unfused shared expert."""
    assert dense_linears("qwen3.5-35b-a3b") == [
        DenseLinear(1, 2048, ("mlp.shared_expert_gate",), 40, int8=False),
        DenseLinear(64, 2048, ("linear_attn.in_proj_ba",), 30, int8=True),  # b and a, 32 value heads each
        DenseLinear(256, 2048, ("mlp.gate",), 40, int8=False),
        DenseLinear(1024, 2048, ("mlp.shared_expert.gate_up_proj",), 40, int8=True),
        DenseLinear(2048, 512, ("mlp.shared_expert.down_proj",), 40, int8=True),
        DenseLinear(2048, 4096, ("linear_attn.out_proj", "self_attn.o_proj"), 40, int8=True),
        DenseLinear(9216, 2048, ("self_attn.qkv_proj",), 10, int8=True),  # gated q (2 x 16 x 256) + k + v
        DenseLinear(12288, 2048, ("linear_attn.in_proj_qkvz",), 30, int8=True),
        DenseLinear(248320, 2048, ("lm_head",), 1, int8=False),
    ]


def test_397b_per_gpu_shapes() -> None:
    shapes = {(linear.n, linear.k, linear.int8): linear.per_step for linear in dense_linears("qwen3.5-397b-a17b-tp4")}
    assert shapes == {
        (1, 4096, False): 60, (32, 4096, True): 45, (512, 4096, False): 60, (512, 4096, True): 60,
        (4096, 256, True): 60, (4096, 2048, True): 60, (4608, 4096, True): 15, (5120, 4096, True): 45,
        (62080, 4096, False): 1,
    }  # fmt: skip


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: it would benchmark")
def test_needs_a_gpu(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_gemv.main([]) == 1
    assert "needs a CUDA GPU" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--m", "0"], ["--m", "9"], ["--shapes", "qwen9"]])
def test_bad_arguments_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        bench_gemv.main(argv)
    assert exited.value.code == 2 and "error:" in capsys.readouterr().err


def test_rows_are_kept_as_they_are_measured(tmp_path, monkeypatch) -> None:
    """A run cut short (a call's time limit, a crash) keeps every row measured before it."""
    calls = []

    def timed(n: int, k: int, m: int) -> tuple[float, float, int]:
        calls.append((n, k, m))
        if len(calls) == 3:
            raise KeyboardInterrupt  # the limit strikes mid-run
        return 10.0, 5.0, n * k * 2

    monkeypatch.setattr(bench_gemv.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(bench_gemv.torch.cuda, "get_device_name", lambda: "a GPU")
    monkeypatch.setattr(bench_gemv.torch.cuda, "get_device_capability", lambda: (9, 0))
    monkeypatch.setattr(bench_gemv, "hbm_bandwidth_gbs", lambda: 4000.0)
    monkeypatch.setattr(bench_gemv, "bench_bf16", timed)
    monkeypatch.setattr(bench_gemv, "bench_int8", lambda n, k, m: {"int8": timed(n, k, m), "int8+quant": timed(n, k, m)})
    with pytest.raises(KeyboardInterrupt):
        bench_gemv.main(["--shapes", "qwen3.5-35b-a3b", "--m", "1", "--out", str(tmp_path)])
    kept = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert [(row["n"], row["k"], row["m"], row["speedup"]) for row in kept] == [(n, k, m, 2.0) for n, k, m in calls[:2]]


def _row(n: int, k: int, dtype: str, m: int, speedup: float, shape: str = "qwen3.5-35b-a3b") -> bench_gemv.Row:
    return bench_gemv.Row(shape, "x", n, k, dtype, m, 1, speedup, 1.0, speedup, 0.0, 0.0, 0.0)


def test_wins_keep_only_points_the_gemv_won_everywhere_and_other_gpus_entries(tmp_path) -> None:
    wins = tmp_path / "gemv_wins.json"
    wins.write_text(json.dumps({"NVIDIA H100 80GB HBM3": {"measured": "before", "bf16": {"64x2048": [1]}, "int8": {}}}))
    rows = [_row(2048, 4096, "bf16", 1, 1.20), _row(2048, 4096, "bf16", 8, 1.01),  # within noise: SGLang's
            _row(4096, 2048, "bf16", 1, 1.10), _row(4096, 2048, "bf16", 1, 0.90, "qwen3.5-397b-a17b-tp4"),  # lost once
            _row(64, 2048, "int8", 2, 1.9), _row(64, 2048, "int8+quant", 2, 2.4), _row(64, 2048, "int8+quant", 4, 1.0)]  # fmt: skip
    entry = gemv_wins.record("NVIDIA H200", rows, "test", wins)
    assert entry == {"measured": "test", "bf16": {"2048x4096": [1], "4096x2048": []}, "int8": {"64x2048": [2]},
                     "int8+quant": {"64x2048": [2]}}  # fmt: skip
    assert gemv_wins.load("NVIDIA H200", wins) == {("bf16", 2048, 4096, 1), ("int8", 64, 2048, 2), ("int8+quant", 64, 2048, 2)}
    assert gemv_wins.load("NVIDIA H100 80GB HBM3", wins) == {("bf16", 64, 2048, 1)}
    assert gemv_wins.load("NVIDIA B200", wins) is None  # never measured: SGLang's path (=all: by M alone)


def test_the_shipped_wins_are_points_the_kernel_takes() -> None:
    table = json.loads(gemv_wins.WINS_FILE.read_text())
    for gpu in table:
        for dtype, n, k, m in gemv_wins.load(gpu):
            assert dtype in gemv_wins.DTYPES and n > 0 and k % K_MULTIPLE == 0 and 1 <= m <= MAX_M, (gpu, dtype, n, k, m)

"""The speed sweep: bench_serving commands, reading its JSONL, tables, ratios and plots, without a GPU."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("matplotlib", reason="matplotlib is not installed (pip install -e '.[eval]')")

from eval import speed  # noqa: E402
from eval.__main__ import main, parser  # noqa: E402
from eval.server import resolve  # noqa: E402
from launch.errors import LaunchError  # noqa: E402
from openai_double import OpenAIDouble  # noqa: E402


def bench_record(concurrency: int, request_throughput: float, output_throughput: float) -> dict:
    """A record as sglang.benchmark.serving (0.5.17) appends it to --output-file (its `result` dict)."""
    return {
        "tag": None, "backend": "sglang-oai", "dataset_name": "random", "request_rate": float("inf"),
        "max_concurrency": concurrency, "sharegpt_output_len": None, "random_input_len": 4000,
        "random_output_len": 200, "random_range_ratio": 1.0, "server_info": None, "duration": 12.5,
        "completed": 3 * concurrency, "total_input_tokens": 12000 * concurrency,
        "total_input_text_tokens": 12000 * concurrency, "total_input_vision_tokens": 0,
        "total_output_tokens": 600 * concurrency, "total_output_tokens_retokenized": 600 * concurrency,
        "request_throughput": request_throughput, "input_throughput": 4000 * request_throughput,
        "output_throughput": output_throughput, "total_throughput": 4200 * request_throughput,
        "mean_e2e_latency_ms": 900.0, "median_e2e_latency_ms": 880.0, "std_e2e_latency_ms": 40.0,
        "p90_e2e_latency_ms": 950.0, "p95_e2e_latency_ms": 990.0, "p99_e2e_latency_ms": 1010.0,
        "mean_ttft_ms": 120.0, "median_ttft_ms": 115.0, "std_ttft_ms": 9.0, "p90_ttft_ms": 130.0,
        "p95_ttft_ms": 133.0, "p99_ttft_ms": 140.0, "mean_tpot_ms": 4.1, "median_tpot_ms": 4.0,
        "std_tpot_ms": 0.2, "p90_tpot_ms": 4.3, "p95_tpot_ms": 4.4, "p99_tpot_ms": 4.6, "mean_itl_ms": 4.1,
        "median_itl_ms": 4.0, "std_itl_ms": 0.3, "p90_itl_ms": 4.4, "p95_itl_ms": 4.6, "p99_itl_ms": 5.0,
        "concurrency": concurrency * 0.97, "accept_length": None, "max_output_tokens_per_s": output_throughput * 1.2,
        "max_concurrent_requests": concurrency,
    }  # fmt: skip


def test_reads_the_last_record_of_a_bench_serving_file(tmp_path: Path):
    path = tmp_path / "run.jsonl"
    path.write_text(json.dumps(bench_record(4, 1.0, 100.0)) + "\n" + json.dumps(bench_record(4, 2.5, 480.0)) + "\n")
    point = speed.read_point(path, "quantized", "in4000-out200", 4)
    assert (point.request_throughput, point.output_throughput, point.completed) == (2.5, 480.0, 12)
    assert point.median_ttft_ms == 115.0


def test_command_follows_card_003(tmp_path: Path):
    args = parser().parse_args(["speed", "--recipe", "tiny-bf16", "--tokenizer", "/models/tok", "--concurrency", "1,8"])
    target = resolve("tiny-bf16", "http://127.0.0.1:30000")
    command = speed.bench_command(target, speed.SHAPES[0], 8, tmp_path / "o.jsonl", args)
    assert command[1:3] == ["-m", "sglang.benchmark.serving"]
    opts = dict(zip(command[3::2], command[4::2]))
    assert opts["--backend"] == "sglang-oai" and opts["--dataset-name"] == "random"
    assert (opts["--random-input-len"], opts["--random-output-len"]) == ("4000", "200")
    assert (opts["--num-prompts"], opts["--max-concurrency"]) == ("24", "8")
    assert opts["--random-range-ratio"] == "1.0" and opts["--tokenizer"] == "/models/tok"
    # --model only feeds bench_serving's chat-template check: the local tokenizer, not a hub lookup
    assert opts["--model"] == "/models/tok" and opts["--served-model-name"] == "tiny-qwen3.5-moe"
    assert opts["--base-url"] == "http://127.0.0.1:30000"
    assert "--disable-ignore-eos" not in command  # EOS ignored: every request decodes its full length
    assert command[-1] == "--flush-cache"  # the warmup's prompt is the first measured one: no prefix-cache hit
    assert [(s.input_len, s.output_len) for s in speed.SHAPES] == [(4000, 200), (512, 128)]


def test_sweep_against_a_baseline_writes_table_json_and_plots(tmp_path: Path, capsys):
    quantized_speedup = {1: 1.5, 2: 1.25}
    commands = []

    def fake_bench(command: list[str], timeout_s: float) -> int:
        commands.append(command)
        opts = dict(zip(command[3::2], command[4::2]))
        c = int(opts["--max-concurrency"])
        factor = quantized_speedup[c] if "quantized" in opts["--output-file"] else 1.0
        Path(opts["--output-file"]).write_text(json.dumps(bench_record(c, factor * c, factor * 100 * c)) + "\n")
        return 0

    with OpenAIDouble(lambda m: "") as quantized, OpenAIDouble(lambda m: "", model="Qwen3.6-35B-A3B") as baseline:
        args = parser().parse_args([
            "speed", "--base-url", quantized.base_url, "--model", "tiny-qwen3.5-moe", "--tokenizer", "/tok",
            "--baseline-base-url", baseline.base_url, "--baseline-model", "Qwen3.6-35B-A3B",
            "--concurrency", "1,2", "--output", str(tmp_path),
        ])  # fmt: skip
        assert speed.main(args, resolve(None, args.base_url, args.model), runner=fake_bench) == 0
    assert len(commands) == 2 * 2 * 2  # shapes x concurrencies x servers, interleaved per point
    output_files = [command[command.index("--output-file") + 1] for command in commands]
    assert "quantized" in output_files[0] and "baseline" in output_files[1]
    doc = json.loads((tmp_path / "speed.json").read_text())
    ratios = {(r["shape"], r["concurrency"]): r for r in doc["ratios"]}
    assert ratios[("in4000-out200", 1)]["output_throughput"] == pytest.approx(1.5)
    assert ratios[("in512-out128", 2)]["request_throughput"] == pytest.approx(1.25)
    assert len(doc["points"]) == 8
    for shape in speed.SHAPES:
        assert (tmp_path / f"{shape.name}.png").read_bytes()[:4] == b"\x89PNG"
    out = capsys.readouterr().out
    assert "1.500" in out and "1.250" in out


def test_prompt_shapes_other_than_the_cards_are_swept_as_given(tmp_path: Path):
    commands = []

    def fake_bench(command: list[str], timeout_s: float) -> int:
        commands.append(dict(zip(command[3::2], command[4::2])))
        return _write_record(command)

    with OpenAIDouble(lambda m: "") as double:
        args = parser().parse_args(["speed", "--base-url", double.base_url, "--model", "tiny-qwen3.5-moe", "--tokenizer", "/tok",
                                    "--shapes", "in128-out1024", "--concurrency", "1", "--output", str(tmp_path)])  # fmt: skip
        assert speed.main(args, resolve(None, args.base_url, args.model), runner=fake_bench) == 0
    assert [(o["--random-input-len"], o["--random-output-len"]) for o in commands] == [("128", "1024")]
    doc = json.loads((tmp_path / "speed.json").read_text())
    assert doc["shapes"] == [{"name": "in128-out1024", "input_len": 128, "output_len": 1024}]
    assert [p["shape"] for p in doc["points"]] == ["in128-out1024"]


@pytest.mark.parametrize("shapes", ["in128", "in0-out10", "", "in4000-out200,x"])
def test_a_malformed_prompt_shape_is_a_usage_error(shapes: str, capsys):
    with pytest.raises(SystemExit):
        parser().parse_args(["speed", "--base-url", "http://h:1", "--shapes", shapes])
    assert "expected" in capsys.readouterr().err


def test_command_without_a_local_tokenizer_names_the_served_model(tmp_path: Path):
    args = parser().parse_args(["speed", "--base-url", "http://h:1", "--model", "Qwen/Qwen3.5-35B-A3B"])
    command = speed.bench_command(resolve(None, args.base_url, args.model), speed.SHAPES[1], 2, tmp_path / "o.jsonl", args)
    opts = dict(zip(command[3::2], command[4::2]))
    assert opts["--model"] == opts["--served-model-name"] == "Qwen/Qwen3.5-35B-A3B" and "--tokenizer" not in opts


def _failed_sweep(tmp_path: Path, fake_bench, concurrency: str = "1,2,4") -> tuple[str, dict]:
    """Run a sweep that must fail; returns the error's text and speed.json."""
    with OpenAIDouble(lambda m: "") as double:
        args = parser().parse_args(["speed", "--base-url", double.base_url, "--model", "tiny-qwen3.5-moe", "--tokenizer", "/tok",
                                    "--concurrency", concurrency, "--timeout", "7", "--output", str(tmp_path)])  # fmt: skip
        with pytest.raises(LaunchError) as error:
            speed.main(args, resolve(None, args.base_url, args.model), runner=fake_bench)
    return str(error.value), json.loads((tmp_path / "speed.json").read_text())


def _write_record(command: list[str], completed_of_sent: float = 1.0) -> int:
    opts = dict(zip(command[3::2], command[4::2]))
    c = int(opts["--max-concurrency"])
    record = bench_record(c, float(c), 100.0 * c) | {"completed": int(3 * c * completed_of_sent)}
    Path(opts["--output-file"]).write_text(json.dumps(record) + "\n")
    return 0


def test_a_point_past_its_deadline_is_reported_and_ends_the_sweep(tmp_path: Path):
    deadlines = []

    def fake_bench(command: list[str], timeout_s: float) -> int:
        deadlines.append(timeout_s)
        if command[command.index("--max-concurrency") + 1] == "2":
            raise subprocess.TimeoutExpired(command, timeout_s)
        return _write_record(command)

    error, doc = _failed_sweep(tmp_path, fake_bench)
    assert deadlines == [7.0, 7.0]  # c=4 and the second shape are not attempted
    assert [(p["shape"], p["concurrency"]) for p in doc["points"]] == [("in4000-out200", 1)]
    assert doc["failure"] == {"server": "quantized", "shape": "in4000-out200", "concurrency": 2,
                              "reason": "did not finish within 7 s (--timeout); stopped"}  # fmt: skip
    assert (tmp_path / "in4000-out200.png").exists() and not (tmp_path / "in512-out128.png").exists()
    assert "in4000-out200 c=2" in error and "did not finish within 7 s" in error


def test_a_point_with_failed_requests_is_not_counted(tmp_path: Path):
    def fake_bench(command: list[str], timeout_s: float) -> int:
        return _write_record(command, completed_of_sent=0.5 if "in512" in command[command.index("--output-file") + 1] else 1.0)

    error, doc = _failed_sweep(tmp_path, fake_bench, concurrency="2")
    assert [p["shape"] for p in doc["points"]] == ["in4000-out200"]
    assert doc["failure"]["reason"] == "3 of 6 requests completed" and "in512-out128 c=2: 3 of 6 requests" in error


def test_a_failing_bench_serving_is_reported_with_its_exit_code(tmp_path: Path):
    error, doc = _failed_sweep(tmp_path, lambda command, timeout_s: 2)
    assert doc["points"] == [] and doc["failure"]["reason"] == "bench_serving exited with code 2" and "code 2" in error
    assert not list(tmp_path.glob("*.png"))


def test_points_run_as_processes_that_the_deadline_stops(tmp_path: Path, monkeypatch):
    (tmp_path / "point_stub.py").write_text(
        "import sys, time\nif sys.argv[1] == 'sleep':\n    time.sleep(60)\nsys.exit(int(sys.argv[2]))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert speed.run_module([sys.executable, "-m", "point_stub", "exit", "3"], 60) == 3
    started = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        speed.run_module([sys.executable, "-m", "point_stub", "sleep", "0"], 1.0)
    assert time.monotonic() - started < 10


def test_the_same_recipe_on_two_ports_gets_two_labels():
    targets = {"quantized": resolve("tiny-bf16", "http://127.0.0.1:30000"), "baseline": resolve("tiny-bf16", "http://127.0.0.1:30001")}
    assert speed.server_labels(targets) == {"quantized": "tiny-bf16 @ 127.0.0.1:30000", "baseline": "tiny-bf16 @ 127.0.0.1:30001"}
    targets["baseline"] = resolve("qwen3.6-35b-bf16-h100", "http://127.0.0.1:30001")
    assert speed.server_labels(targets) == {"quantized": "tiny-bf16", "baseline": "qwen3.6-35b-bf16-h100"}


def test_same_server_as_baseline_is_refused(tmp_path: Path, capsys):
    rc = main(["speed", "--recipe", "tiny-bf16", "--baseline-recipe", "tiny-bf16", "--output", str(tmp_path)])
    assert rc == 1 and "another port" in capsys.readouterr().err


def test_concurrency_list_is_validated(capsys):
    with pytest.raises(SystemExit):
        parser().parse_args(["speed", "--recipe", "tiny-bf16", "--concurrency", "1,x"])
    assert "comma-separated integers" in capsys.readouterr().err


def test_speed_runs_without_lm_eval():
    """The GPU host carries SGLang but not necessarily lm-eval; `python -m eval speed` (what eval.perf.bench_serving
    runs there) must not import it."""
    blocked = "import sys; sys.modules['lm_eval'] = None; sys.argv = ['eval', 'speed', '--help']; import runpy; "
    done = subprocess.run([sys.executable, "-c", blocked + "runpy.run_module('eval', run_name='__main__')"],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "--concurrency" in done.stdout

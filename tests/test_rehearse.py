"""What `python -m tests.gpu.rehearse` asks the launcher for, checked without a GPU."""

import base64
import io
import json
import subprocess

import pytest

from launch.recipe import load_recipe
from tests.gpu import rehearse


def test_a_hopper_native_recipe_gets_the_bundles_vit_attention_and_a_stand_in_keeps_its_own(tmp_path):
    native = rehearse.launcher_sets("qwen3.6-35b-int8-h100", tmp_path)
    assert rehearse.BUNDLE_VIT_ATTENTION in native
    stand_in = rehearse.launcher_sets("qwen3.5-397b-nvfp4-rtxpro6000-mtp", tmp_path, ("mem-fraction-static=0.35",))
    assert rehearse.BUNDLE_VIT_ATTENTION not in stand_in and stand_in[-1] == "mem-fraction-static=0.35"
    served = load_recipe("qwen3.6-35b-int8-h100", native, stand_in="sm90").recipe
    assert (served.server_args["mm-attention-backend"], served.server_args["tp-size"], served.model.path) == (
        "triton_attn", 1, str(tmp_path))  # fmt: skip


def test_a_given_checkpoint_is_served_at_its_own_depth_and_a_missing_one_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"text_config": {"num_hidden_layers": 8}}))
    assert rehearse.checkpoint_layers(tmp_path) == 8
    with pytest.raises(SystemExit) as exit_:
        rehearse.main(["--checkpoint", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2 and "no config.json there" in capsys.readouterr().err


def test_the_image_chat_carries_conformances_picture_as_the_openai_sdk_sends_it() -> None:
    from openai.types.chat import ChatCompletionUserMessageParam
    from PIL import Image

    message = rehearse.image_message()
    assert set(ChatCompletionUserMessageParam.__annotations__) >= set(message) and message["role"] == "user"
    url = message["content"][0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    picture = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert picture.size == (256, 256) and message["content"][1] == {"type": "text", "text": "Describe this image in one sentence."}


@pytest.mark.parametrize("recipe, shape", [
    ("qwen3.5-397b-nvfp4-rtxpro6000-mtp", "qwen3.5-397b-a17b-tp4"),  # TP4: one GPU holds a quarter
    ("qwen3.5-397b-mxfp4-fse-mi355x", "qwen3.5-397b-a17b-tp4"),
    ("qwen3.6-35b-int8-h100", "qwen3.5-35b-a3b"),  # one GPU holds the whole 35B
    ("qwen3.5-35b-mxfp4-mi355x", "qwen3.5-35b-a3b"),
])  # fmt: skip
def test_each_recipe_is_rehearsed_at_what_one_of_its_gpus_holds(recipe: str, shape: str) -> None:
    assert rehearse.one_gpu_shape(recipe) == shape


def test_a_format_the_fixtures_cannot_write_is_a_row_that_says_so(tmp_path) -> None:
    row = rehearse.rehearse("qwen3.5-397b-fp8-mi355x", 4, tmp_path, 0.8)
    assert row["error"].startswith("sglang_ext.fixtures writes no fp8 checkpoint") and "--checkpoint" in row["error"]
    assert not (tmp_path / "checkpoints").exists()  # nothing written, no server started


def test_a_speed_sweep_is_eval_speeds_points_per_row_and_a_failed_one_says_where_to_look(tmp_path, monkeypatch, capsys) -> None:
    runs = []

    def eval_speed(command, env):
        runs.append(command)
        opts = dict(zip(command[4::2], command[5::2]))
        points = [{"shape": shape, "concurrency": c, "request_throughput": 0.5 * c, "output_throughput": 100.0 * c,
                   "median_ttft_ms": 250.0, "median_tpot_ms": 9.5} for shape in opts["--shapes"].split(",")
                  for c in map(int, opts["--concurrency"].split(","))]  # fmt: skip
        (tmp_path / "sweep" / "speed.json").write_text(json.dumps({"points": points, "failure": None}))
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(rehearse.subprocess, "run", eval_speed)
    points = rehearse.speed_sweep("http://127.0.0.1:1", "m", tmp_path / "ckpt", [1, 8], tmp_path / "sweep")
    assert runs[0][1:4] == ["-m", "eval", "speed"] and "--concurrency" in runs[0] and "1,8" in runs[0]
    assert [(p["shape"], p["concurrency"], p["output_tok_s"]) for p in points] == [
        ("in4000-out200", 1, 100.0), ("in4000-out200", 8, 800.0), ("in512-out128", 1, 100.0), ("in512-out128", 8, 800.0)]
    rehearse.print_table([{"recipe": "qwen3.6-35b-int8-h100", "layers": 40, "speed": points}])
    assert "Speed sweep" in capsys.readouterr().out

    monkeypatch.setattr(rehearse.subprocess, "run", lambda command, env: subprocess.CompletedProcess(command, 3))
    assert rehearse.speed_sweep("http://127.0.0.1:1", "m", tmp_path, [1], tmp_path / "failed") == (
        f"eval speed exit 3; see {tmp_path / 'failed'}")


def test_a_saved_row_is_rerun_only_when_it_lacks_what_this_run_asks() -> None:
    row = {"recipe": "r", "layers": 40, "ready_s": 90, "speed": [{"concurrency": 1}, {"concurrency": 8}]}
    assert rehearse.covers(row, "r", 40, [1, 8], restart=False)
    assert not rehearse.covers(row, "r", 40, [1, 64], restart=False)  # a concurrency not swept yet
    assert not rehearse.covers(row, "r", 40, [], restart=True)  # not restarted yet
    assert not rehearse.covers(row, "r", 16, [], restart=False) and not rehearse.covers({**row, "error": "x"}, "r", 40, [], False)


def test_compiled_kernels_are_counted_in_the_caches_a_first_start_fills(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton"))
    monkeypatch.setenv("TVM_FFI_CACHE_DIR", str(tmp_path / "tvm-ffi"))
    assert rehearse.compiled_kernels_on_host() == "0/0"  # a fresh host: neither cache exists
    for name in ("abc/kernel.cubin", "abc/kernel.json", "def/kernel.cubin"):
        (tmp_path / "triton" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "triton" / name).write_bytes(b"x")
    (tmp_path / "tvm-ffi").mkdir()
    (tmp_path / "tvm-ffi" / "marlin.so").write_bytes(b"x")
    assert rehearse.compiled_kernels_on_host() == "3/1"
    # --fresh-kernel-cache: an empty Triton cache of the recipe's own; SGLang's JIT modules stay shared
    empty = rehearse.fresh_cache(tmp_path / "triton")
    assert rehearse.compiled_kernels_on_host({"TRITON_CACHE_DIR": str(empty)}) == "0/1"
    assert rehearse.covers({"recipe": "r", "layers": 4, "cached_kernels": "0/1"}, "r", 4, [], False, fresh=True)
    assert not rehearse.covers({"recipe": "r", "layers": 4, "cached_kernels": "3/1"}, "r", 4, [], False, fresh=True)

"""`sglang_ext.quantize` on tiny BF16 checkpoints in both expert layouts: every output tensor byte-equal to what
the producing tool's own export writes from the same BF16 weight, configs field by field against the tools'
config classes, the inspector's verdict, the fixture writers' bytes, a kill -9 then rerun, peak RSS against
the layer count, and the one-line errors.

The vendors' whole-model flows do not run here: Quark's ModelQuantizer, ModelOpt's mtq.quantize and
llm-compressor's oneshot quantize nn.Linear modules, and transformers holds Qwen3.5-MoE's routed experts as
fused 3-D parameters (no Linear per expert), so they leave the experts BF16; ModelOpt's NVFP4 export needs
CUDA; llm-compressor 0.14 pins transformers 5.17 and compressed-tensors 0.19 against this project's 5.12.1 /
0.20.0. So each tool's per-tensor export path (the code those flows end in, `vendor_exports`) is applied to
every Linear the format quantizes.
"""

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tests.conftest import bf16_source
from sglang_ext import inspect
from sglang_ext.fixtures.tensors import checkpoint_specs, unfuse_experts
from sglang_ext.formats.check import check_checkpoint
from sglang_ext.formats.encoders import FORMATS, Options
from sglang_ext.formats.safetensors_headers import INDEX_FILE
from sglang_ext.quantize import SCALE_RULES, quantize
from sglang_ext.quantize.__main__ import main as cli_main
from sglang_ext.quantize.manifest import PROGRESS_FILE, RECORD_FILE
from sglang_ext.formats.shards import file_sha256
from sglang_ext.shared_expert_fusion import decide_shared_expert_fusion
from quantized_checkpoints import INPUT_AMAX, LAYOUTS, OPTIONS, SHARD, load_dir, quantized, sources  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parent.parent

# What each card quantizes, said independently of the encoders' patterns.
ROUTED = re.compile(r"^model\.language_model\.layers\.\d+\.mlp\.experts\.\d+\.")
SHARED = re.compile(r"^model\.language_model\.layers\.\d+\.mlp\.shared_expert\.")
MIXER = re.compile(r"^model\.language_model\.layers\.\d+\.(self_attn\.[qkvo]_proj|linear_attn\.(in_proj_\w+|out_proj))$")
CARDS = {
    "quark-mxfp4-fse": lambda m: bool(ROUTED.match(m) or SHARED.match(m)),
    "modelopt-nvfp4": lambda m: bool(ROUTED.match(m)),
    "ct-mxfp4": lambda m: bool(ROUTED.match(m)),
    "quark-w8a8-int8": lambda m: bool(ROUTED.match(m) or SHARED.match(m) or MIXER.match(m)),
}


def config_of(path: Path) -> dict:
    return json.loads((path / "config.json").read_text())


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


def vendor_tensors(fmt: str, module: str, bf16: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What the producing tool's export writes for one Linear, from its BF16 weight."""
    from vendor_exports import ct_export, modelopt_export, modelopt_input_scale, quark_export, quark_weight_export

    weight = bf16[f"{module}.weight"]
    if fmt == "quark-mxfp4-fse":
        packed, scale = quark_export(weight)
        return {"weight": packed, "weight_scale": scale}
    if fmt == "ct-mxfp4":
        return ct_export(weight)
    if fmt == "quark-w8a8-int8":
        codes, scale = quark_weight_export(weight)
        return {"weight": codes, "weight_scale": scale}
    from modelopt.torch.quantization.qtensor import NVFP4QTensor

    shared_global = None
    if module.endswith(("gate_proj", "up_proj")):  # ModelOpt's preprocess_linear_fusion: one amax for w1 and w3
        mlp = module.rsplit(".", 1)[0]
        shared_global = NVFP4QTensor.get_weights_scaling_factor_2(torch.cat([bf16[f"{mlp}.gate_proj.weight"], bf16[f"{mlp}.up_proj.weight"]]))
    exported = modelopt_export(weight, shared_global)
    return {**exported._asdict(), "weight_scale_2": exported.weight_scale_2.float(), "input_scale": modelopt_input_scale(INPUT_AMAX)}


def linear_modules(config: dict, mtp_fused: bool) -> list[str]:
    return [spec.module for spec in checkpoint_specs(config, False, mtp_fused) if spec.linear]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_tensor_is_what_the_vendor_tool_writes(sources, quantized, fmt: str, layout: str) -> None:
    out = quantized(fmt, layout)
    bf16 = unfuse_experts(load_dir(sources[layout]))
    ours = load_dir(out)
    config = config_of(out)
    mtp_fused = layout == "per-expert"  # write_per_expert fuses the MTP experts
    linears = linear_modules(config, mtp_fused)
    quantized_modules = [module for module in linears if CARDS[fmt](module)]
    checked = set()
    for module in quantized_modules:
        theirs = vendor_tensors(fmt, module, bf16)
        for suffix, tensor in theirs.items():
            assert same_bytes(ours[f"{module}.{suffix}"], tensor.contiguous()), f"{module}.{suffix}"
            checked.add(f"{module}.{suffix}")
    for name, tensor in ours.items():
        if name not in checked:  # everything else is the BF16 (or F32) source tensor, unchanged
            assert same_bytes(tensor, bf16[name]), name
    assert len(checked) >= 2 * len(quantized_modules) > 0

    block = config["quantization_config"]
    exclude = {"quark-mxfp4-fse": "exclude", "quark-w8a8-int8": "exclude", "ct-mxfp4": "ignore", "modelopt-nvfp4": "ignore"}[fmt]
    assert block[exclude] == [module for module in linears if not CARDS[fmt](module)]
    assert {k: v for k, v in config.items() if k != "quantization_config"} == config_of(sources[layout])


def test_configs_are_the_tools_own_field_by_field(quantized) -> None:
    from vendor_exports import assert_ct_block, assert_quark_block, quark_int8_config, quark_mxfp4_config

    assert_quark_block(config_of(quantized("quark-mxfp4-fse", "fused"))["quantization_config"], quark_mxfp4_config())
    int8 = config_of(quantized("quark-w8a8-int8", "fused"))["quantization_config"]
    assert int8["global_quant_config"] == quark_int8_config()["global_quant_config"]
    assert_ct_block(config_of(quantized("ct-mxfp4", "fused"))["quantization_config"])
    nvfp4 = quantized("modelopt-nvfp4", "fused")
    legacy = json.loads((nvfp4 / "hf_quant_config.json").read_text())["quantization"]
    block = config_of(nvfp4)["quantization_config"]
    assert (block["quant_algo"], block["group_size"], block["ignore"]) == (legacy["quant_algo"], legacy["group_size"], legacy["exclude_modules"])


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_the_inspector_passes_it(quantized, fmt: str, layout: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = quantized(fmt, layout)
    assert inspect.main([str(out)]) == 0, capsys.readouterr().out
    report = check_checkpoint(out)
    assert report.ok and report.tensors == len(load_dir(out))
    assert len(list(out.glob("*.safetensors"))) > 1  # sharded, with an index the inspector followed
    assert report.mtp_experts.startswith("fused" if layout == "per-expert" else "per expert")


FIXTURE_OPTIONS = {"ct-mxfp4": Options(scales=SCALE_RULES["mse"]), "modelopt-nvfp4": Options(input_amax=INPUT_AMAX)}


@pytest.mark.parametrize("fmt", FORMATS)
def test_with_the_cards_options_it_writes_the_fixtures_bytes(fixtures_root: Path, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / fmt
    quantize(bf16_source(fixtures_root, fmt), out, fmt, FIXTURE_OPTIONS.get(fmt, Options()), show_progress=False)
    ours, fixture = load_dir(out), load_file(str(fixtures_root / fmt / "model.safetensors"))
    assert ours.keys() == fixture.keys()
    assert all(same_bytes(ours[name], fixture[name]) for name in fixture)
    assert config_of(out) == config_of(fixtures_root / fmt)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "preprocessor_config.json",
                 "video_preprocessor_config.json", "generation_config.json", "hf_quant_config.json"):  # fmt: skip
        if (fixtures_root / fmt / name).exists():
            assert (out / name).read_bytes() == (fixtures_root / fmt / name).read_bytes(), name
    assert not (out / "sglang_ext_fixture.json").exists()  # the BF16 fixture's stamp would mislabel it


def test_mse_scales_move_block_exponents_by_one_where_they_help(quantized, sources, tmp_path: Path) -> None:
    out = quantize(sources["fused"], tmp_path / "mse", "quark-mxfp4-fse", Options(scales=SCALE_RULES["mse"]), show_progress=False)
    assert out.job.options["scales"] == "mse"
    mse, default = load_dir(tmp_path / "mse"), load_dir(quantized("quark-mxfp4-fse", "fused"))
    name = "model.language_model.layers.0.mlp.experts.0.gate_proj.weight_scale"
    moved = mse[name].int() - default[name].int()
    assert moved.abs().max() == 1 and (moved != 0).any()


def test_the_record_says_what_was_done_from_what(quantized, sources) -> None:
    out = quantized("ct-mxfp4", "per-expert")
    record = json.loads((out / RECORD_FILE).read_text())
    assert record["job"]["format"] == "ct-mxfp4" and record["job"]["source"] == str(sources["per-expert"])
    assert record["job"]["options"] == {"scales": "max", "fuse_shared_expert": False, "input_amax": None}
    assert [f["name"] for f in record["job"]["source_files"]] == [p.name for p in sorted(sources["per-expert"].glob("*.safetensors"))]
    shards = sorted(out.glob("*.safetensors"))
    assert [(s["name"], s["size"], s["sha256"]) for s in record["shards"]] == [(p.name, p.stat().st_size, file_sha256(p)) for p in shards]
    assert record["peak_rss_bytes"] > 0 and record["tensors"] == len(load_dir(out))
    assert not (out / PROGRESS_FILE).exists()


@pytest.mark.parametrize("fmt", ["ct-mxfp4", "modelopt-nvfp4"])
def test_fuse_shared_expert_quantizes_it_so_sglang_ext_fuses_it(sources, quantized, tmp_path: Path, fmt: str) -> None:
    options = Options(fuse_shared_expert=True, input_amax=OPTIONS.get(fmt, Options()).input_amax)
    quantize(sources["fused"], tmp_path / fmt, fmt, options, show_progress=False)
    fused, card = config_of(tmp_path / fmt), config_of(quantized(fmt, "fused"))
    assert not any(".shared_expert." in m and not m.startswith("mtp.") for m in fused["quantization_config"]["ignore"])
    assert check_checkpoint(tmp_path / fmt).ok
    assert decide_shared_expert_fusion(fused, fused["quantization_config"]).fuse
    assert not decide_shared_expert_fusion(card, card["quantization_config"]).fuse


# --- a crash, then the same command again -------------------------------------------------------------

# Runs the CLI and SIGKILLs the process in the middle of its second shard: after the first shard is recorded
# as finished, on the fifth BF16 tensor read.
KILL_IN_SECOND_SHARD = """
import os, signal, sys
import sglang_ext.quantize as q
from sglang_ext.quantize.__main__ import main
from sglang_ext.quantize.source import Source
calls, reads = [0], [0]
write_atomic, tensor = q.write_atomic, Source.tensor
def counting_write_atomic(path, model):
    write_atomic(path, model)
    calls[0] += 1
def killing_tensor(self, name):
    if calls[0] >= 2:
        reads[0] += 1
        if reads[0] == 5:
            os.kill(os.getpid(), signal.SIGKILL)
    return tensor(self, name)
q.write_atomic, Source.tensor = counting_write_atomic, killing_tensor
sys.exit(main(sys.argv[1:]))
"""


def cli(*args: str, script: str | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", script, *args] if script else [sys.executable, "-m", "sglang_ext.quantize", *args]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def test_kill_9_mid_run_then_rerun_gives_the_same_bytes(sources, quantized, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = (str(sources["per-expert"]), str(out), "--to", "quark-w8a8-int8", "--max-shard-size", str(SHARD), "--no-progress")
    killed = cli(*args, script=KILL_IN_SECOND_SHARD)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    progress = json.loads((out / PROGRESS_FILE).read_text())
    assert len(progress["shards"]) == 1
    first_shard = out / progress["shards"][0]["name"]
    assert list(out.glob("*.safetensors.partial")), "the kill should land inside the second shard"
    first = first_shard.stat()

    rerun = cli(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert first_shard.stat().st_mtime_ns == first.st_mtime_ns  # kept, not rewritten
    clean = quantized("quark-w8a8-int8", "per-expert")
    written = sorted(p.name for p in out.iterdir() if p.name != RECORD_FILE)
    assert written == sorted(p.name for p in clean.iterdir() if p.name != RECORD_FILE)
    for name in written:
        assert (out / name).read_bytes() == (clean / name).read_bytes(), name


# --- memory -----------------------------------------------------------------------------------------------

# The 35B-A3B's per-layer shapes (hidden 2048, experts of 512, 16 attention / 32 DeltaNet value heads of
# dim 256 / 128) with 16 routed experts instead of 256 and a 16k vocabulary: ~170 MB of BF16 per decoder
# layer, quick on two cores; the largest tensor (a fused gate_up_proj) is 64 MB.
RSS_EXPERTS = 16
RSS_SLACK = 64 * 2**20


def test_peak_rss_does_not_grow_with_the_number_of_layers(tmp_path: Path) -> None:
    from eval.perf.bench_quantize import write_source

    peaks, sizes = {}, {}
    for layers in (2, 8):
        source = write_source(tmp_path / f"bf16-{layers}", layers, RSS_EXPERTS)
        run = cli(str(source), str(tmp_path / f"out-{layers}"), "--to", "quark-mxfp4-fse", "--no-progress")
        assert run.returncode == 0, run.stderr
        record = json.loads((tmp_path / f"out-{layers}" / RECORD_FILE).read_text())
        peaks[layers], sizes[layers] = record["peak_rss_bytes"], record["source_bytes"]
        shutil.rmtree(source)
    print(f"peak RSS: 2 layers {peaks[2] / 2**20:.0f} MiB ({sizes[2] / 1e9:.2f} GB BF16), "
          f"8 layers {peaks[8] / 2**20:.0f} MiB ({sizes[8] / 1e9:.2f} GB BF16)")  # fmt: skip
    assert sizes[8] - sizes[2] > 900e6  # the model grew by ~1 GB ...
    assert peaks[8] < peaks[2] + RSS_SLACK  # ... the memory did not


# --- errors: what is wrong, then the fix ----------------------------------------------------------------------------------------


def error_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The CLI's error line, after checking it ends with exit 1, that line and a fix line, and no traceback."""
    assert cli_main(argv) == 1
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert "Traceback" not in err and len(lines) == 2 and lines[0].startswith("error: ") and lines[1].startswith("fix: "), err
    return lines[0]


def test_an_unknown_architecture_is_refused(sources, tmp_path: Path, capsys) -> None:
    source = shutil.copytree(sources["fused"], tmp_path / "llama")
    config = config_of(source)
    (source / "config.json").write_text(json.dumps({**config, "architectures": ["LlamaForCausalLM"]}))
    assert "architecture ['LlamaForCausalLM'] is not supported" in error_line([str(source), str(tmp_path / "o"), "--to", "ct-mxfp4"], capsys)
    assert not (tmp_path / "o").exists()


def test_a_missing_tensor_is_named(sources, tmp_path: Path, capsys) -> None:
    source = shutil.copytree(sources["per-expert"], tmp_path / "src")
    victim = "model.language_model.layers.2.mlp.experts.5.up_proj.weight"
    shard = source / json.loads((source / INDEX_FILE).read_text())["weight_map"].pop(victim)
    with safe_open(str(shard), "pt") as f:
        kept = {name: f.get_tensor(name) for name in f.keys() if name != victim}
    save_file(kept, str(shard))
    index = json.loads((source / INDEX_FILE).read_text())
    del index["weight_map"][victim]
    (source / INDEX_FILE).write_text(json.dumps(index))
    assert f"{victim}: missing" in error_line([str(source), str(tmp_path / "o"), "--to", "quark-mxfp4-fse"], capsys)


def test_an_out_that_is_not_empty_or_another_job_is_refused(sources, quantized, tmp_path: Path, capsys) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    argv = [str(sources["fused"]), str(tmp_path / "busy"), "--to", "ct-mxfp4"]
    assert "is not empty and holds no run of this tool" in error_line(argv, capsys)
    other = shutil.copytree(quantized("ct-mxfp4", "fused"), tmp_path / "other")
    assert "holds a run of another job (format, max_shard_bytes differ)" in error_line([str(sources["fused"]), str(other), "--to", "quark-mxfp4-fse"], capsys)


def test_a_finished_run_rerun_rewrites_nothing(sources, quantized, tmp_path: Path, capsys) -> None:
    out = shutil.copytree(quantized("ct-mxfp4", "fused"), tmp_path / "done")
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.safetensors")}
    assert cli_main([str(sources["fused"]), str(out), "--to", "ct-mxfp4", "--max-shard-size", str(SHARD), "--no-progress"]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.safetensors")} == stamps


def test_a_full_disk_is_one_line_and_leaves_no_partial_shard(sources, tmp_path: Path, capsys, monkeypatch) -> None:
    import sglang_ext.quantize as q
    from sglang_ext.formats import shards

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(q.shutil, "disk_usage", lambda path: usage._replace(free=1000))
    argv = [str(sources["fused"]), str(tmp_path / "o"), "--to", "quark-w8a8-int8", "--no-progress"]
    assert "0.0 GB free, the output needs" in error_line(argv, capsys)
    monkeypatch.undo()

    fsync = os.fsync

    def full_for_shards(fd: int) -> None:  # the disk fills while a shard is written
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".safetensors.partial"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        fsync(fd)

    monkeypatch.setattr(shards.os, "fsync", full_for_shards)
    assert "no space left on device" in error_line(argv, capsys)
    assert not list((tmp_path / "o").glob("*.safetensors*"))
    assert (tmp_path / "o" / PROGRESS_FILE).exists()  # a rerun resumes


@pytest.mark.parametrize(("argv", "message"), [
    (["--to", "modelopt-nvfp4"], "modelopt-nvfp4 stores a static activation scale"),
    (["--to", "quark-w8a8-int8", "--scales", "mse"], "quark-w8a8-int8 has no E8M0 block exponents"),
    (["--to", "ct-mxfp4", "--input-amax", "8"], "ct-mxfp4 stores no static activation scale"),
])  # fmt: skip
def test_options_a_format_cannot_honour_are_refused(sources, tmp_path: Path, capsys, argv: list[str], message: str) -> None:
    assert message in error_line([str(sources["fused"]), str(tmp_path / "o"), *argv], capsys)
    assert not (tmp_path / "o").exists()

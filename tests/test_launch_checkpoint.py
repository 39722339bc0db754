"""The launcher checks a local checkpoint against the recipe before it starts SGLang."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from launch.checkpoint import check_local_checkpoint
from launch.errors import LaunchError
from tests.conftest import REPO


def launch_dry_run_command(path: Path) -> list[str]:
    return [sys.executable, "-m", "launch", "tiny-bf16", "--dry-run", "--set", f"model.path={path}",
            "--set", "model.fixture=null"]  # fmt: skip


def launch_dry_run(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(launch_dry_run_command(path), cwd=REPO, capture_output=True, text=True, timeout=300)


def test_a_matching_checkpoint_is_reported_and_served(fixtures_root: Path) -> None:
    done = launch_dry_run(fixtures_root / "bf16")
    assert done.returncode == 0, done.stderr
    assert f"checkpoint: {fixtures_root / 'bf16'} matches its config.json (bf16)" in done.stderr
    assert f"--model-path {fixtures_root / 'bf16'}" in done.stdout


def test_a_checkpoint_of_another_format_is_refused(fixtures_root: Path) -> None:
    done = launch_dry_run(fixtures_root / "ct-mxfp4")
    assert done.returncode == 1
    assert f"recipe tiny-bf16 says checkpoint_format bf16, but {fixtures_root / 'ct-mxfp4'} is ct-mxfp4" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_broken_checkpoint_lists_its_problems(fixtures_root: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in (fixtures_root / "bf16").iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    config = json.loads((broken / "config.json").read_text())
    config["text_config"]["num_experts"] = 16
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(LaunchError) as error:
        check_local_checkpoint(str(broken), "bf16", "tiny-bf16")
    message = str(error.value)
    assert "does not match its config.json" in message and "... and" in message
    assert f"python -m sglang_ext.inspect {broken}` prints the full report" in message


def test_fse_recipe_refuses_a_checkpoint_without_a_quantized_shared_expert(fixtures_root: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    for path in (fixtures_root / "quark-mxfp4-fse").iterdir():
        (plain / path.name).write_bytes(path.read_bytes())
    # Unquantized shared expert = the config excludes it and the weights are BF16: rewrite both.
    from safetensors.torch import load_file, save_file

    bf16 = load_file(str(fixtures_root / "bf16" / "model.safetensors"))
    tensors = {k: v for k, v in load_file(str(plain / "model.safetensors")).items() if ".mlp.shared_expert." not in k or k.startswith("mtp.")}
    shared = {k: v for k, v in bf16.items() if ".mlp.shared_expert." in k and not k.startswith("mtp.")}
    save_file({**tensors, **shared}, str(plain / "model.safetensors"))
    config = json.loads((plain / "config.json").read_text())
    config["quantization_config"]["exclude"] += [k.removesuffix(".weight") for k in shared]
    (plain / "config.json").write_text(json.dumps(config))

    with pytest.raises(LaunchError, match="keeps the shared expert unquantized"):
        check_local_checkpoint(str(plain), "quark-mxfp4-fse", "qwen3.5-397b-mxfp4-fse-mi355x")


def test_hub_ids_and_fp8_are_not_checked(fixtures_root: Path) -> None:
    assert check_local_checkpoint("amd/Qwen3.5-397B-A17B-MoE-MXFP4", "quark-mxfp4-fse", "x") is False
    assert check_local_checkpoint(str(fixtures_root / "bf16"), "fp8", "x") is False
    assert check_local_checkpoint(str(fixtures_root / "bf16"), "bf16", "x") is True


NEXTN = ("--set", "speculative-algorithm=NEXTN", "--set", "speculative-num-steps=3", "--set", "speculative-eagle-topk=1",
         "--set", "speculative-num-draft-tokens=4")  # fmt: skip


def _without_mtp_weights(source: Path, target: Path) -> Path:
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, target)
    tensors = load_file(str(target / "model.safetensors"))
    save_file({n: t for n, t in tensors.items() if not n.startswith("mtp.")}, str(target / "model.safetensors"))
    return target


def test_a_checkpoint_without_mtp_weights_serves_plain_but_not_with_nextn(fixtures_root: Path, tmp_path: Path) -> None:
    stripped = _without_mtp_weights(fixtures_root / "bf16", tmp_path / "no-mtp")
    assert launch_dry_run(stripped).returncode == 0
    done = subprocess.run([*launch_dry_run_command(stripped), *NEXTN], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    message = " ".join(done.stderr.split())
    assert "decodes speculatively with the checkpoint's own MTP layer as the draft" in message
    assert "lacks its MTP weights" in message and "e.g. mtp.fc.weight" in message

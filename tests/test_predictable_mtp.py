"""Predictable MTP heads (`--mtp-acceptance P`): the head agrees with the greedy main model at a share P of
positions, measured in float32 with transformers' main model and a reference MTP forward
(`sglang_ext.formats.mtp_reference`), in every format and in both MTP expert layouts."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sglang_ext.fixtures import FORMATS, write_fixture
from sglang_ext.fixtures.__main__ import main as fixtures_cli
from sglang_ext.fixtures.predictable_mtp import EMBED, LM_HEAD
from sglang_ext.formats.check import check_checkpoint
from sglang_ext.formats.mtp_reference import greedy_agreement

# 16 greedy paths of 64 tokens. Prompts are GSM8K questions cut at different lengths, so each path starts
# from another last token (a chat template would end them all alike, and all paths would be one).
PROMPTS, NEW_TOKENS = 16, 64
BAND = 0.05  # |achieved - P|: ~4 standard deviations of a share over 1,024 positions


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    from transformers import AutoTokenizer

    from sglang_ext.fixtures.model_config import TOKENIZER_DIR

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    questions = [json.loads(line)["question"] for line in (Path(__file__).parent / "data" / "gsm8k" / "train.jsonl").open()]
    cut = [tokenizer(question)["input_ids"][: 8 + i] for i, question in enumerate(questions[:PROMPTS])]
    assert len({ids[-1] for ids in cut}) > PROMPTS // 2  # mostly different starting tokens
    return cut


def _agreement(checkpoint: Path, prompts: list[list[int]]) -> float:
    agree, compared = greedy_agreement(checkpoint, prompts, NEW_TOKENS)
    assert compared == PROMPTS * NEW_TOKENS
    return agree / compared


@pytest.mark.parametrize("acceptance", [0.5, 0.8, 0.95])
def test_bf16_head_agrees_at_the_asked_share(tmp_path: Path, prompts, acceptance: float) -> None:
    achieved = _agreement(write_fixture(tmp_path / "c", "bf16", mtp_acceptance=acceptance), prompts)
    print(f"P={acceptance}: achieved {achieved:.3f}")
    assert abs(achieved - acceptance) <= BAND


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f != "bf16"])
def test_every_format_keeps_the_share(tmp_path: Path, prompts, fmt: str) -> None:
    achieved = _agreement(write_fixture(tmp_path / "c", fmt, mtp_acceptance=0.8), prompts)
    print(f"{fmt}: achieved {achieved:.3f}")
    assert abs(achieved - 0.8) <= BAND


def test_the_random_head_never_agrees(tmp_path: Path, prompts) -> None:
    assert _agreement(write_fixture(tmp_path / "c", "bf16"), prompts) < 0.05


def test_only_embeddings_lm_head_and_the_mtp_head_change(tmp_path: Path) -> None:
    plain = load_file(str(write_fixture(tmp_path / "plain", "quark-w8a8-int8") / "model.safetensors"))
    planted = load_file(str(write_fixture(tmp_path / "planted", "quark-w8a8-int8", mtp_acceptance=0.8) / "model.safetensors"))
    assert plain.keys() == planted.keys()
    changed = {name for name in plain if not torch.equal(plain[name], planted[name])}
    assert {EMBED, LM_HEAD, "mtp.fc.weight"} <= changed
    assert all(name in (EMBED, LM_HEAD) or name.startswith("mtp.") for name in changed), sorted(changed)


def test_fused_mtp_experts_are_the_same_head(tmp_path: Path, prompts) -> None:
    per_expert = write_fixture(tmp_path / "per", "bf16", mtp_acceptance=0.8)
    fused = write_fixture(tmp_path / "fused", "bf16", mtp_acceptance=0.8, mtp_fused_experts=True)
    names = load_file(str(fused / "model.safetensors")).keys()
    assert "mtp.layers.0.mlp.experts.gate_up_proj" in names and "mtp.layers.0.mlp.experts.0.gate_proj.weight" not in names
    assert check_checkpoint(fused).mtp_experts.startswith("fused 3-D") and check_checkpoint(fused).ok
    assert check_checkpoint(per_expert).mtp_experts.startswith("per expert")
    assert greedy_agreement(fused, prompts[:4], 16) == greedy_agreement(per_expert, prompts[:4], 16)


@pytest.mark.parametrize("fmt", ["ct-mxfp4", "modelopt-nvfp4"])
def test_quantized_checkpoints_keep_the_mtp_layout_asked_for(tmp_path: Path, fmt: str) -> None:
    report = check_checkpoint(write_fixture(tmp_path / "c", fmt, mtp_fused_experts=True))
    assert report.ok, report.problems[:3]
    assert report.mtp_experts.startswith("fused 3-D")


@pytest.mark.parametrize("given", ["1.5", "-0.1", "often"])
def test_a_share_outside_0_to_1_is_refused(tmp_path: Path, capsys, given: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        fixtures_cli([str(tmp_path / "c"), "--mtp-acceptance", given])
    assert exit_info.value.code == 2
    assert "--mtp-acceptance" in capsys.readouterr().err and not (tmp_path / "c").exists()

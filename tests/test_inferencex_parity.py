"""eval.inferencex_parity against the OpenAI test double: both command lines run, read the same questions,
and the comparison finds a difference where one exists. The real comparison runs on the GPU against SGLang."""

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install -e '.[eval]')")

from eval import inferencex_parity  # noqa: E402
from openai_double import OpenAIDouble  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
GSM8K = Path(__file__).resolve().parent / "data" / "gsm8k"


@pytest.fixture
def inferencex(tmp_path: Path) -> Path:
    """A stand-in InferenceX checkout: its GSM8K task (eval/tasks/gsm8k.yaml is that file) and a sitecustomize
    that only proves it was imported by the InferenceX run."""
    root = tmp_path / "InferenceX"
    (root / "utils" / "evals" / "patches").mkdir(parents=True)
    shutil.copyfile(REPO / "eval" / "tasks" / "gsm8k.yaml", root / "utils" / "evals" / "gsm8k.yaml")
    marker = tmp_path / "sitecustomize-ran"
    (root / "utils" / "evals" / "patches" / "lm_eval_sitecustomize.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    return root


def _argv(double: OpenAIDouble, inferencex: Path, out: Path) -> list[str]:
    return ["--base-url", double.base_url, "--model", double.model, "--inferencex", str(inferencex),
            "--data-dir", str(GSM8K), "--limit", "4", "--out", str(out), "--concurrency", "2"]  # fmt: skip


def test_the_same_server_gives_parity_and_both_command_lines_ask_alike(tmp_path: Path, inferencex: Path, capsys) -> None:
    with OpenAIDouble(lambda messages: f"It is {len(messages)}.\n#### {len(messages[-1]['content']) % 7}") as double:
        assert inferencex_parity.main(_argv(double, inferencex, tmp_path / "out")) == 0
    assert "PARITY" in capsys.readouterr().out and (tmp_path / "sitecustomize-ran").exists()
    report = json.loads((tmp_path / "out" / "parity.json").read_text())
    assert report["questions"] == 4 and report["identical"]
    ours, theirs = double.chat_bodies[:4], double.chat_bodies[4:]
    assert len(theirs) == 4
    # InferenceX leaves thinking to the template; ours asks for it explicitly (the template's default)
    assert {b["chat_template_kwargs"]["enable_thinking"] for b in ours} == {True} and not any("chat_template_kwargs" in b for b in theirs)
    key = lambda b: json.dumps(b["messages"])  # noqa: E731
    assert sorted(map(key, ours)) == sorted(map(key, theirs))
    assert {b["max_tokens"] for b in double.chat_bodies} == {inferencex_parity.inferencex_max_tokens(4608)} == {512}


def test_a_server_that_answers_differently_the_second_time_is_caught(tmp_path: Path, inferencex: Path, capsys) -> None:
    asked = []

    def drifting(messages):
        asked.append(1)
        return "#### 1" if len(asked) <= 4 else "#### 2"

    with OpenAIDouble(drifting) as double:
        assert inferencex_parity.main(_argv(double, inferencex, tmp_path / "out")) == 1
    report = json.loads((tmp_path / "out" / "parity.json").read_text())
    assert len(report["differ"]["strict-match"]) == 4 and "DIFFER" in capsys.readouterr().out


def test_missing_inferencex_files_are_named(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        inferencex_parity.main(["--base-url", "http://127.0.0.1:9", "--model", "m", "--inferencex", str(tmp_path),
                                "--data-dir", str(GSM8K)])  # fmt: skip
    assert "utils/evals/gsm8k.yaml" in capsys.readouterr().err

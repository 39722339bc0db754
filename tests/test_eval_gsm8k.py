"""GSM8K through lm-eval against the OpenAI test double: scorer parity, resume, failures, composition."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install -e '.[eval]')")

from eval import gsm8k, harness  # noqa: E402
from eval.__main__ import main  # noqa: E402
from eval.journal import Journal  # noqa: E402
from openai_double import Faults, OpenAIDouble  # noqa: E402

# The first GSM8K test questions and a train pool for the shots, carried here (tests/data/gsm8k/README.md).
GSM8K_DIR = Path(__file__).resolve().parent / "data" / "gsm8k"
LIMIT = 6
# Q0's gold is 18, Q1's is 3 (the first two GSM8K test questions). Every reply ends with a number so the
# flexible filter finds one; the strict filter needs the "#### N" line.
GOLD = {0: "18", 1: "3", 2: "70000", 3: "540", 4: "20", 5: "64"}


def _question_index(messages: list[dict]) -> int:
    """Which test question a request asks (its last user turn), by matching the test file's questions."""
    asked = messages[-1]["content"]
    for i, line in enumerate((GSM8K_DIR / "test.jsonl").read_text().splitlines()[:LIMIT]):
        if json.loads(line)["question"] in asked:
            return i
    raise AssertionError("the request asks no known question")


def canned(messages: list[dict]) -> str:
    """Strict and flexible both right for Q0, Q1; only flexible right for Q2, Q3 (no ####); both wrong
    for Q4; Q5 strict-right but a trailing number fools flexible-extract."""
    i = _question_index(messages)
    return {
        0: "Janet keeps 9 eggs, so 9 * 2.\n#### 18",
        1: "2 + 1\n#### 3",
        2: f"The profit is {GOLD[2]}",
        3: f"He runs {GOLD[3]}",
        4: "I think it is\n#### 21",
        5: "#### 64\nChecked with 2 methods",
    }[i]


def run(tmp_path: Path, base_url: str, *extra: str, output: str = "out") -> int:
    argv = ["gsm8k", "--recipe", "tiny-bf16", "--base-url", base_url, "--data-dir", str(GSM8K_DIR)]
    return main([*argv, "--limit", str(LIMIT), "--max-retries", "2", "--timeout", "5", "--output", str(tmp_path / output), *extra])


def results_of(tmp_path: Path, output: str = "out") -> dict:
    return json.loads((tmp_path / output / "results.json").read_text())


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, list[dict]]:
    """One uninterrupted run with the recipe's defaults: its results.json and the request bodies."""
    tmp_path = tmp_path_factory.mktemp("reference")
    with OpenAIDouble(canned) as double:
        assert run(tmp_path, double.base_url) == 0
    assert "| exact_match,strict-match | 50.0000 |" in (tmp_path / "out" / "summary.md").read_text()
    return results_of(tmp_path), double.chat_bodies


def test_scores_match_lm_eval_and_the_canned_answers(reference):
    doc, _ = reference
    metrics = doc["metrics"]
    # strict: Q0, Q1, Q5 right; flexible: Q0, Q1, Q2, Q3 right
    assert metrics["exact_match,strict-match"]["value"] == pytest.approx(100 * 3 / LIMIT)
    assert metrics["exact_match,flexible-extract"]["value"] == pytest.approx(100 * 4 / LIMIT)
    assert metrics["exact_match,strict-match"]["stderr"] > 0
    samples = sorted(doc["samples"], key=lambda s: s["doc_id"])
    assert [s["doc_id"] for s in samples] == list(range(LIMIT))
    for name, metric in (("strict-match", "exact_match,strict-match"), ("flexible-extract", "exact_match,flexible-extract")):
        share = 100 * sum(s["filters"][name]["correct"] for s in samples) / LIMIT
        assert share == pytest.approx(metrics[metric]["value"])  # per-sample verdicts add up to lm-eval's score
    assert samples[5]["filters"]["flexible-extract"]["extracted"] == "2"
    assert samples[4]["filters"]["strict-match"]["extracted"] == "21"
    assert samples[0]["response"]["content"].endswith("#### 18")
    assert samples[0]["target"].endswith("#### 18")
    assert samples[0]["messages"][-1]["role"] == "user"
    assert doc["verdict"]["status"] == "none"


def test_a_limited_run_against_a_card_says_how_many_questions_its_verdict_rests_on(tmp_path: Path):
    with OpenAIDouble(canned) as double:
        assert main(["gsm8k", "--recipe", "qwen3.6-35b-int8-h100", "--base-url", double.base_url, "--model", double.model,
                     "--data-dir", str(GSM8K_DIR), "--limit", str(LIMIT), "--output", str(tmp_path / "out")]) == 0  # fmt: skip
    verdict = results_of(tmp_path)["verdict"]
    assert verdict["questions"] == LIMIT and verdict["tolerance"] > 1.0
    assert f"on {LIMIT} of the source's 1319 questions" in verdict["text"] and "standard error" in verdict["text"]


def test_recipe_defaults_thinking_off(reference):
    _, bodies = reference
    assert {b["chat_template_kwargs"]["enable_thinking"] for b in bodies} == {False}
    assert {b["max_tokens"] for b in bodies} == {256}  # tiny-bf16's eval.max_tokens


def test_requests_follow_the_inferencex_recipe(tmp_path: Path):
    with OpenAIDouble(canned) as double:
        run(tmp_path, double.base_url, "--think", "--max-tokens", "77", "--concurrency", "3")
    body = double.chat_bodies[0]
    assert body["model"] == "tiny-qwen3.5-moe"
    assert body["temperature"] == 0 and body["top_p"] == 1 and body["max_tokens"] == 77
    assert body["chat_template_kwargs"] == {"enable_thinking": True}
    assert body["stop"] == ["</s>", "<|im_end|>"]
    # 5 shots as user/assistant turns, then the question
    assert [m["role"] for m in body["messages"]] == ["user", "assistant"] * 5 + ["user"]
    assert re.search(r"#### \d+$", body["messages"][1]["content"])
    assert body["messages"][-1]["content"].endswith(
        "\nEnd your response with the answer on the last line, formatted as: #### [number]\nAnswer:"
    )


def test_interrupted_run_resumes_with_only_the_missing_requests(tmp_path: Path, capsys, reference):
    answered = 2
    with OpenAIDouble(canned, faults=Faults(fail_after=answered)) as broken:
        assert run(tmp_path, broken.base_url, "--concurrency", "1") == 1
    err = capsys.readouterr().err
    assert "kept failing" in err and "HTTP 500" in err and f"--resume {tmp_path / 'out'}" in err
    assert "Traceback" not in err
    assert len(Journal(tmp_path / "out" / "responses.jsonl").answers) == answered

    with OpenAIDouble(canned) as healthy:
        assert main(["gsm8k", "--recipe", "tiny-bf16", "--base-url", healthy.base_url, "--data-dir", str(GSM8K_DIR),
                     "--limit", str(LIMIT), "--resume", str(tmp_path / "out")]) == 0  # fmt: skip
    assert len(healthy.chat_bodies) == LIMIT - answered
    asked_first = {json.dumps(b, sort_keys=True) for b in broken.chat_bodies[:answered]}
    assert not asked_first & {json.dumps(b, sort_keys=True) for b in healthy.chat_bodies}
    resumed, uninterrupted = results_of(tmp_path), reference[0]
    assert resumed["metrics"] == uninterrupted["metrics"]
    strip = lambda doc: sorted((s["doc_id"], json.dumps(s["filters"]), s["response"]["content"]) for s in doc["samples"])  # noqa: E731
    assert strip(resumed) == strip(uninterrupted)
    assert resumed["config"]["answers_reused_from_journal"] == answered


def test_transient_500s_are_retried(tmp_path: Path):
    with OpenAIDouble(canned, faults=Faults(fail_first=1)) as double:
        assert run(tmp_path, double.base_url, "--concurrency", "1") == 0
    assert len(double.chat_bodies) == LIMIT + 1
    assert results_of(tmp_path)["metrics"]["exact_match,strict-match"]["value"] == pytest.approx(50)


@pytest.mark.parametrize(
    ("faults", "message"),
    [
        (Faults(malformed=True), "not JSON"),
        (Faults(delay_s=3), "no answer within 1s"),
        (Faults(fail_after=0), "HTTP 500"),
    ],
)
def test_bad_servers_give_a_clear_error(tmp_path: Path, capsys, faults: Faults, message: str):
    with OpenAIDouble(canned, faults=faults) as double:
        rc = run(tmp_path, double.base_url, "--timeout", "1", "--limit", "1")
    err = capsys.readouterr().err
    assert rc == 1
    assert message in err and "Traceback" not in err
    assert len(double.chat_bodies) == 2  # --max-retries 2


@pytest.mark.parametrize("faults", [Faults(fail_after=1), Faults(die_after=1)], ids=["http-500", "killed"])
def test_a_server_dying_mid_run_is_one_error_and_one_fix(tmp_path: Path, faults: Faults):
    # A process of its own, as a user runs it: what lm-eval's leftover request tasks print at exit shows too.
    import subprocess
    import sys

    with OpenAIDouble(canned, faults=faults) as double:
        done = subprocess.run([sys.executable, "-m", "eval", "gsm8k", "--recipe", "tiny-bf16", "--base-url", double.base_url,
                               "--data-dir", str(GSM8K_DIR), "--limit", str(LIMIT), "--concurrency", str(LIMIT),
                               "--max-retries", "2", "--output", str(tmp_path / "out")],
                              cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True, timeout=300)  # fmt: skip
    lines = done.stderr.splitlines()
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "never retrieved" not in done.stderr, done.stderr[-3000:]
    assert done.stderr.count("error:") == 1 and done.stderr.count("fix:") == 1, done.stderr[-3000:]
    error = next(i for i, line in enumerate(lines) if "error:" in line)
    assert lines[error].startswith(f"error: requests to {double.base_url} kept failing (2 tries)"), lines[error]
    assert lines[error + 1] == f"  fix: 1 answers are kept in {tmp_path / 'out' / 'responses.jsonl'}; fix the server, " \
        f"then rerun with --resume {tmp_path / 'out'} to send only the rest"
    assert "Requesting API" not in "".join(lines[error:])  # no progress bar drawn after the error
    journal = (tmp_path / "out" / "responses.jsonl").read_text().splitlines()
    assert len(journal) == 1 and json.loads(journal[0])["response"]["choices"]


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--limit", "0", "--limit 0: input should be greater than or equal to 1"),
    ("--limit", "-5", "--limit -5: input should be greater than or equal to 1"),
    ("--concurrency", "0", "--concurrency 0: input should be greater than or equal to 1"),
    ("--max-tokens", "0", "--max-tokens 0: input should be greater than or equal to 1"),
    ("--max-retries", "0", "--max-retries 0: input should be greater than or equal to 1"),
    ("--timeout", "-1", "--timeout -1: input should be greater than 0"),
])  # fmt: skip
def test_numbers_out_of_range_are_a_usage_error_before_anything_is_sent_or_written(tmp_path: Path, capsys, flag, value, message):
    with OpenAIDouble(canned) as double:
        assert run(tmp_path, double.base_url, flag, value) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}\n  fix: ") and "Traceback" not in err, err
    assert not double.chat_bodies and not (tmp_path / "out").exists()  # so the corrected rerun is not refused


def test_unreachable_server_names_the_url_and_the_launcher(tmp_path: Path, capsys):
    with OpenAIDouble(canned) as double:
        url = double.base_url  # closed on exit: nothing listens there any more
    assert run(tmp_path, url) == 1
    err = capsys.readouterr().err
    assert f"no OpenAI-compatible server at {url}" in err and "python -m launch tiny-bf16" in err


def test_wrong_model_name_lists_the_served_ones(tmp_path: Path, capsys):
    with OpenAIDouble(canned, model="something-else") as double:
        assert run(tmp_path, double.base_url) == 1
    err = capsys.readouterr().err
    assert "serves something-else, not 'tiny-qwen3.5-moe'" in err and "--model" in err
    assert not double.chat_bodies


def test_data_dir_without_the_files(tmp_path: Path, capsys):
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "train.jsonl").write_text("")
    assert main(["gsm8k", "--recipe", "tiny-bf16", "--data-dir", str(tmp_path / "gsm8k")]) == 1
    err = capsys.readouterr().err
    assert "test.jsonl" in err and "train.jsonl" not in err.split("lacks")[1].split("\n")[0]


def test_existing_output_needs_resume(tmp_path: Path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "responses.jsonl").write_text("")
    assert main(["gsm8k", "--recipe", "tiny-bf16", "--output", str(tmp_path / "out")]) == 1
    assert f"--resume {tmp_path / 'out'}" in capsys.readouterr().err


def test_task_yaml_switches_to_local_data(tmp_path: Path):
    for split in gsm8k.SPLITS:
        (tmp_path / f"{split}.jsonl").write_text("{}\n")
    config = gsm8k.task_config(tmp_path)
    assert config["dataset_path"] == "json" and config["dataset_name"] is None
    assert config["dataset_kwargs"]["data_files"]["test"] == str(tmp_path / "test.jsonl")
    hub = gsm8k.task_config(None)
    assert (hub["dataset_path"], hub["dataset_name"]) == ("openai/gsm8k", "main")
    assert [f["name"] for f in hub["filter_list"]] == ["strict-match", "flexible-extract"]


def test_evaluate_call_matches_inferencex():
    s = harness.Settings(max_tokens=512, concurrency=4, think=False, limit=50, num_fewshot=5)
    kwargs = harness.evaluate_kwargs("gsm8k", s)
    assert kwargs["apply_chat_template"] is True and kwargs["fewshot_as_multiturn"] is True
    assert kwargs["gen_kwargs"] == {"max_tokens": 512, "temperature": 0, "top_p": 1}
    assert (kwargs["num_fewshot"], kwargs["limit"]) == (5, 50)

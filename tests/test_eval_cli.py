"""The eval command line: server resolution, mmlu-pro wiring, the chat client, verdicts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install -e '.[eval]')")

from eval import harness, mmlu_pro, results  # noqa: E402
from eval.__main__ import main, parser  # noqa: E402
from eval.results import Metric  # noqa: E402
from eval.server import resolve  # noqa: E402
from launch.recipe import load_recipe  # noqa: E402
from openai_double import OpenAIDouble  # noqa: E402
from tests.conftest import all_recipe_names  # noqa: E402


def test_defaults_come_from_the_recipe():
    target = resolve("qwen3.5-397b-nvfp4-rtxpro6000-mtp")
    recipe = target.recipe.recipe
    assert target.base_url == f"http://{recipe.host}:{recipe.port}"
    assert target.model == recipe.model.served_name
    args = parser().parse_args(["mmlu-pro", "--recipe", "qwen3.5-397b-nvfp4-rtxpro6000-mtp"])
    s = harness.settings(args, target)
    assert (s.max_tokens, s.concurrency, s.think) == (4096, 10, recipe.eval.think)
    args = parser().parse_args(["mmlu-pro", "--recipe", "x", "--no-think", "--concurrency", "2"])
    assert (harness.settings(args, target).think, harness.settings(args, target).concurrency) == (False, 2)


def test_base_url_may_carry_v1():
    assert resolve("tiny-bf16", "http://10.0.0.1:8000/v1/").base_url == "http://10.0.0.1:8000"


def test_mmlu_pro_runs_lm_eval_stock_task_with_the_recipe(monkeypatch, tmp_path: Path):
    calls = {}

    def fake_run(task, target, s, out_dir):
        calls.update(task=task, target=target, settings=s, kwargs=harness.evaluate_kwargs(task, s))
        lm = {"results": {"mmlu_pro": {"exact_match,custom-extract": 0.885, "exact_match_stderr,custom-extract": 0.003}}}
        return lm, type("J", (), {"reused": 0, "requests": {}, "answers": {}})()

    monkeypatch.setattr(harness, "run", fake_run)
    with OpenAIDouble(lambda m: "", model="Qwen3.5-397B-A17B-NVFP4") as double:
        recipe = load_recipe("qwen3.5-397b-nvfp4-rtxpro6000-mtp").recipe
        rc = main(["mmlu-pro", "--recipe", "qwen3.5-397b-nvfp4-rtxpro6000-mtp", "--base-url", double.base_url,
                   "--model", double.model, "--output", str(tmp_path)])  # fmt: skip
    assert calls["task"] == mmlu_pro.TASK == "mmlu_pro"
    assert calls["kwargs"]["apply_chat_template"] and calls["kwargs"]["fewshot_as_multiturn"]
    assert calls["kwargs"]["gen_kwargs"]["max_tokens"] == recipe.eval.max_tokens
    assert calls["kwargs"]["num_fewshot"] is None  # the task's own 5 shots
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["metrics"]["exact_match,custom-extract"]["value"] == pytest.approx(88.5)
    assert doc["verdict"]["status"] == "pass" and rc == 0


def test_verdict_outside_tolerance_exits_3():
    recipe = load_recipe("qwen3.6-35b-int8-h100")
    inside = results.judge(recipe, "gsm8k", {"exact_match,flexible-extract": Metric(95.5, 0.5)})
    outside = results.judge(recipe, "gsm8k", {"exact_match,flexible-extract": Metric(93.0, 0.7)})
    assert (inside.status, inside.exit_code) == ("pass", 0)
    assert (outside.status, outside.exit_code) == ("fail", 3) and "exit code 3" in outside.text
    none = results.judge(load_recipe("tiny-bf16"), "gsm8k", {})
    assert (none.status, none.exit_code) == ("none", 0) and "no expected gsm8k value" in none.text


def test_a_verdict_on_fewer_questions_than_the_card_widens_by_the_samples_stderr_or_abstains():
    recipe = load_recipe("qwen3.6-35b-int8-h100")  # 95.91 ± 1.0 on GSM8K's 1319 questions
    metric = "exact_match,flexible-extract"
    sampled = results.judge(recipe, "gsm8k", {metric: Metric(93.0, 2.0)}, questions=60)
    assert (sampled.status, sampled.tolerance, sampled.questions) == ("pass", 5.0, 60)
    assert "= 93 on 60 of the source's 1319 questions, expected 95.91 ± 1 widened to ± 5 by 2 × the sample's standard error 2" in sampled.text
    assert results.judge(recipe, "gsm8k", {metric: Metric(88.0, 2.0)}, questions=60).status == "fail"
    full = results.judge(recipe, "gsm8k", {metric: Metric(93.0, 0.7)}, questions=1319)
    assert (full.status, full.tolerance) == ("fail", 1.0) and "= 93 on 1319 questions, expected 95.91 ± 1 (" in full.text
    unanimous = results.judge(recipe, "gsm8k", {metric: Metric(100.0, 0.0)}, questions=6)
    assert (unanimous.status, unanimous.exit_code) == ("none", 0)
    assert unanimous.text.startswith("no verdict: exact_match,flexible-extract = 100 on 6 of the source's 1319 questions")
    assert all(e.questions == 1319 for name in all_recipe_names() for e in load_recipe(name).recipe.expected if e.task == "gsm8k")


def test_chat_one_shot_streams_reasoning_apart(capsys):
    with OpenAIDouble(lambda m: ("let me think", f"echo: {m[-1]['content']}")) as double:
        assert main(["chat", "--base-url", double.base_url, "--think", "hello"]) == 0
    out = capsys.readouterr().out
    assert "let me think" in out and "echo: hello" in out
    assert out.index("let me think") < out.index("echo: hello")
    (body,) = double.chat_bodies
    assert body["model"] == double.model  # no --model and no recipe: the server's own model
    assert body["chat_template_kwargs"] == {"enable_thinking": True} and body["stream"] is True


def test_chat_repl_keeps_history_and_leaves_on_ctrl_d(monkeypatch, capsys):
    lines = iter(["first", "second"])

    def fake_input(prompt: str) -> str:
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr("builtins.input", fake_input)
    seen = []

    def answer(messages):
        seen.append([m["content"] for m in messages])
        return f"reply {len(messages)}"

    with OpenAIDouble(answer) as double:
        assert main(["chat", "--base-url", double.base_url, "--model", double.model]) == 0
    assert seen == [["first"], ["first", "reply 1", "second"]]
    assert "reply 3" in capsys.readouterr().out


def test_chat_against_no_server_is_one_line(capsys):
    with OpenAIDouble(lambda m: "") as double:
        url = double.base_url
    assert main(["chat", "--base-url", url, "--model", "m", "hi"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {url}") and "Traceback" not in err

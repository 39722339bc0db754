"""wikitext perplexity against the test double's /tokenize and /generate, checked against a hand computation."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install -e '.[eval]')")

from lm_eval.tasks.wikitext.preprocess_wikitext import wikitext_detokenizer  # noqa: E402

from eval import wikitext  # noqa: E402
from eval.__main__ import main  # noqa: E402
from openai_double import OpenAIDouble  # noqa: E402

# Two articles in wiki.test.raw's layout: a top-level " = Title = " heading starts each, " = = " a section.
RAW = (
    " \n = Alpha = \n \n alpha beta gamma delta \n \n = = Part = = \n \n beta gamma \n"
    " \n = Beta = \n \n gamma delta epsilon zeta eta theta \n"
)


def test_split_articles_follows_top_level_headings():
    articles = wikitext.split_articles(RAW)
    assert len(articles) == 2
    assert articles[0].startswith(" = Alpha = ") and "= = Part = =" in articles[0]
    assert articles[1].startswith(" = Beta = ")


def test_perplexity_equals_the_hand_computation(tmp_path: Path):
    (tmp_path / "wiki.test.raw").write_text(RAW)
    logprob = {}  # token id -> a fixed log-probability, so every window's sum is known

    def logprob_of(token_id: int) -> float:
        return logprob.setdefault(token_id, -0.1 * (1 + token_id % 7))

    # A context of 8 tokens forces several rolling windows per article (window = 8 - 2 tokens).
    with OpenAIDouble(lambda m: "", max_model_len=8, logprob_of=logprob_of) as double:
        rc = main(["wikitext", "--recipe", "tiny-bf16", "--base-url", double.base_url, "--data-dir", str(tmp_path),
                   "--output", str(tmp_path / "out"), "--concurrency", "1"])  # fmt: skip
        assert rc == 0
        articles = wikitext.split_articles(RAW)
        token_lists = [double.token_ids(wikitext_detokenizer({"page": a})) for a in articles]
    assert all(len(b["input_ids"]) <= 7 for b in double.generate_bodies)  # shorter than the context
    assert len(double.generate_bodies) > len(articles)  # rolling windows, not one request per article
    assert all(b["sampling_params"]["max_new_tokens"] == 0 and b["logprob_start_len"] == 0 for b in double.generate_bodies)
    # every token of every article is predicted exactly once, each with its own log-probability
    total = sum(logprob_of(t) for tokens in token_lists for t in tokens)
    n_tokens = sum(len(t) for t in token_lists)
    words = sum(len(re.split(r"\s+", a)) for a in articles)
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    metrics = doc["metrics"]
    assert metrics["token_perplexity"]["value"] == pytest.approx(math.exp(-total / n_tokens))
    assert metrics["word_perplexity"]["value"] == pytest.approx(math.exp(-total / words))
    n_bytes = sum(len(a.encode()) for a in articles)
    assert metrics["bits_per_byte"]["value"] == pytest.approx(-total / n_bytes / math.log(2))
    assert doc["config"]["documents"] == 2 and doc["config"]["window_tokens"] == 6


def test_windows_fit_the_servers_context_not_the_tokenizers(tmp_path: Path, monkeypatch):
    """SGLang's /tokenize reports the tokenizer's model_max_length; the server's --context-length, which a
    window must fit, is the max_model_len that /v1/models lists."""
    (tmp_path / "wiki.test.raw").write_text(RAW)
    get_json = wikitext.server.get_json

    def models_list_a_context_of_8(url: str, body=None, timeout: float = 30, api_key=None):
        reply = get_json(url, body, timeout, api_key)
        if url.endswith("/v1/models"):
            reply["data"][0]["max_model_len"] = 8
        return reply

    monkeypatch.setattr(wikitext.server, "get_json", models_list_a_context_of_8)
    with OpenAIDouble(lambda m: "", max_model_len=4096) as double:
        rc = main(["wikitext", "--base-url", double.base_url, "--model", double.model, "--data-dir", str(tmp_path),
                   "--output", str(tmp_path / "out"), "--concurrency", "1"])  # fmt: skip
    assert rc == 0
    assert max(len(b["input_ids"]) for b in double.generate_bodies) == 7
    assert json.loads((tmp_path / "out" / "results.json").read_text())["config"]["server_context_length"] == 8


def test_missing_raw_file_is_a_clear_error(tmp_path: Path, capsys):
    assert main(["wikitext", "--recipe", "tiny-bf16", "--data-dir", str(tmp_path)]) == 1
    assert "wiki.test.raw" in capsys.readouterr().err


def test_verdict_against_the_card(tmp_path: Path):
    from eval.results import Metric, judge
    from launch.recipe import load_recipe

    recipe = load_recipe("qwen3.5-35b-mxfp4-h100")
    assert judge(recipe, "wikitext2", {"word_perplexity": Metric(6.17)}).status == "pass"
    outside = judge(recipe, "wikitext2", {"word_perplexity": Metric(6.3)})
    assert outside.status == "fail" and outside.exit_code == 3 and "OUTSIDE" in outside.text


def test_windows_fit_sglangs_longest_prompt(tmp_path: Path):
    """SGLang keeps a few tokens of its context back (8192 -> max_req_input_len 8186, /server_info) and
    refuses prompts of that length or more: windows of 8191 and then 8186 tokens got HTTP 400 on the H100."""
    (tmp_path / "wiki.test.raw").write_text(RAW)
    with OpenAIDouble(lambda m: "", max_model_len=8, max_req_input_len=6) as double:
        rc = main(["wikitext", "--base-url", double.base_url, "--model", double.model, "--data-dir", str(tmp_path),
                   "--output", str(tmp_path / "out"), "--concurrency", "1"])  # fmt: skip
    assert rc == 0
    assert max(len(b["input_ids"]) for b in double.generate_bodies) == 5

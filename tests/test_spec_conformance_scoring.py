"""The speculative-decoding suite's scorer (tests/gpu/spec_conformance.py), on CPU: identical rounds pass, a
divergence away from a near-tie, a logprob drift, an accept length off its band and a cold second round
are each caught; each case's server is one the launcher accepts."""

import argparse
import copy
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.gpu import spec_conformance as spec


def _round(tokens: list[list[int]], gap: float = 7.0, accept: float | None = None, cached: int = 0) -> spec.Round:
    return spec.Round(
        tokens=tokens,
        top2=[[(-0.001, -gap)] * len(t) for t in tokens],
        top2_ids=[[(tok, tok + 1) for tok in t] for t in tokens],
        accept_length=accept,
        cached_tokens=cached,
    )


def _results(plain: spec.Round, nextn: spec.Round) -> list[spec.CaseResult]:
    return [spec.CaseResult("bf16", "plain", 60.0, rounds=[plain, copy.deepcopy(plain)]),
            spec.CaseResult("bf16", "nextn-5-1-6", 80.0, rounds=[nextn, copy.deepcopy(nextn)])]  # fmt: skip


def test_identical_decoding_at_the_expected_acceptance_passes() -> None:
    expected = spec.expected_accept_length(0.8, 5)
    plain = _round([[1, 2, 3], [4, 5, 6]], cached=9)
    rows, failures = spec.score(_results(plain, _round([[1, 2, 3], [4, 5, 6]], accept=expected, cached=9)), 0.8)
    assert not failures and len(rows) == 4
    assert {row["identical"] for row in rows} == {2}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.tokens[1].__setitem__(2, 9), "part from plain decoding away from a near-tie"),
        (lambda r: r.top2[0].__setitem__(1, (-0.001, -6.5)), "top-2 logprobs differ by 0.500"),
        (lambda r: setattr(r, "accept_length", 1.0), "accept length 1.0 outside"),
    ],
)
def test_a_wrong_speculative_server_is_caught(change, message: str) -> None:
    nextn = _round([[1, 2, 3], [4, 5, 6]], accept=spec.expected_accept_length(0.8, 5), cached=9)
    change(nextn)
    _, failures = spec.score(_results(_round([[1, 2, 3], [4, 5, 6]], cached=9), nextn), 0.8)
    assert any(message in why for why in failures), failures


def test_a_divergence_at_a_near_tie_is_explained_not_failed() -> None:
    plain = _round([[1, 2, 3]], gap=0.05, cached=3)
    nextn = _round([[1, 2, 7]], gap=0.05, accept=spec.expected_accept_length(0.8, 5), cached=3)
    rows, failures = spec.score(_results(plain, nextn), 0.8)
    assert not failures and rows[2]["near_tie"] == 1 and rows[2]["unexplained"] == 0


def test_a_second_round_without_radix_hits_is_reported() -> None:
    plain = _round([[1, 2]])
    _, failures = spec.score(_results(plain, _round([[1, 2]], accept=spec.expected_accept_length(0.8, 5))), 0.8)
    assert any("hit no radix-cached prefix" in why for why in failures)


def test_the_prompts_start_paths_from_many_tokens_and_share_a_long_prefix() -> None:
    batch = spec.prompts()
    assert len(batch) == spec.PROMPTS and len({p[-1] for p in batch}) > spec.PROMPTS * 2 // 3
    shared = batch[-spec.SHARED :]
    assert all(p[:300] == shared[0][:300] for p in shared)


def test_a_server_without_radix_cache_is_not_asked_for_prefix_hits() -> None:
    plain = _round([[1, 2]], cached=2)
    eagle = _round([[1, 2]], accept=spec.expected_accept_length(0.8, 3))
    results = [spec.CaseResult("mxfp4-fse", "plain", 60.0, shape="tiny-top10", rounds=[plain, copy.deepcopy(plain)]),
               spec.CaseResult("mxfp4-fse", "eagle-3-1-4", 70.0, shape="tiny-top10", rounds=[eagle, copy.deepcopy(eagle)])]  # fmt: skip
    rows, failures = spec.score(results, 0.8)
    assert not failures and {row["format"] for row in rows} == {"mxfp4-fse@tiny-top10"}


def test_each_shape_is_compared_with_its_own_plain_server() -> None:
    plain = _round([[1, 2, 3]], cached=3)
    other_plain = _round([[7, 8, 9]], cached=3)
    nextn = _round([[1, 2, 3]], accept=spec.expected_accept_length(0.8, 5), cached=3)
    results = [spec.CaseResult("bf16", "plain", 60.0, rounds=[plain, plain]),
               spec.CaseResult("bf16", "plain", 60.0, shape="tiny-top10", rounds=[other_plain, other_plain]),
               spec.CaseResult("bf16", "nextn-5-1-6", 60.0, shape="tiny-top10", rounds=[nextn, nextn])]  # fmt: skip
    _, failures = spec.score(results, 0.8)
    assert failures == [f"bf16@tiny-top10 nextn-5-1-6 round {n}: 1 outputs part from plain decoding away from a near-tie" for n in (1, 2)]


@pytest.mark.parametrize("case", list(spec.SPEC))
def test_every_case_is_a_server_the_launcher_accepts(case: str) -> None:
    """The sets of each case (the MI355X twins' EAGLE cache settings, the caps of side-by-side servers, fp8 KV
    for NVFP4) through the launcher's own checks, as the GPU run passes them."""
    args = argparse.Namespace(acceptance=0.8, tp=1, ep=1, parallel=4, set=["port=31999"])
    sets = spec.server_sets("nvfp4", "tiny-top10", case, args)
    done = subprocess.run([sys.executable, "-m", "launch", spec.FORMAT_RECIPES["nvfp4"], "--dry-run",
                           *[arg for item in sets for arg in ("--set", item)]], cwd=REPO, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    command = " ".join(done.stdout.replace("\\\n", " ").split())
    assert "--kv-cache-dtype fp8_e4m3" in command and "--max-mamba-cache-size 512" in command and "--port 31999" in command
    assert "nvfp4-tiny-top10-mtp0.8" in command
    assert ("--disable-radix-cache" in command) is (not spec.SPEC[case].radix)
    assert ("--speculative-algorithm" in command) is bool(spec.SPEC[case].algorithm)


def test_fp4_activations_get_their_wider_mark_and_only_they() -> None:
    plain = _round([[1, 2, 3]], cached=3)
    nextn = _round([[1, 2, 3]], accept=spec.expected_accept_length(0.8, 5), cached=3)
    nextn.top2[0][1] = (-0.001, -7.7)  # 0.7 from plain: a whole FP4 step of one activation, not a wrong state
    for fmt, fails in (("mxfp4-fse", False), ("nvfp4", True)):
        results = [spec.CaseResult(fmt, "plain", 60.0, rounds=[plain, plain]), spec.CaseResult(fmt, "nextn-5-1-6", 60.0, rounds=[nextn, nextn])]
        _, failures = spec.score(results, 0.8)
        assert bool(failures) is fails, (fmt, failures)


def test_case_files_are_named_without_characters_a_device_transfer_refuses(tmp_path) -> None:
    names = {spec.saved_case(tmp_path, fmt, shape, case).name for fmt in spec.FORMAT_RECIPES for shape in spec.SHAPES for case in spec.SPEC}
    assert len(names) == len(spec.FORMAT_RECIPES) * len(spec.SHAPES) * len(spec.SPEC)
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", name) for name in names)


def test_the_drafting_cases_are_the_recipes_settings() -> None:
    assert list(spec.SPEC) == ["plain", "nextn-5-1-6", "nextn-3-1-4", "eagle-3-1-4"]
    assert spec.SPEC["nextn-3-1-4"].cache == spec.SPEC["plain"].cache == ("page-size=64", "mamba-radix-cache-strategy=extra_buffer")
    assert spec.SPEC["eagle-3-1-4"].cache == ("page-size=16", "disable-radix-cache=true")
    assert [s.steps for s in spec.SPEC.values()] == [0, 5, 3, 3]
    assert spec.card_001_kv("nvfp4") == ("kv-cache-dtype=fp8_e4m3",) and spec.card_001_kv("bf16") == ()

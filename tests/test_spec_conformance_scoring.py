"""The speculative-decoding suite's scorer (tests/gpu/spec_conformance.py), on CPU: identical rounds pass, a
divergence away from a near-tie, a logprob drift, an accept length off its band and a cold second round
are each caught."""

import copy

import pytest

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

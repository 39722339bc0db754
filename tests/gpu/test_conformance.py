"""Every fixture format served by real SGLang on the GPU matches its dequantized reference; FSE on and
off give the same tokens. The pass marks live in tests/gpu/conformance.py (THRESHOLDS), shared with the
script's own verdict."""

import os
from pathlib import Path

import pytest

from tests.gpu import conformance

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def suite() -> tuple[list[conformance.Result], list[dict]]:
    out = Path(os.environ.get("OUT", "runs")) / "conformance"
    results, pairs = conformance.run(conformance.CASES, out)
    conformance.print_table(results, pairs)
    return results, pairs


@pytest.mark.parametrize("case", conformance.CASES, ids=lambda case: case.label)
def test_case_matches_reference(suite, case: conformance.Case) -> None:
    (result,) = [r for r in suite[0] if r.case == case.label]
    assert conformance.case_failures(result) == []


def test_fse_on_and_off_agree(suite) -> None:
    results, pairs = suite
    assert {pair["recipe"] for pair in pairs} == set(conformance.FSE_MAX_PROMPT_LOGPROB_DIFF)
    assert [why for pair in pairs for why in conformance.pair_failures(pair)] == []

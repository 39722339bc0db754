"""Every fixture format served by real SGLang on the GPU matches its dequantized reference, in text and image
chats; FSE on and off give the same tokens. The pass marks live in tests/gpu/conformance.py (THRESHOLDS),
shared with the script's own verdict; `python -m tests.gpu.conformance --shapes tiny-top10` and
`--checkpoints FORMAT=DIR` run the same cases on the 397B-routed shape and on quantizer output."""

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


@pytest.mark.parametrize("case", conformance.CASES, ids=lambda case: case.name)
def test_case_matches_reference(suite, case: conformance.Case) -> None:
    (result,) = [r for r in suite[0] if r.case == case.name]
    assert conformance.case_failures(result) == []


def test_fse_on_and_off_agree(suite) -> None:
    results, pairs = suite
    assert {pair["recipe"] for pair in pairs} == {case.recipe for case in conformance.CASES if case.fse}
    assert [why for pair in pairs for why in conformance.pair_failures(pair)] == []

"""Every fixture format served by real SGLang on the GPU matches its dequantized reference; FSE on and
off give the same tokens. Thresholds per format: kernels compute in BF16 against a float32 reference
(the tiny model's BF16-vs-float32 spread is ~1% of the logits), and W4A4 / W8A8 kernels quantize
activations with their own rounding of the dynamic scales."""

import os
from pathlib import Path

import pytest

from tests.gpu import conformance

pytestmark = pytest.mark.gpu

# (max |Δlogprob|, min greedy agreement) per recipe
THRESHOLDS = {
    "tiny-bf16": (0.25, 0.95),
    "tiny-int8": (0.4, 0.9),
    "tiny-mxfp4-fse": (0.6, 0.85),
    "tiny-nvfp4": (0.4, 0.9),
    "tiny-ct-mxfp4": (0.4, 0.9),
}
# FSE on vs off, prompt logprobs: BF16 kernels summing in another order; MXFP4 W4A4 adds independent
# activation-rounding noise to each path (its mean error to the reference is ~0.05 nats).
FSE_MAX_PROMPT_LOGPROB_DIFF = {"tiny-bf16": 0.25, "tiny-int8": 0.25, "tiny-mxfp4-fse": 0.5}


@pytest.fixture(scope="module")
def suite() -> tuple[list[conformance.Result], list[dict]]:
    out = Path(os.environ.get("OUT", "runs")) / "conformance"
    results, pairs = conformance.run(conformance.CASES, out)
    conformance.print_table(results, pairs)
    return results, pairs


@pytest.mark.parametrize("case", conformance.CASES, ids=lambda case: case.label)
def test_case_matches_reference(suite, case: conformance.Case) -> None:
    (result,) = [r for r in suite[0] if r.case == case.label]
    assert not result.error, result.error
    max_error, min_agreement = THRESHOLDS[case.recipe]
    assert result.max_abs_logprob_error < max_error
    assert result.greedy_agreement >= min_agreement
    assert result.chat_completion_tokens > 0
    assert result.fused_in_log is bool(case.fse), "the server log disagrees about the fused shared expert"


def test_fse_on_and_off_agree(suite) -> None:
    pairs = suite[1]
    assert {pair["recipe"] for pair in pairs} == set(FSE_MAX_PROMPT_LOGPROB_DIFF)
    for pair in pairs:
        assert pair["unexplained_divergences"] == 0, pair
        assert pair["max_abs_prompt_logprob_diff"] < FSE_MAX_PROMPT_LOGPROB_DIFF[pair["recipe"]], pair

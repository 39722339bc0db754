"""Every supported SGLang release other than this venv's runs the SGLang-layer tests in a venv of its own
(tests/sglang_matrix.py); deselect with `-m "not sglang_matrix"` where no package index is reachable."""

import pytest

from tests import sglang_matrix


@pytest.mark.sglang_matrix
@pytest.mark.parametrize("release", sglang_matrix.other_releases())
def test_the_sglang_layer_passes_under_each_other_supported_release(release: str) -> None:
    outcome = sglang_matrix.run(release)
    print(outcome.summary)
    assert outcome.returncode == 0, f"{outcome.summary}\n{outcome.output[-6000:]}"
    assert outcome.counts["tests"] > 200 and outcome.counts["failures"] == outcome.counts["errors"] == 0
    # A test that skipped for want of SGLang would pass without proving anything about this release.
    assert not [reason for reason in outcome.skips if "not installed" in reason or "not importable" in reason], outcome.skips

"""Speculative decoding on real SGLang gives plain decoding's tokens and logprobs and accepts drafts at the
rate the MTP head's construction implies (tests/gpu/spec_conformance.py, its pass marks), for the formats whose
tiny recipes need no Marlin build; SGLang's own server kits run against the plain BF16 server meanwhile."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.gpu.serving import REPO

pytestmark = pytest.mark.gpu


def test_nextn_matches_plain_decoding_and_accepts_at_the_planted_rate() -> None:
    out = Path(os.environ.get("OUT", "runs")) / "spec-conformance"
    kits = f"{sys.executable} -m tests.gpu.sglang_kits --base-url $BASE_URL --model $MODEL --label plain --out {out}"
    done = subprocess.run([sys.executable, "-m", "tests.gpu.spec_conformance", "--formats", "bf16,int8", "--out", str(out),
                           "--while-plain", kits], cwd=REPO, capture_output=True, text=True)  # fmt: skip
    print(done.stdout[-6000:])
    failures = [line for line in done.stdout.splitlines() if line.startswith("FAIL")]
    # the kits' matched-stop and JSON tests need a model that stops or writes JSON; the spec verdict is the judge
    assert [f for f in failures if "--while-plain" not in f] == [], failures

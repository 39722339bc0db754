"""The evaluation pipeline against real SGLang serving the tiny recipe: GSM8K (InferenceX task, 5-shot,
greedy, 50 questions) and the card-003 speed sweep. The tiny model scores ~0; what is checked is the pipeline."""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.gpu.conftest import start_launcher

pytestmark = pytest.mark.gpu
GSM8K = next((p for p in (REPO / ".gpu" / "data" / "gsm8k", REPO.parent / "shared" / "data" / "gsm8k") if p.exists()), None)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _eval(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "eval", *args], cwd=REPO, capture_output=True, text=True, timeout=900)
    print(done.stdout[-4000:], done.stderr[-2000:])
    return done


@pytest.mark.skipif(GSM8K is None, reason="no GSM8K copy (.gpu/data/gsm8k or ../shared/data/gsm8k)")
def test_gsm8k_and_speed_sweep_against_the_tiny_server(tmp_path: Path):
    out = Path(os.environ.get("OUT", tmp_path))
    port = _free_port()
    launcher, _, _ = start_launcher("tiny-bf16", port, tmp_path, "context-length=8192")
    base = f"http://127.0.0.1:{port}"
    try:
        gsm8k = _eval("gsm8k", "--recipe", "tiny-bf16", "--base-url", base, "--data-dir", str(GSM8K),
                      "--limit", "50", "--output", str(out / "gsm8k"))
        assert gsm8k.returncode == 0
        report = json.loads((out / "gsm8k" / "results.json").read_text())
        assert len(report["samples"]) == 50
        speed = _eval("speed", "--recipe", "tiny-bf16", "--base-url", base, "--dataset", "random-ids",
                      "--concurrency", "1,2,4,8", "--output", str(out / "speed"))
        assert speed.returncode == 0
        assert (out / "speed" / "speed.json").exists()
    finally:
        launcher.send_signal(signal.SIGTERM)
        launcher.wait(timeout=90)

"""Fused shared expert (FSE) on CUDA against the unfused path, through the real launcher and SGLang on the
BF16 tiny fixture: the same greedy chat completions and the same prompt log-probabilities, up to the
rounding that moving the shared expert into the routed-expert kernel changes.

Both servers run the same weights; the only difference is `--disable-shared-experts-fusion`. The fused one
must say in its log that it fused (sglang_ext.models.qwen3_5), or the test would compare unfused with
unfused.
"""

import json
import signal
import socket
import urllib.request
from pathlib import Path

import pytest

from tests.gpu.conftest import start_launcher

pytestmark = pytest.mark.gpu

MODEL = "tiny-qwen3.5-moe"
PROMPTS = (
    "What is 7*6?",
    "Name three colours of the rainbow.",
    "Write one sentence about the sea.",
    "Translate 'good morning' into French.",
    "List the first five prime numbers.",
    "Why is the sky blue?",
    "Count from one to ten.",
    "Summarise the plot of Hamlet in a line.",
)
MAX_TOKENS = 16
# Per-token log-probability difference allowed between the two paths, in nats. Fused, the shared expert's
# gate product is taken in fp32 inside the MoE kernel and summed with the routed experts before the one
# bf16 rounding; unfused it is rounded to bf16 on its own, then gated and added. That moves each of the 4
# MoE layers' outputs by a few bf16 ulps (2**-8 relative), i.e. logits by ~1e-2 on this model.
LOGPROB_TOL = 0.1
FUSED_LOG = "Qwen3.5 shared expert fused into the routed MoE"
UNFUSED_LOG = "Qwen3.5 shared expert kept separate: --disable-shared-experts-fusion is set"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def _serve_and_query(log_dir: Path, *overrides: str) -> dict:
    """Greedy chat completions (tokens with their top-2 log-probabilities) and prompt log-probabilities."""
    port = _free_port()
    launcher, _, _ = start_launcher("tiny-bf16", port, log_dir, *overrides)
    base = f"http://127.0.0.1:{port}"
    try:
        chats, prompts = [], []
        for prompt in PROMPTS:
            body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": MAX_TOKENS,
                    "temperature": 0, "ignore_eos": True, "logprobs": True, "top_logprobs": 2}
            chats.append(_post(f"{base}/v1/chat/completions", body)["choices"][0]["logprobs"]["content"])
            body = {"text": prompt, "sampling_params": {"max_new_tokens": 0, "temperature": 0},
                    "return_logprob": True, "logprob_start_len": 0}
            prompts.append(_post(f"{base}/generate", body)["meta_info"]["input_token_logprobs"])
    finally:
        launcher.send_signal(signal.SIGTERM)
        launcher.wait(timeout=90)
    (log,) = log_dir.glob("tiny-bf16-*/server.log")
    return {"chats": chats, "prompts": prompts, "log": log.read_text(errors="replace")}


def _compare_greedy(fused: list[dict], unfused: list[dict]) -> tuple[float, int | None]:
    """Max log-probability difference over the shared prefix, and the step where the tokens part (None if
    never). Parting is allowed only at a near-tie of the unfused run, to its runner-up."""
    max_diff = 0.0
    for step, (ours, ref) in enumerate(zip(fused, unfused, strict=True)):
        if ours["token"] != ref["token"]:
            first, second = sorted(ref["top_logprobs"], key=lambda top: -top["logprob"])[:2]
            gap = first["logprob"] - second["logprob"]
            assert gap < LOGPROB_TOL, f"step {step}: {ours['token']!r} != {ref['token']!r}, top-2 gap {gap:.4f}"
            assert ours["token"] == second["token"], f"step {step}: fused picked {ours['token']!r}, not the runner-up"
            return max_diff, step
        max_diff = max(max_diff, abs(ours["logprob"] - ref["logprob"]))
    return max_diff, None


def test_fused_shared_expert_matches_the_unfused_path(tmp_path: Path) -> None:
    fused = _serve_and_query(tmp_path / "fused")
    unfused = _serve_and_query(tmp_path / "unfused", "disable-shared-experts-fusion=true")
    assert FUSED_LOG in fused["log"], "the FSE server did not fuse the shared expert"
    assert UNFUSED_LOG in unfused["log"] and FUSED_LOG not in unfused["log"]

    greedy_diff, identical, parted = 0.0, 0, []
    for prompt, ours, ref in zip(PROMPTS, fused["chats"], unfused["chats"], strict=True):
        assert len(ours) == len(ref) == MAX_TOKENS, prompt
        diff, step = _compare_greedy(ours, ref)
        greedy_diff = max(greedy_diff, diff)
        if step is None:
            identical += 1
        else:
            parted.append((prompt, step))

    prompt_diff, positions = 0.0, 0
    for prompt, ours, ref in zip(PROMPTS, fused["prompts"], unfused["prompts"], strict=True):
        assert [entry[1] for entry in ours] == [entry[1] for entry in ref], prompt
        for (ours_lp, _, _), (ref_lp, _, _) in zip(ours, ref, strict=True):
            if ref_lp is not None:  # the first prompt token has none
                prompt_diff = max(prompt_diff, abs(ours_lp - ref_lp))
                positions += 1

    print(
        f"\nFSE vs unfused, BF16 tiny fixture: greedy {identical}/{len(PROMPTS)} prompts identical over "
        f"{MAX_TOKENS} tokens, parted at near-ties {parted}; max |d logprob| greedy {greedy_diff:.4f}, "
        f"prompt {prompt_diff:.4f} over {positions} positions (tolerance {LOGPROB_TOL})"
    )
    assert greedy_diff < LOGPROB_TOL
    assert prompt_diff < LOGPROB_TOL

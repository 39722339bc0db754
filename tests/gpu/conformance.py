"""GPU conformance of every tiny fixture format through a real SGLang server.

For each case (a tiny recipe, optionally with the fused shared expert turned off) the real launcher
starts SGLang; the suite sends the same greedy prompts through `/generate` with prompt and output
logprobs, and one chat completion through the OpenAI API. An independent reference — transformers'
model of the dequantized weights in float32 on the GPU, with the scheme's activation quantization
(`sglang_ext.formats.reference`) — scores the same token sequences. Per case: max and mean absolute
logprob error over all prompt and generated positions, and teacher-forced greedy agreement (the
reference's argmax after SGLang's own prefix, so one near-tie does not cascade). FSE-on and FSE-off runs
of one checkpoint are also compared with each other.

    python -m tests.gpu.conformance [--cases bf16,int8,...] [--shape tiny-top10] [--tp 2] [--ep 2] [--out DIR]
    python -m tests.gpu.conformance --merge A/conformance.json B/conformance.json

prints one table and writes conformance.json; tests/gpu/test_conformance.py runs it with thresholds.
`--merge` prints one table from runs split by `--cases` (e.g. to fit a time limit per command).
"""

import argparse
import contextlib
import json
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tests.gpu.serving import ServerDidNotStart, served

PROMPTS = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting.",
    "Betty is saving money for a new wallet which costs $100. Betty has only half of the money she needs.",
    "James writes a 3-page letter to 2 different friends twice a week. How many pages does he write a year?",
    "Albert is wondering how much pizza he can eat in one day. He buys 2 large pizzas and 2 small pizzas.",
    "Ken created a care package to send to his brother, who was away at boarding school.",
    "Alexis is applying for a new job and bought a new set of business clothes to wear to the interview.",
    "Tina makes $18.00 an hour. If she works more than 8 hours per shift, she is eligible for overtime.",
)
NEW_TOKENS = 16
NEAR_TIE = 0.1  # nats between the top two candidates

# Pass marks. Kernels compute in BF16 against a float32 reference (the tiny model's BF16-vs-float32 spread
# is ~1% of the logits), and W4A4 / W8A8 kernels quantize activations with their own rounding of the
# dynamic scales. Per recipe: (max |Δlogprob|, min greedy agreement).
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


@dataclass(frozen=True)
class Case:
    label: str
    recipe: str
    fse: bool | None  # None: the checkpoint keeps the shared expert out of the MoE either way
    sets: tuple[str, ...] = ()


CASES = (
    Case("bf16", "tiny-bf16", True),
    Case("bf16 fse-off", "tiny-bf16", False, ("disable-shared-experts-fusion=true",)),
    Case("int8", "tiny-int8", True),
    Case("int8 fse-off", "tiny-int8", False, ("disable-shared-experts-fusion=true",)),
    Case("nvfp4", "tiny-nvfp4", None),
    Case("ct-mxfp4", "tiny-ct-mxfp4", None),
    # Last: SGLang's Marlin MXFP4 kernels compile on first use (~5 min on a fresh H100).
    Case("mxfp4-fse", "tiny-mxfp4-fse", True),
    Case("mxfp4-fse fse-off", "tiny-mxfp4-fse", False, ("disable-shared-experts-fusion=true",)),
)


@dataclass
class Result:
    case: str
    recipe: str
    fse: bool | None
    ok: bool = False
    error: str = ""
    ready_s: float = 0.0
    max_abs_logprob_error: float = float("nan")
    mean_abs_logprob_error: float = float("nan")
    greedy_agreement: float = float("nan")
    chat_completion_tokens: int = 0
    fused_in_log: bool | None = None  # what the server log says sglang_ext's Qwen3.5 override did
    # raw server output, for FSE on/off comparisons
    sequences: list[list[int]] = field(default_factory=list, repr=False)
    logprobs: list[list[float]] = field(default_factory=list, repr=False)
    top2_gaps: list[list[float]] = field(default_factory=list, repr=False)  # per generated token


def prompt_ids(tokenizer_dir: Path) -> list[list[int]]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    return [
        tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                      enable_thinking=False, tokenize=True, return_dict=True)["input_ids"]
        for text in PROMPTS
    ]  # fmt: skip


# SGLang sizes its pools from the free memory it measured before loading (mem_cache/kv_cache_configurator.py,
# `_profile_available_bytes`); a server that starts while another is still allocating sees that memory
# vanish and refuses with a negative "total_rest_memory". Servers therefore start one at a time (each
# waits for the previous one to be ready) and then answer and get scored side by side.
_STARTING = threading.Lock()


def _serve_and_query(case: Case, prompts: list[list[int]], log_dir: Path, mem_fraction: float, layout: tuple[str, ...] = ()) -> Result:
    result = Result(case.label, case.recipe, case.fse)
    log_dir = log_dir / case.label.replace(" ", "-")
    sets = [f"mem-fraction-static={mem_fraction}", "cuda-graph-backend-decode=disabled", *layout, *case.sets]
    try:
        with contextlib.ExitStack() as stack:
            with _STARTING:
                server = stack.enter_context(served(case.recipe, sets, log_dir, timeout_s=500))
            result.ready_s = server.ready_s
            outputs = server.post("/generate", {
                "input_ids": prompts,
                "sampling_params": {"temperature": 0, "max_new_tokens": NEW_TOKENS, "ignore_eos": True},
                "return_logprob": True, "logprob_start_len": 0, "top_logprobs_num": 2,
            })  # fmt: skip
            for prompt, output in zip(prompts, outputs):
                meta = output["meta_info"]
                generated = [token for _, token, _ in meta["output_token_logprobs"]]
                result.sequences.append(prompt + generated)
                result.logprobs.append([lp for lp, _, _ in meta["input_token_logprobs"][1:]] +
                                       [lp for lp, _, _ in meta["output_token_logprobs"]])  # fmt: skip
                result.top2_gaps.append([top[0][0] - top[1][0] for top in meta["output_top_logprobs"]])
            chat = server.post("/v1/chat/completions", {
                "model": "tiny-qwen3.5-moe", "messages": [{"role": "user", "content": PROMPTS[0]}],
                "max_tokens": 8, "temperature": 0,
            })  # fmt: skip
            result.chat_completion_tokens = chat["usage"]["completion_tokens"]
    except ServerDidNotStart as error:
        result.error = f"server did not start: {error}"
    except Exception as error:  # a case's failure is a row in the table, not the end of the suite
        result.error = f"{type(error).__name__}: {error}"
    result.fused_in_log = _fusion_from_log(log_dir)
    print(f"{case.label}: {'ready after %.0f s' % result.ready_s if result.ready_s else 'no server'}"
          f"{', ' + result.error if result.error else ''}", flush=True)  # fmt: skip
    return result


def _fusion_from_log(log_dir: Path) -> bool | None:
    logs = sorted(log_dir.glob("*/server.log"))
    if not logs:
        return None
    text = logs[-1].read_text(errors="replace")
    if "shared expert fused into the routed MoE" in text:
        return True
    return False if "shared expert kept separate" in text else None


def _score(result: Result, reference, prompt_lengths: list[int], device: str) -> None:
    import torch

    errors, agreement = [], []
    for sequence, server_logprobs, prompt_length in zip(result.sequences, result.logprobs, prompt_lengths):
        tokens = torch.tensor([sequence], device=device)
        with torch.no_grad():
            logprobs = reference(input_ids=tokens).logits[0].float().log_softmax(-1)
        targets = tokens[0, 1:]
        ours = logprobs[:-1].gather(-1, targets[:, None])[:, 0].cpu()
        errors.append((ours - torch.tensor(server_logprobs)).abs())
        predicted = logprobs[prompt_length - 1 : -1].argmax(-1).cpu()
        agreement.append((predicted == targets[prompt_length - 1 :].cpu()).float())
    errors_all, agreement_all = torch.cat(errors), torch.cat(agreement)
    result.max_abs_logprob_error = errors_all.max().item()
    result.mean_abs_logprob_error = errors_all.mean().item()
    result.greedy_agreement = agreement_all.mean().item()


def compare_fse(on: Result, off: Result, prompt_lengths: list[int]) -> dict:
    """FSE on vs off of one checkpoint. Prompt positions see the same tokens in both runs, so their
    logprobs compare directly; generated sequences compare up to where they part, and parting is only
    acceptable at a near-tie (top-2 gap < NEAR_TIE in either run), where kernel rounding may pick either."""
    prompt_diffs, divergences, unexplained = [], 0, 0
    for index, prompt_length in enumerate(prompt_lengths):
        known = prompt_length - 1  # logprobs of prompt tokens 1..n-1
        prompt_diffs += [abs(a - b) for a, b in zip(on.logprobs[index][:known], off.logprobs[index][:known])]
        ours, theirs = on.sequences[index][prompt_length:], off.sequences[index][prompt_length:]
        parted = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), None)
        if parted is not None:
            divergences += 1
            gap = min(on.top2_gaps[index][parted], off.top2_gaps[index][parted])
            unexplained += gap >= NEAR_TIE
    return {"pair": f"{on.case} vs {off.case}", "recipe": on.recipe, "sequences": len(prompt_lengths),
            "identical_sequences": len(prompt_lengths) - divergences, "unexplained_divergences": unexplained,
            "max_abs_prompt_logprob_diff": max(prompt_diffs), "mean_abs_prompt_logprob_diff": sum(prompt_diffs) / len(prompt_diffs)}  # fmt: skip


def layout_sets(shape: str, tp: int, ep: int) -> tuple[str, ...]:
    """The --set items that serve every case as `shape` (a fixture shape: tiny-top10 routes as the 397B does)
    at tensor and expert parallelism `tp` and `ep`."""
    return (f"model.fixture_shape={shape}", f"tp-size={tp}", *((f"ep-size={ep}",) if ep > 1 else ()))


def run(cases: tuple[Case, ...], out: Path, parallel: int = 8, shape: str = "tiny", tp: int = 1, ep: int = 1) -> tuple[list[Result], list[dict]]:
    import torch

    from sglang_ext.fixtures import Variant, ensure_fixture
    from sglang_ext.formats.dequantize import write_dequantized
    from sglang_ext.formats.reference import reference_model
    from launch.recipe import load_recipe

    out.mkdir(parents=True, exist_ok=True)
    formats = {case.recipe: load_recipe(case.recipe).recipe.model.fixture for case in cases}
    checkpoints = {recipe: ensure_fixture(fmt, variant=Variant(shape)) for recipe, fmt in formats.items()}  # before servers race for it
    prompts = prompt_ids(checkpoints[cases[0].recipe])
    mem_fraction = 0.1  # of the memory still free when each server starts
    layout = layout_sets(shape, tp, ep)
    with ThreadPoolExecutor(parallel) as pool:
        results = list(pool.map(lambda case: _serve_and_query(case, prompts, out / "servers", mem_fraction, layout), cases))

    device = "cuda" if torch.cuda.is_available() else "cpu"
    for recipe, checkpoint in checkpoints.items():
        answered = [r for r in results if r.recipe == recipe and not r.error]
        if not answered:
            continue
        reference = reference_model(checkpoint, write_dequantized(checkpoint, out / "dequantized" / recipe), device)
        for result in answered:
            _score(result, reference, [len(p) for p in prompts], device)
        del reference
    pairs = [compare_fse(on, off, [len(p) for p in prompts]) for on in results for off in results
             if on.recipe == off.recipe and on.fse and off.fse is False and not on.error and not off.error]  # fmt: skip
    save_run(out / "conformance.json", results, pairs)
    return results, pairs


def save_run(path: Path, results: list[Result], pairs: list[dict]) -> None:
    path.write_text(json.dumps(
        {"results": [{k: v for k, v in asdict(r).items() if k not in ("sequences", "logprobs")} for r in results],
         "fse_pairs": pairs}, indent=2) + "\n")  # fmt: skip


def case_failures(result: Result) -> list[str]:
    """Why one case misses its pass marks (empty: it passes)."""
    if result.error:
        return [f"{result.case}: {result.error}"]
    max_error, min_agreement = THRESHOLDS[result.recipe]
    fused = bool(result.fse)
    checks = {
        f"max |Δlogprob| {result.max_abs_logprob_error:.4f} ≥ {max_error}": result.max_abs_logprob_error >= max_error,
        f"greedy agreement {result.greedy_agreement:.3f} < {min_agreement}": not result.greedy_agreement >= min_agreement,
        "no chat completion tokens": result.chat_completion_tokens <= 0,
        f"server log says fused={result.fused_in_log}, case wants {fused}": result.fused_in_log is not fused,
    }
    return [f"{result.case}: {why}" for why, failed in checks.items() if failed]


def pair_failures(pair: dict) -> list[str]:
    limit = FSE_MAX_PROMPT_LOGPROB_DIFF[pair["recipe"]]
    checks = {
        f"{pair['unexplained_divergences']} generations parted away from a near-tie": pair["unexplained_divergences"] > 0,
        f"prompt logprobs differ by {pair['max_abs_prompt_logprob_diff']:.4f} ≥ {limit}": pair["max_abs_prompt_logprob_diff"] >= limit,
    }
    return [f"FSE {pair['pair']}: {why}" for why, failed in checks.items() if failed]


def failures(results: list[Result], pairs: list[dict]) -> list[str]:
    """Every missed pass mark of a (possibly merged) suite run, including FSE pairs that did not run."""
    missing = {r.recipe for r in results if r.fse} - {pair["recipe"] for pair in pairs}
    return ([why for r in results for why in case_failures(r)] + [why for pair in pairs for why in pair_failures(pair)]
            + [f"FSE on/off of {recipe}: not compared (a case of the pair did not run or failed)" for recipe in sorted(missing)])  # fmt: skip


def print_table(results: list[Result], pairs: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="SGLang 0.5.17 vs dequantized float32 reference (8 prompts, 16 greedy tokens each)")
    for column in ("case", "FSE", "fused (log)", "ready s", "max |Δlogprob|", "mean |Δlogprob|", "greedy agree", "chat tokens", "error"):
        table.add_column(column)
    for r in results:
        fse = {True: "on", False: "off", None: "n/a"}[r.fse]
        table.add_row(r.case, fse, {True: "yes", False: "no", None: "?"}[r.fused_in_log], f"{r.ready_s:.0f}", f"{r.max_abs_logprob_error:.4f}",
                      f"{r.mean_abs_logprob_error:.4f}", f"{r.greedy_agreement:.3f}", str(r.chat_completion_tokens),
                      r.error[:80])  # fmt: skip
    console = Console(width=160)
    console.print(table)
    for pair in pairs:
        console.print(f"FSE {pair['pair']}: prompt logprobs max |Δ| {pair['max_abs_prompt_logprob_diff']:.4f} "
                      f"mean {pair['mean_abs_prompt_logprob_diff']:.5f}; {pair['identical_sequences']}/{pair['sequences']} "
                      f"generations identical, {pair['unexplained_divergences']} parted away from a near-tie")  # fmt: skip


def load_runs(paths: list[Path]) -> tuple[list[Result], list[dict]]:
    """Results and FSE pairs of earlier runs; ValueError naming the file that is not a conformance.json."""
    results, pairs = [], []
    for path in paths:
        try:
            saved = json.loads(path.read_text())
            results += [Result(**row) for row in saved["results"]]
            pairs += saved["fse_pairs"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path}: not a conformance.json this script wrote ({type(error).__name__}: {error}); "
                             "pass the conformance.json in a run's --out folder") from error  # fmt: skip
    return results, pairs


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.gpu.conformance")
    parser.add_argument("--cases", help="comma-separated case labels (default: all)")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "runs")) / "conformance")
    parser.add_argument("--merge", type=Path, nargs="+", metavar="JSON", help="print one table from these runs' conformance.json")
    parser.add_argument("--shape", default="tiny", choices=("tiny", "tiny-top10"),
                        help="tiny-top10: the tiny model routed as Qwen3.5-397B-A17B (top-10 of 32 experts)")
    parser.add_argument("--tp", type=int, default=1, help="tensor parallelism of every server")
    parser.add_argument("--ep", type=int, default=1, help="expert parallelism of every server")
    args = parser.parse_args()
    if args.merge:
        try:
            results, pairs = load_runs(args.merge)
        except ValueError as error:
            parser.error(f"--merge {error}")
    else:
        wanted = set(args.cases.split(",")) if args.cases else {c.label for c in CASES}
        if unknown := wanted - {c.label for c in CASES}:
            parser.error(f"--cases: no case {', '.join(sorted(unknown))}; the cases: {', '.join(c.label for c in CASES)}")
        results, pairs = run(tuple(c for c in CASES if c.label in wanted), args.out, shape=args.shape, tp=args.tp, ep=args.ep)
    print_table(results, pairs)
    missed = failures(results, pairs)
    print("\n".join(f"FAIL {why}" for why in missed) or f"PASS: {len(results)} cases, {len(pairs)} FSE pairs")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())

"""GPU conformance of every tiny fixture format through a real SGLang server.

For each case (a tiny recipe, optionally with the fused shared expert turned off) the real launcher
starts SGLang; the suite sends the same greedy prompts through `/generate` with prompt and output
logprobs, one chat completion through the OpenAI API, and two image chats (a PNG as an OpenAI `image_url`:
a base64 data URL and a file:// URL; `conformance_images`). An independent reference — transformers'
model of the dequantized weights in float32 on the GPU, with the scheme's activation quantization
(`sglang_ext.formats.reference`), its BF16 vision tower run by transformers too — scores the same token
sequences. Per case, for text and for images: max and mean absolute logprob error over the positions
SGLang reports (text: every prompt and generated token; images: the generated ones, after checking that
SGLang's prompt, image tokens included, is the processor's), and teacher-forced greedy agreement (the
reference's argmax after SGLang's own prefix, so one near-tie does not cascade; the pass mark counts a token
within NEAR_TIE of the reference's best as agreeing, and the exact rate is reported beside it). FSE-on and FSE-off runs
of one checkpoint are also compared with each other.

    python -m tests.gpu.conformance [--cases bf16,int8,...] [--shapes tiny,tiny-top10] [--tp 2] [--ep 2] [--out DIR]
    python -m tests.gpu.conformance --checkpoints quark-w8a8-int8=DIR modelopt-nvfp4=DIR2 [--cases ...]
    python -m tests.gpu.conformance --merge A/conformance.json B/conformance.json
    python -m tests.gpu.conformance --rescore OUT [--checkpoints FORMAT=DIR ...]
    python -m tests.gpu.conformance ... --dry-run

prints one table and writes conformance.json; tests/gpu/test_conformance.py runs it with thresholds.
`--shapes` serves the generated checkpoints of each fixture shape (tiny-top10: the 397B's routing, top-10
of 32 experts, 11 slots with FSE); `--checkpoints FORMAT=DIR` serves your checkpoint directories instead
(e.g. what `python -m sglang_ext.quantize SRC OUT --to FORMAT` wrote), each as the tiny recipe of its
format, FSE on and off where sglang_ext fuses its shared expert, scored against its own dequantization.
`--merge` prints one table from runs split by `--cases` (e.g. to fit a time limit per command);
`--rescore` scores a finished run again from what its servers answered (OUT/servers/<case>/raw.json), on any
machine, a CPU included, and writes OUT/rescored.json;
`--dry-run` builds the checkpoints and prints each server's launcher command, without a GPU.
"""

import argparse
import contextlib
import json
import os
import shlex
import sys
import threading
import urllib.error
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from launch.errors import LaunchError
from tests.gpu import conformance_images as images
from tests.gpu.conformance_plan import CASES, SHAPES, Case, given_checkpoint, plan, server_sets
from tests.gpu.serving import ServerDidNotStart, gpu_unavailable, served

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
# Greedy agreement over as many tokens for the two image chats as for the eight text prompts (128): at 16 each,
# one miss moved the image rate by 3%, and a format whose text agreement is 0.92 (MXFP4 W4A4) fell under 0.85
# in about one image run in nine by chance alone (binomial at its text miss rate); at 128, one in 250.
IMAGE_NEW_TOKENS = NEW_TOKENS * len(PROMPTS) // len(images.IMAGES)
NEAR_TIE = 0.1  # nats between the top two candidates
SERVED_NAME = "tiny-qwen3.5-moe"  # model.served_name of the tiny recipes

# Pass marks, for text and image chats alike. Kernels compute in BF16 against a float32 reference (the tiny
# model's BF16-vs-float32 spread is ~1% of the logits), and W4A4 / W8A8 kernels quantize activations with
# their own rounding of the dynamic scales. Per recipe: (max |Δlogprob|, min greedy agreement), where a token
# within NEAR_TIE of the reference's best agrees: at a near-tie either token is the model's answer up to that
# rounding, and the random tiny model's answers after an image are near-ties far more often than after text
# (MXFP4 W4A4, H200: 16 of 19 image misses against 7 of 10 text misses; 3 of 128 tokens beyond a near-tie in
# both), so an exact rate would mark the picture rather than the kernels.
THRESHOLDS = {
    "tiny-bf16": (0.25, 0.95),
    "tiny-int8": (0.4, 0.95),
    "tiny-mxfp4-fse": (0.6, 0.95),
    "tiny-nvfp4": (0.4, 0.95),
    "tiny-ct-mxfp4": (0.4, 0.95),
}
# FSE on vs off, prompt logprobs: BF16 kernels summing in another order (NVFP4 and ct-MXFP4 run weight-only
# on Hopper, so with a given checkpoint that quantizes their shared expert, and fuses it, they compare as
# BF16 does); MXFP4 W4A4 adds independent activation-rounding noise to each path (its mean error to the
# reference is ~0.05 nats).
FSE_MAX_PROMPT_LOGPROB_DIFF = {"tiny-bf16": 0.25, "tiny-int8": 0.25, "tiny-nvfp4": 0.25, "tiny-ct-mxfp4": 0.25,
                               "tiny-mxfp4-fse": 0.5}  # fmt: skip
RAW_FIELDS = ("sequences", "logprobs", "image_answers")  # server output: in servers/<case>/raw.json, not in the table
RAW_FILE = "raw.json"


@dataclass
class Result:
    case: str
    recipe: str
    fse: bool | None
    served: str = "tiny"  # the generated checkpoint's shape, or the given checkpoint directory
    ok: bool = False
    error: str = ""
    ready_s: float = 0.0
    max_abs_logprob_error: float = float("nan")
    mean_abs_logprob_error: float = float("nan")
    greedy_agreement: float = float("nan")  # near-ties agree (the pass mark's rate)
    greedy_exact_agreement: float = float("nan")
    chat_completion_tokens: int = 0
    fused_in_log: bool | None = None  # what the server log says sglang_ext's Qwen3.5 override did
    image_max_abs_logprob_error: float = float("nan")
    image_mean_abs_logprob_error: float = float("nan")
    image_greedy_agreement: float = float("nan")
    image_greedy_exact_agreement: float = float("nan")
    image_problems: list[str] = field(default_factory=list)  # image chats refused, or prompts unlike the processor's
    # at each greedy miss, how many nats below its own best the reference puts SGLang's token (a near-tie or not)
    greedy_miss_shortfalls: list[float] = field(default_factory=list)
    image_greedy_miss_shortfalls: list[float] = field(default_factory=list)
    # raw server output, for scoring and FSE on/off comparisons
    sequences: list[list[int]] = field(default_factory=list, repr=False)
    logprobs: list[list[float]] = field(default_factory=list, repr=False)
    top2_gaps: list[list[float]] = field(default_factory=list, repr=False)  # per generated token
    image_answers: list[images.Answer] = field(default_factory=list, repr=False)


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


def case_dir(servers: Path, case_name: str) -> Path:
    return servers / case_name.replace(" ", "-")


def _save_raw(result: Result, directory: Path) -> None:
    """What the server answered, as served (before any scoring), so a run can be scored again without a GPU."""
    directory.mkdir(parents=True, exist_ok=True)
    raw = {name: getattr(result, name) for name in RAW_FIELDS if name != "image_answers"}
    raw |= {"image_answers": [asdict(answer) for answer in result.image_answers], "image_problems": result.image_problems}
    (directory / RAW_FILE).write_text(json.dumps(raw) + "\n")


def _load_raw(result: Result, directory: Path) -> None:
    raw = json.loads((directory / RAW_FILE).read_text())
    result.sequences, result.logprobs = raw["sequences"], raw["logprobs"]
    result.image_answers = [images.Answer(**answer) for answer in raw["image_answers"]]
    result.image_problems = raw["image_problems"]


def _serve_and_query(case: Case, sets: list[str], prompts: list[list[int]], pictures: dict[images.Image, Path], log_dir: Path) -> Result:
    result = Result(case.name, case.recipe, case.fse, case.served)
    log_dir = case_dir(log_dir, case.name)
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
                "model": SERVED_NAME, "messages": [{"role": "user", "content": PROMPTS[0]}],
                "max_tokens": 8, "temperature": 0,
            })  # fmt: skip
            result.chat_completion_tokens = chat["usage"]["completion_tokens"]
            _ask_images(server, pictures, result)
    except ServerDidNotStart as error:
        result.error = f"server did not start: {error}"
    except Exception as error:  # a case's failure is a row in the table, not the end of the suite
        result.error = f"{type(error).__name__}: {error}"
    result.fused_in_log = _fusion_from_log(log_dir)
    _save_raw(result, log_dir)
    print(f"{case.name}: {'ready after %.0f s' % result.ready_s if result.ready_s else 'no server'}"
          f"{', ' + result.error if result.error else ''}", flush=True)  # fmt: skip
    return result


def _ask_images(server, pictures: dict[images.Image, Path], result: Result) -> None:
    """One image chat per picture; a refused one is a missed mark of the case, not the end of it."""
    for image, path in pictures.items():
        try:
            response = server.post("/v1/chat/completions", images.chat_request(images.image_url(image, path), SERVED_NAME, IMAGE_NEW_TOKENS))
            result.image_answers.append(images.parse_answer(image.form, response))
        except urllib.error.HTTPError as error:
            result.image_problems.append(f"{image.form}: refused, {error.code} {error.read()[:300].decode(errors='replace')}")
        except ValueError as error:
            result.image_problems.append(f"{image.form}: {error}")


def _fusion_from_log(log_dir: Path) -> bool | None:
    logs = sorted(log_dir.glob("*/server.log"))
    if not logs:
        return None
    text = logs[-1].read_text(errors="replace")
    if "shared expert fused into the routed MoE" in text:
        return True
    return False if "shared expert kept separate" in text else None


def _log_softmax(reference, inputs: dict, device: str):
    import torch

    # PyTorch lets cuDNN run float32 convolutions (the ViT's patch embedding) in TF32; the reference stays float32.
    # (On the H200 the image scores' reference differed from a CPU's by up to 0.01 nats, the text ones' not at all.)
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        return reference(**{name: tensor.to(device) for name, tensor in inputs.items()}).logits[0].float().log_softmax(-1)


def _compare(logprobs, sequence: list[int], server_logprobs: list[float], prompt_length: int):
    """(|Δlogprob| at the last len(server_logprobs) positions: SGLang reports every token after the first of a
    /generate prompt, only the generated ones of a chat; per generated token, how far below the reference's
    best candidate after SGLang's own prefix the reference puts SGLang's token: 0 where it is the argmax)."""
    import torch

    targets = torch.tensor(sequence[1:], device=logprobs.device)
    ours = logprobs[:-1].gather(-1, targets[:, None])[:, 0]
    generated = logprobs[prompt_length - 1 : -1]
    shortfall = (generated.max(-1).values - ours[prompt_length - 1 :]).cpu()
    return (ours[len(sequence) - 1 - len(server_logprobs) :].cpu() - torch.tensor(server_logprobs)).abs(), shortfall


def _summary(compared: list) -> tuple[float, float, float, float, list[float]]:
    """(max and mean |Δlogprob|, greedy agreement with near-ties agreeing, exact greedy agreement, the
    reference's shortfall at each miss, largest first) over every compared sequence."""
    import torch

    errors, shortfalls = torch.cat([e for e, _ in compared]), torch.cat([s for _, s in compared])
    misses = sorted((round(s, 4) for s in shortfalls[shortfalls > 0].tolist()), reverse=True)
    return (errors.max().item(), errors.mean().item(), (shortfalls < NEAR_TIE).float().mean().item(),
            (shortfalls == 0).float().mean().item(), misses)


def _score(result: Result, reference, prompt_lengths: list[int], device: str) -> None:
    import torch

    compared = [_compare(_log_softmax(reference, {"input_ids": torch.tensor([sequence])}, device), sequence, server, length)
                for sequence, server, length in zip(result.sequences, result.logprobs, prompt_lengths)]  # fmt: skip
    (result.max_abs_logprob_error, result.mean_abs_logprob_error, result.greedy_agreement,
     result.greedy_exact_agreement, result.greedy_miss_shortfalls) = _summary(compared)


def _score_images(result: Result, reference, processor, pngs: dict[str, bytes], device: str) -> None:
    """Score each image chat SGLang answered against the reference fed the processor's inputs for the same
    chat, picture and output tokens; a prompt that is not the processor's is a problem, not a score."""
    compared = []
    for answer in result.image_answers:
        inputs = images.reference_inputs(processor, pngs[answer.form], answer.output_ids)
        prompt = inputs["input_ids"][0, : -len(answer.output_ids)].tolist()
        if prompt != answer.prompt_ids:
            image_token = processor.image_token_id
            result.image_problems.append(
                f"{answer.form}: SGLang's prompt has {len(answer.prompt_ids)} tokens ({answer.prompt_ids.count(image_token)} "
                f"image), the processor's {len(prompt)} ({prompt.count(image_token)} image)")  # fmt: skip
            continue
        compared.append(_compare(_log_softmax(reference, inputs, device), prompt + answer.output_ids, answer.logprobs, len(prompt)))
    if compared:
        (result.image_max_abs_logprob_error, result.image_mean_abs_logprob_error, result.image_greedy_agreement,
         result.image_greedy_exact_agreement, result.image_greedy_miss_shortfalls) = _summary(compared)


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
    return {"pair": f"{on.case} vs {off.case}", "recipe": on.recipe, "served": on.served, "sequences": len(prompt_lengths),
            "identical_sequences": len(prompt_lengths) - divergences, "unexplained_divergences": unexplained,
            "max_abs_prompt_logprob_diff": max(prompt_diffs), "mean_abs_prompt_logprob_diff": sum(prompt_diffs) / len(prompt_diffs)}  # fmt: skip


def checkpoints_of(cases: tuple[Case, ...]) -> dict[tuple[str, str], Path]:
    """(recipe, served) -> the checkpoint directory each case serves; generated ones are written here, before
    servers race for them."""
    from launch.recipe import load_recipe
    from sglang_ext.fixtures import Variant, ensure_fixture

    directories: dict[tuple[str, str], Path] = {}
    for case in cases:
        if (case.recipe, case.served) not in directories:
            fixture = load_recipe(case.recipe).recipe.model.fixture
            directories[case.recipe, case.served] = case.checkpoint or ensure_fixture(fixture, variant=Variant(case.shape))
    return directories


def score(results: list[Result], checkpoints: dict[tuple[str, str], Path], prompts: list[list[int]],
          pictures: dict[images.Image, Path], out: Path, device: str) -> None:  # fmt: skip
    """Score every answered case against the float32 reference of its checkpoint's dequantized weights."""
    from transformers import AutoProcessor

    from sglang_ext.formats.dequantize import write_dequantized
    from sglang_ext.formats.reference import reference_model

    pngs = {image.form: path.read_bytes() for image, path in pictures.items()}
    for (recipe, served), checkpoint in checkpoints.items():
        answered = [r for r in results if (r.recipe, r.served) == (recipe, served) and not r.error]
        if not answered:
            continue
        dequantized = write_dequantized(checkpoint, out / "dequantized" / f"{recipe}@{Path(served).name}")
        reference = reference_model(checkpoint, dequantized, device)
        processor = AutoProcessor.from_pretrained(checkpoint)
        for result in answered:
            _score(result, reference, [len(p) for p in prompts], device)
            _score_images(result, reference, processor, pngs, device)
        del reference


def run(cases: tuple[Case, ...], out: Path, parallel: int = 8, tp: int = 1, ep: int = 1) -> tuple[list[Result], list[dict]]:
    import torch

    out.mkdir(parents=True, exist_ok=True)
    checkpoints = checkpoints_of(cases)
    prompts = prompt_ids(next(iter(checkpoints.values())))
    pictures = images.write_pngs(out / "images")
    with ThreadPoolExecutor(parallel) as pool:
        results = list(pool.map(lambda case: _serve_and_query(case, server_sets(case, tp, ep), prompts, pictures, out / "servers"), cases))
    save_run(out / "conformance.json", results, [])  # served, not yet scored: --rescore picks it up after a crash
    score(results, checkpoints, prompts, pictures, out, "cuda" if torch.cuda.is_available() else "cpu")
    pairs = fse_pairs(results, prompts)
    save_run(out / "conformance.json", results, pairs)
    return results, pairs


def fse_pairs(results: list[Result], prompts: list[list[int]]) -> list[dict]:
    return [compare_fse(on, off, [len(p) for p in prompts]) for on in results for off in results
            if (on.recipe, on.served) == (off.recipe, off.served) and on.fse and off.fse is False and not on.error and not off.error]  # fmt: skip


def rescore(out: Path, given: dict[str, Path]) -> tuple[list[Result], list[dict]]:
    """Score a finished run (OUT/conformance.json and each case's raw.json) again with this scorer, e.g. on a
    CPU after a GPU run; `given` (format -> directory) stands in for checkpoint directories the run served
    elsewhere. Writes OUT/rescored.json; ValueError naming what is missing."""
    import torch

    from launch.recipe import load_recipe
    from sglang_ext.fixtures import Variant, ensure_fixture

    results, _ = load_runs([out / "conformance.json"])
    for result in results:
        raw = case_dir(out / "servers", result.case) / RAW_FILE
        if not result.error and not raw.is_file():
            raise ValueError(f"{raw}: missing, so {result.case!r} cannot be scored again (runs before raw.json kept none)")
        if not result.error:
            _load_raw(result, raw.parent)
    checkpoints: dict[tuple[str, str], Path] = {}
    for result in results:
        if (result.recipe, result.served) in checkpoints:
            continue
        recipe = load_recipe(result.recipe).recipe
        if result.served in SHAPES:
            directory = ensure_fixture(recipe.model.fixture, variant=Variant(result.served))
        else:
            directory = given.get(recipe.checkpoint_format, Path(result.served))
        if not directory.is_dir():
            raise ValueError(f"{result.case!r} served {directory}, which is not here: give --checkpoints "
                             f"{recipe.checkpoint_format}=DIR with the same bytes (e.g. the same sglang_ext.quantize "
                             "command's OUT)")  # fmt: skip
        checkpoints[result.recipe, result.served] = directory
    prompts = prompt_ids(next(iter(checkpoints.values())))
    score(results, checkpoints, prompts, images.write_pngs(out / "images"), out, "cuda" if torch.cuda.is_available() else "cpu")
    pairs = fse_pairs(results, prompts)
    save_run(out / "rescored.json", results, pairs)
    return results, pairs


def save_run(path: Path, results: list[Result], pairs: list[dict]) -> None:
    path.write_text(json.dumps(
        {"results": [{k: v for k, v in asdict(r).items() if k not in RAW_FIELDS} for r in results],
         "fse_pairs": pairs}, indent=2) + "\n")  # fmt: skip


def _misses(shortfalls: list[float]) -> str:
    if not shortfalls:
        return ""
    near = sum(s < NEAR_TIE for s in shortfalls)
    return (f" ({len(shortfalls)} misses, {near} at a near-tie, which agree; the reference puts SGLang's token "
            f"{min(shortfalls):.3f}–{max(shortfalls):.3f} nats below its best)")


def case_failures(result: Result) -> list[str]:
    """Why one case misses its pass marks (empty: it passes)."""
    if result.error:
        return [f"{result.case}: {result.error}"]
    max_error, min_agreement = THRESHOLDS[result.recipe]
    fused = bool(result.fse)
    checks = {
        f"max |Δlogprob| {result.max_abs_logprob_error:.4f} ≥ {max_error}": result.max_abs_logprob_error >= max_error,
        f"greedy agreement {result.greedy_agreement:.3f} < {min_agreement}{_misses(result.greedy_miss_shortfalls)}":
            not result.greedy_agreement >= min_agreement,
        "no chat completion tokens": result.chat_completion_tokens <= 0,
        f"server log says fused={result.fused_in_log}, case wants {fused}": result.fused_in_log is not fused,
        f"image max |Δlogprob| {result.image_max_abs_logprob_error:.4f} ≥ {max_error}": result.image_max_abs_logprob_error >= max_error,
        f"image greedy agreement {result.image_greedy_agreement:.3f} < {min_agreement}{_misses(result.image_greedy_miss_shortfalls)}":
            not result.image_greedy_agreement >= min_agreement,
    }
    return [f"{result.case}: {why}" for why, failed in checks.items() if failed] + [f"{result.case}: image {why}" for why in result.image_problems]


def pair_failures(pair: dict) -> list[str]:
    limit = FSE_MAX_PROMPT_LOGPROB_DIFF[pair["recipe"]]
    checks = {
        f"{pair['unexplained_divergences']} generations parted away from a near-tie": pair["unexplained_divergences"] > 0,
        f"prompt logprobs differ by {pair['max_abs_prompt_logprob_diff']:.4f} ≥ {limit}": pair["max_abs_prompt_logprob_diff"] >= limit,
    }
    return [f"FSE {pair['pair']}: {why}" for why, failed in checks.items() if failed]


def failures(results: list[Result], pairs: list[dict]) -> list[str]:
    """Every missed pass mark of a (possibly merged) suite run, including FSE pairs that did not run."""
    missing = {(r.recipe, r.served) for r in results if r.fse} - {(pair["recipe"], pair["served"]) for pair in pairs}
    return ([why for r in results for why in case_failures(r)] + [why for pair in pairs for why in pair_failures(pair)]
            + [f"FSE on/off of {recipe} on {served}: not compared (a case of the pair did not run or failed)" for recipe, served in sorted(missing)])  # fmt: skip


def print_table(results: list[Result], pairs: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"SGLang 0.5.17 vs dequantized float32 reference ({len(PROMPTS)} prompts and {len(images.IMAGES)} "
                        f"image chats, {NEW_TOKENS} and {IMAGE_NEW_TOKENS} greedy tokens each)")  # fmt: skip
    for column in ("case", "FSE", "fused (log)", "ready s", "max |Δlogprob|", "mean |Δlogprob|", "greedy agree (exact)",
                   "image max |Δ|", "image agree (exact)", "chat tokens", "error"):  # fmt: skip
        table.add_column(column)
    for r in results:
        fse = {True: "on", False: "off", None: "n/a"}[r.fse]
        table.add_row(r.case, fse, {True: "yes", False: "no", None: "?"}[r.fused_in_log], f"{r.ready_s:.0f}", f"{r.max_abs_logprob_error:.4f}",
                      f"{r.mean_abs_logprob_error:.4f}", f"{r.greedy_agreement:.3f} ({r.greedy_exact_agreement:.3f})",
                      f"{r.image_max_abs_logprob_error:.4f}", f"{r.image_greedy_agreement:.3f} ({r.image_greedy_exact_agreement:.3f})",
                      str(r.chat_completion_tokens), r.error[:80])  # fmt: skip
    console = Console(width=200)
    console.print(table)
    for pair in pairs:
        console.print(f"FSE {pair['pair']}: prompt logprobs max |Δ| {pair['max_abs_prompt_logprob_diff']:.4f} "
                      f"mean {pair['mean_abs_prompt_logprob_diff']:.5f}; {pair['identical_sequences']}/{pair['sequences']} "
                      f"generations identical, {pair['unexplained_divergences']} parted away from a near-tie")  # fmt: skip


def print_plan(cases: tuple[Case, ...], tp: int, ep: int) -> None:
    """Each case's checkpoint (generated now where the suite generates it) and the launcher command that
    serves it, its --set items validated as the launcher validates them."""
    from rich.console import Console
    from rich.table import Table

    from launch.recipe import load_recipe

    checkpoints = checkpoints_of(cases)
    table = Table(title=f"{len(cases)} cases, one server each", show_lines=True)
    for column in ("case", "FSE", "checkpoint", "server"):
        table.add_column(column, overflow="fold")
    for case in cases:
        sets = server_sets(case, tp, ep)
        load_recipe(case.recipe, sets)
        command = shlex.join(["python", "-m", "launch", case.recipe, *[arg for item in sets for arg in ("--set", item)]])
        table.add_row(case.name, {True: "on", False: "off", None: "n/a"}[case.fse], str(checkpoints[case.recipe, case.served]), command)
    Console(width=200).print(table)


def load_runs(paths: list[Path]) -> tuple[list[Result], list[dict]]:
    """Results and FSE pairs of earlier runs; ValueError naming the file that is not a conformance.json."""
    results, pairs = [], []
    for path in paths:
        try:
            saved = json.loads(path.read_text())
            if any("served" not in pair for pair in saved["fse_pairs"]):
                raise KeyError("fse_pairs[].served: written before --shapes and --checkpoints, rerun it")
            results += [Result(**row) for row in saved["results"]]
            pairs += saved["fse_pairs"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path}: not a conformance.json this script wrote ({type(error).__name__}: {error}); "
                             "pass the conformance.json in a run's --out folder") from error  # fmt: skip
    return results, pairs


def _shapes(text: str) -> tuple[str, ...]:
    shapes = tuple(text.split(","))
    if unknown := [shape for shape in shapes if shape not in SHAPES]:
        raise argparse.ArgumentTypeError(f"no shape {', '.join(unknown)}; the shapes: {', '.join(SHAPES)}")
    return shapes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.gpu.conformance")
    parser.add_argument("--cases", help="comma-separated case labels (default: all)")
    parser.add_argument("--shapes", "--shape", type=_shapes, metavar="SHAPE[,SHAPE]",
                        help="generated checkpoints of these fixture shapes (default tiny); tiny-top10: the tiny model routed "
                             "as Qwen3.5-397B-A17B (top-10 of 32 experts, 11 slots with FSE)")  # fmt: skip
    parser.add_argument("--checkpoints", type=given_checkpoint, nargs="+", metavar="FORMAT=DIR",
                        help="serve these checkpoint directories (e.g. written by python -m sglang_ext.quantize) instead of "
                             "generated ones, each as the tiny recipe of its format")  # fmt: skip
    parser.add_argument("--tp", type=int, default=1, help="tensor parallelism of every server")
    parser.add_argument("--ep", type=int, default=1, help="expert parallelism of every server")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "runs")) / "conformance")
    parser.add_argument("--merge", type=Path, nargs="+", metavar="JSON", help="print one table from these runs' conformance.json")
    parser.add_argument("--rescore", type=Path, metavar="OUT", help="score a finished run's saved answers again, no server "
                        "(a CPU will do); --checkpoints FORMAT=DIR where its checkpoint directories are elsewhere now")  # fmt: skip
    parser.add_argument("--dry-run", action="store_true", help="build the checkpoints and print each server's launcher command; serve nothing")
    args = parser.parse_args(argv)
    if args.rescore:
        try:
            results, pairs = rescore(args.rescore, dict(args.checkpoints or ()))
        except ValueError as error:
            parser.error(f"--rescore {error}")
    elif args.merge:
        try:
            results, pairs = load_runs(args.merge)
        except ValueError as error:
            parser.error(f"--merge {error}")
    else:
        if args.shapes and args.checkpoints:
            parser.error("--shapes picks generated checkpoints, --checkpoints serves yours instead: give one of them")
        try:
            everything = plan(args.shapes or ("tiny",), tuple(args.checkpoints or ()))
        except ValueError as error:
            parser.error(f"--checkpoints: {error}")
        wanted = set(args.cases.split(",")) if args.cases else {case.label for case in everything}
        if unknown := wanted - {case.label for case in everything}:
            parser.error(f"--cases: no case {', '.join(sorted(unknown))}; the cases: {', '.join(dict.fromkeys(c.label for c in everything))}")
        cases = tuple(case for case in everything if case.label in wanted)
        if args.dry_run:
            try:
                print_plan(cases, args.tp, args.ep)
            except LaunchError as error:
                parser.error(str(error))
            return 0
        if reason := gpu_unavailable():
            print(f"conformance: {reason}, so nothing is served (--dry-run prints the plan)", file=sys.stderr)
            return 1
        results, pairs = run(cases, args.out, tp=args.tp, ep=args.ep)
    print_table(results, pairs)
    missed = failures(results, pairs)
    print("\n".join(f"FAIL {why}" for why in missed) or f"PASS: {len(results)} cases, {len(pairs)} FSE pairs")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Speculative decoding ≡ plain decoding, on real SGLang, for checkpoints whose MTP head drafts what the main
model will say at a known share P (`--mtp-acceptance`, sglang_ext/fixtures/predictable_mtp.py).

For each format and fixture shape (`tiny`; `tiny-top10`, the 397B's routing: top-10 of 32 experts), one
checkpoint is served by the launcher plain, under NEXTN 5/1/6 (card 001) and NEXTN 3/1/4 (InferenceX), all
with card 001's cache settings (page size 64, mamba radix cache extra_buffer), and under EAGLE 3/1/4 with
the MI355X `-mtp` twins' page size 16 and no radix cache; CUDA graphs on, fp8 KV for NVFP4 as card 001
serves it. 32 greedy prompts go in one batch, half of them sharing a 400-token prefix, each asking for
NEW_TOKENS tokens; the batch is sent twice, the second time out of the radix cache where there is one
(prefix hits, DeltaNet states restored from the extra buffer). Against the plain server's first round,
every round of every server must give

* the same tokens, except where they part at a near-tie (top-2 gap < NEAR_TIE nats in either run);
* the same logprobs of the top-2 candidates up to that point (|Δ| under the format's mark, `logprob_tol`): a wrong recurrent state
  after a rejected draft shows there even when the argmax survives it;
* under NEXTN, an accept length inside the band P implies (sum of P^j, j = 0..steps).

    python -m tests.gpu.spec_conformance [--formats bf16,int8] [--shapes tiny,tiny-top10] [--cases ...]
        [--acceptance 0.8] [--tp 1] [--parallel 4] [--out DIR]
        [--while-plain 'SHELL COMMAND']   # run against the plain server (BASE_URL and MODEL set), e.g. the kits

Prints one table and writes spec_conformance.json; exit 1 if any pass mark is missed. Each server's rounds are
kept in --out/cases/ as they finish; a rerun with the same --out serves only the cases not yet there.
`--parallel N` serves N at a time on one GPU, each with pools capped (PARALLEL_POOLS) so that one server's
allocations cannot empty the memory another is measuring while it starts.
"""

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.error
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tests.gpu.serving import REPO, ServerDidNotStart, served

FORMAT_RECIPES = {"bf16": "tiny-bf16", "int8": "tiny-int8", "ct-mxfp4": "tiny-ct-mxfp4", "nvfp4": "tiny-nvfp4",
                  "mxfp4-fse": "tiny-mxfp4-fse"}  # fmt: skip
SHAPES = ("tiny", "tiny-top10")
# A batch holds 32 × ≤ 580 tokens; 512 DeltaNet slots cover its requests, the extra buffer and cached prefixes.
PARALLEL_POOLS = ("max-total-tokens=131072", "max-mamba-cache-size=512")
PROMPTS, SHARED, NEW_TOKENS = 32, 16, 128
# The drafting settings and the cache settings that go with them are the recipes': card 001's 397B NVFP4 MTP
# recipe, the 35B H100 MTP recipe's InferenceX depth (it sets no cache, so it runs with card 001's), and the
# MI355X MTP twin's EAGLE with page 16 and no radix cache.
CARD_001 = "qwen3.5-397b-nvfp4-rtxpro6000-mtp"
DRAFTING_RECIPES = ((CARD_001, CARD_001), ("qwen3.5-35b-mxfp4-h100-mtp", CARD_001),
                    ("qwen3.5-397b-mxfp4-fse-mi355x-mtp", "qwen3.5-397b-mxfp4-fse-mi355x-mtp"))  # fmt: skip
DRAFT_KEYS = ("speculative-algorithm", "speculative-num-steps", "speculative-eagle-topk", "speculative-num-draft-tokens")
CACHE_KEYS = ("page-size", "mamba-radix-cache-strategy", "disable-radix-cache")


def recipe_sets(recipe: str, keys: tuple[str, ...]) -> tuple[str, ...]:
    """`recipe`'s server_args among `keys`, as the launcher's `--set KEY=VALUE` items."""
    from launch.recipe import load_recipe

    args = load_recipe(recipe).recipe.server_args
    return tuple(f"{key}={str(args[key]).lower() if isinstance(args[key], bool) else args[key]}" for key in keys if key in args)


@dataclass(frozen=True)
class Spec:
    """How a case's server decodes: its cache settings and, when it drafts, its speculative settings."""

    cache: tuple[str, ...]
    draft: tuple[str, ...] = ()

    def _value(self, key: str) -> str | None:
        return next((item.split("=", 1)[1] for item in self.draft if item.startswith(f"{key}=")), None)

    @property
    def algorithm(self) -> str | None:
        return self._value("speculative-algorithm")

    @property
    def steps(self) -> int:
        return int(self._value("speculative-num-steps") or 0)

    @property
    def name(self) -> str:
        shape = (self._value(key) for key in DRAFT_KEYS[1:])
        return f"{self.algorithm.lower()}-{'-'.join(shape)}" if self.algorithm else "plain"

    @property
    def radix(self) -> bool:
        return "disable-radix-cache=true" not in self.cache

    @property
    def sets(self) -> tuple[str, ...]:
        return self.cache + self.draft


def _cases() -> dict[str, Spec]:
    drafting = [Spec(recipe_sets(cache, CACHE_KEYS), recipe_sets(recipe, DRAFT_KEYS)) for recipe, cache in DRAFTING_RECIPES]
    return {spec.name: spec for spec in (Spec(recipe_sets(CARD_001, CACHE_KEYS)), *drafting)}


SPEC = _cases()  # plain, nextn-5-1-6, nextn-3-1-4, eagle-3-1-4
NEAR_TIE = 0.1
LOGPROB_TOL = 0.3  # BF16 kernels in another order (verify is an extend, plain a decode), over a ~7-nat top-2 gap
# Activations quantized to FP4 per 32-block (W4A4): a last-bit change before quantization can move an element a
# whole FP4 step, so kernel order shows as jumps. On the H200 the plain MXFP4-FSE server (FSE off) answering
# the same batch again from its radix cache moved a top-2 logprob by 0.305 (one position in ~4,000).
LOGPROB_TOL_FP4_ACTIVATIONS = 1.0
FP4_ACTIVATIONS = frozenset({"mxfp4-fse"})
ACCEPT_BAND = (0.85, 1.15)  # around the expected accept length; the prefill's token and the last step skew it


@dataclass
class Round:
    tokens: list[list[int]] = field(default_factory=list)
    top2: list[list[tuple[float, float]]] = field(default_factory=list)  # logprobs of the two best, per token
    top2_ids: list[list[tuple[int, int]]] = field(default_factory=list)
    accept_length: float | None = None  # completion tokens / verify steps over the batch
    cached_tokens: int = 0


@dataclass
class CaseResult:
    fmt: str
    case: str
    ready_s: float = 0.0
    shape: str = "tiny"
    error: str = ""
    rounds: list[Round] = field(default_factory=list)
    plain_hook: dict | None = None


def served_as(fmt: str, shape: str) -> str:
    """What a checkpoint is called in the table: the format, and its shape unless tiny."""
    return fmt if shape == "tiny" else f"{fmt}@{shape}"


def logprob_tol(fmt: str) -> float:
    return LOGPROB_TOL_FP4_ACTIVATIONS if fmt in FP4_ACTIVATIONS else LOGPROB_TOL


def saved_case(out: Path, fmt: str, shape: str, case: str) -> Path:
    """Where one server's rounds are kept (names a device's file transfer takes: no '@')."""
    return out / "cases" / f"{fmt}{'' if shape == 'tiny' else '-' + shape}-{case}.json"


def expected_accept_length(acceptance: float, steps: int) -> float:
    return sum(acceptance**j for j in range(steps + 1))


def prompts() -> list[list[int]]:
    """GSM8K train questions (tests/data) cut at different lengths, so each greedy path starts from another
    token; the second half shares a ~400-token prefix."""
    from transformers import AutoTokenizer

    from sglang_ext.fixtures.model_config import TOKENIZER_DIR

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    questions = [json.loads(line)["question"] for line in (REPO / "tests" / "data" / "gsm8k" / "train.jsonl").open()]
    ids = [tokenizer(q)["input_ids"] for q in questions]
    prefix = [token for q in ids[:12] for token in q][:400]
    alone = [ids[i % len(ids)][: 6 + i] for i in range(PROMPTS - SHARED)]
    shared = [prefix + ids[(i + 7) % len(ids)][: 3 + i] for i in range(SHARED)]
    return alone + shared


def _round(server, batch: list[list[int]]) -> Round:
    body = {"input_ids": batch, "sampling_params": {"temperature": 0, "max_new_tokens": NEW_TOKENS, "ignore_eos": True},
            "return_logprob": True, "top_logprobs_num": 2}  # fmt: skip
    try:
        outputs = server.post("/generate", body)
    except urllib.error.HTTPError as error:  # tokens alone still say whether decoding matches
        print(f"logprobs refused ({error.code}: {error.read()[:200]!r}); comparing tokens only", flush=True)
        outputs = server.post("/generate", {**body, "return_logprob": False, "top_logprobs_num": 0})
    result = Round()
    completion = verify = 0
    for output in outputs:
        meta = output["meta_info"]
        tokens = output.get("output_ids") or [token for _, token, _ in meta["output_token_logprobs"]]
        tops = meta.get("output_top_logprobs") or [[(0.0, -1, None), (-99.0, -2, None)]] * len(tokens)
        result.tokens.append(list(tokens))
        result.top2.append([(top[0][0], top[1][0]) for top in tops])
        result.top2_ids.append([(top[0][1], top[1][1]) for top in tops])
        result.cached_tokens += meta.get("cached_tokens", 0)
        completion += meta["completion_tokens"]
        verify += meta.get("spec_verify_ct", 0)
    result.accept_length = completion / verify if verify else None
    return result


def card_001_kv(fmt: str) -> tuple[str, ...]:
    """Card 001's KV cache dtype for the format it serves (NVFP4: fp8), none for the others."""
    from launch.recipe import load_recipe

    if load_recipe(FORMAT_RECIPES[fmt]).recipe.checkpoint_format != load_recipe(CARD_001).recipe.checkpoint_format:
        return ()
    return recipe_sets(CARD_001, ("kv-cache-dtype",))


def server_sets(fmt: str, shape: str, case: str, args: argparse.Namespace) -> list[str]:
    """The launcher's `--set` items for one case; later items win, so `--set` from the command line last."""
    sets = [f"model.fixture_mtp_acceptance={args.acceptance}", f"model.fixture_shape={shape}", *SPEC[case].sets,
            *card_001_kv(fmt), f"cuda-graph-max-bs-decode={PROMPTS}", f"tp-size={args.tp}"]  # fmt: skip
    if args.ep > 1:
        sets.append(f"ep-size={args.ep}")
    if args.parallel > 1:
        sets += PARALLEL_POOLS
    return sets + args.set


def write_checkpoints(checkpoints: set[tuple[str, str]], acceptance: float) -> None:
    """Each checkpoint the cases serve, written before any server starts: servers started side by side
    would otherwise each write it and replace the files another one is loading."""
    from launch.recipe import load_recipe
    from sglang_ext.fixtures import Variant, ensure_fixture

    for fmt, shape in sorted(checkpoints):
        ensure_fixture(load_recipe(FORMAT_RECIPES[fmt]).recipe.model.fixture, variant=Variant(shape, acceptance))


def run_case(fmt: str, shape: str, case: str, batch: list[list[int]], args: argparse.Namespace) -> CaseResult:
    """One server's rounds; kept in --out as soon as they are in, and read back instead of served again, so
    a suite cut short by a time limit resumes where it stopped."""
    saved = saved_case(args.out, fmt, shape, case)
    if saved.is_file():
        result = CaseResult(**json.loads(saved.read_text()))
        result.rounds = [Round(**{**r, "top2": [[tuple(p) for p in seq] for seq in r["top2"]],
                                  "top2_ids": [[tuple(p) for p in seq] for seq in r["top2_ids"]]}) for r in result.rounds]  # fmt: skip
        print(f"{served_as(fmt, shape)} {case}: done in an earlier run ({saved})", flush=True)
        return result
    result = _serve_case(fmt, shape, case, batch, args)
    if not result.error:
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(asdict(result)) + "\n")
    return result


def _serve_case(fmt: str, shape: str, case: str, batch: list[list[int]], args: argparse.Namespace) -> CaseResult:
    result = CaseResult(fmt, case, shape=shape)
    name = served_as(fmt, shape)
    try:
        with served(FORMAT_RECIPES[fmt], server_sets(fmt, shape, case, args), args.out / "servers" / f"{name}-{case}") as server:
            result.ready_s = server.ready_s
            result.rounds = [_round(server, batch), _round(server, batch)]
            if case == "plain" and args.while_plain:
                result.plain_hook = _hook(args.while_plain, server.base_url, args.out / f"while-plain-{name}.log")
    except (ServerDidNotStart, OSError, KeyError, ValueError) as error:
        result.error = f"{type(error).__name__}: {error}"[:400]
    print(f"{name} {case}: {'ready after %.0f s' % result.ready_s if result.ready_s else 'no server'}"
          f"{', ' + result.error if result.error else ''}", flush=True)  # fmt: skip
    return result


def _hook(command: str, base_url: str, log: Path) -> dict:
    started = time.monotonic()
    with log.open("w") as handle:
        done = subprocess.run(command, shell=True, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT,
                              env={**os.environ, "BASE_URL": base_url, "MODEL": "tiny-qwen3.5-moe"})  # fmt: skip
    return {"command": command, "exit": done.returncode, "seconds": round(time.monotonic() - started), "log": str(log)}


def compare(plain: Round, other: Round) -> dict:
    """Token identity (divergences explained by near-ties or not) and top-2 logprob agreement up to them."""
    identical = near_tie = unexplained = 0
    max_delta = 0.0
    for i, (want, got) in enumerate(zip(plain.tokens, other.tokens)):
        parted = next((j for j, (a, b) in enumerate(zip(want, got)) if a != b), None)
        same = len(want) if parted is None else parted
        for j in range(same):
            if plain.top2_ids[i][j] == other.top2_ids[i][j]:
                max_delta = max(max_delta, *(abs(a - b) for a, b in zip(plain.top2[i][j], other.top2[i][j])))
        if parted is None:
            identical += 1
            continue
        gaps = (plain.top2[i][parted][0] - plain.top2[i][parted][1], other.top2[i][parted][0] - other.top2[i][parted][1])
        near_tie += min(gaps) < NEAR_TIE
        unexplained += min(gaps) >= NEAR_TIE
    return {"identical": identical, "near_tie": near_tie, "unexplained": unexplained, "max_top2_logprob_delta": max_delta}


def score(results: list[CaseResult], acceptance: float) -> tuple[list[dict], list[str]]:
    rows, failures = [], []
    plains = {(r.fmt, r.shape): r for r in results if r.case == "plain" and not r.error}
    for r in results:
        name = served_as(r.fmt, r.shape)
        if r.error or (r.fmt, r.shape) not in plains:
            failures.append(f"{name} {r.case}: {r.error or 'no plain server to compare with'}")
            continue
        spec = SPEC[r.case]
        expected = expected_accept_length(acceptance, spec.steps) if spec.algorithm else None
        for index, served_round in enumerate(r.rounds):
            row = {"format": name, "case": r.case, "round": index + 1, "ready_s": round(r.ready_s),
                   "cached_tokens": served_round.cached_tokens, "accept_length": served_round.accept_length,
                   "expected_accept_length": expected, "logprob_mark": logprob_tol(r.fmt),
                   **compare(plains[r.fmt, r.shape].rounds[0], served_round)}  # fmt: skip
            rows.append(row)
            where = f"{name} {r.case} round {index + 1}"
            if row["unexplained"]:
                failures.append(f"{where}: {row['unexplained']} outputs part from plain decoding away from a near-tie")
            if row["max_top2_logprob_delta"] >= logprob_tol(r.fmt):
                failures.append(f"{where}: top-2 logprobs differ by {row['max_top2_logprob_delta']:.3f} ≥ {logprob_tol(r.fmt)}")
            if expected and not (ACCEPT_BAND[0] * expected <= (row["accept_length"] or 0) <= ACCEPT_BAND[1] * expected):
                failures.append(f"{where}: accept length {row['accept_length']} outside {ACCEPT_BAND} × {expected:.2f}")
            if index == 1 and spec.radix and not row["cached_tokens"]:
                failures.append(f"{where}: the repeated batch hit no radix-cached prefix")
        if r.plain_hook and r.plain_hook["exit"]:
            failures.append(f"{name}: --while-plain exited {r.plain_hook['exit']} (log {r.plain_hook['log']})")
    return rows, failures


def print_table(rows: list[dict], acceptance: float) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Speculative vs plain greedy decoding, SGLang 0.5.17, MTP head acceptance P = {acceptance} "
                        f"({PROMPTS} prompts × {NEW_TOKENS} tokens per round)")  # fmt: skip
    for column in ("format", "case", "round", "ready s", "cached tok", "identical", "near-tie", "unexplained",
                   "max |Δ top-2 logprob|", "mark", "accept length", "expected"):  # fmt: skip
        table.add_column(column)
    for row in rows:
        accept = f"{row['accept_length']:.2f}" if row["accept_length"] else "-"
        expected = f"{row['expected_accept_length']:.2f}" if row["expected_accept_length"] else "-"
        table.add_row(row["format"], row["case"], str(row["round"]), str(row["ready_s"]), str(row["cached_tokens"]),
                      f"{row['identical']}/{PROMPTS}", str(row["near_tie"]), str(row["unexplained"]),
                      f"{row['max_top2_logprob_delta']:.4f}", f"{row['logprob_mark']:g}", accept, expected)  # fmt: skip
    Console(width=180).print(table)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.gpu.spec_conformance", description=__doc__.split("\n\n")[0])
    parser.add_argument("--formats", default="bf16,int8,ct-mxfp4,nvfp4,mxfp4-fse", help=f"of {', '.join(FORMAT_RECIPES)}")
    parser.add_argument("--shapes", default="tiny", help=f"the generated checkpoints' shapes, of {', '.join(SHAPES)}")
    parser.add_argument("--cases", default=",".join(SPEC), help=f"of {', '.join(SPEC)} (plain always runs)")
    parser.add_argument("--acceptance", type=float, default=0.8, help="the MTP head's share P (default 0.8)")
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--ep", type=int, default=1)
    parser.add_argument("--parallel", type=int, default=1, choices=range(1, 9), metavar="1..8",
                        help="servers at a time on one GPU, pools capped (default 1: the recipes' own pools)")  # fmt: skip
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="another --set for every server")
    parser.add_argument("--while-plain", help="shell command to run against each plain server (BASE_URL, MODEL set)")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "runs")) / "spec-conformance")
    args = parser.parse_args()
    formats, shapes = args.formats.split(","), args.shapes.split(",")
    cases = ["plain", *(c for c in args.cases.split(",") if c != "plain")]
    unknown = [f for f in formats if f not in FORMAT_RECIPES] + [s for s in shapes if s not in SHAPES] + [c for c in cases if c not in SPEC]
    if unknown:
        parser.error(f"unknown format, shape or case: {', '.join(unknown)}")
    args.out.mkdir(parents=True, exist_ok=True)
    batch = prompts()
    work = [(fmt, shape, case) for fmt in formats for shape in shapes for case in cases]
    write_checkpoints({(fmt, shape) for fmt, shape, case in work if not saved_case(args.out, fmt, shape, case).is_file()}, args.acceptance)
    with ThreadPoolExecutor(args.parallel) as pool:
        results = list(pool.map(lambda item: run_case(*item, batch, args), work))
    rows, failures = score(results, args.acceptance)
    (args.out / "spec_conformance.json").write_text(json.dumps(
        {"acceptance": args.acceptance, "tp": args.tp, "ep": args.ep, "parallel": args.parallel, "rows": rows, "failures": failures,
         "cases": [{k: v for k, v in asdict(r).items() if k != "rounds"} for r in results]}, indent=2) + "\n")  # fmt: skip
    print_table(rows, args.acceptance)
    print("\n".join(f"FAIL {why}" for why in failures) or f"PASS: {len(results)} servers, {len(rows)} rounds")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

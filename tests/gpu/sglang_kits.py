"""SGLang's own server test kits, unchanged, against a server this repository's launcher started.

SGLang 0.5.17 ships its server test mixins inside the wheel (`sglang/test/kits/`); each probes a running
server through `self.base_url` and `self.model`. Here each mixin becomes one unittest case bound to the
server, run as SGLang runs them, and every test's outcome is kept:

* `basic_api_contract_kit.BasicAPIContractMixin`: health, server/model info, OpenAI chat and completions;
* `matched_stop_kit.MatchedStopMixin`: finish_reason / matched_stop for stop strings, stop regexes, EOS, length;
* `json_constrained_kit.JSONConstrainedMixin`: JSON-schema-constrained output (needs a grammar backend).

    python -m tests.gpu.sglang_kits --base-url http://127.0.0.1:30000 --model tiny-qwen3.5-moe [--out DIR]

Prints one line per test and writes kits.json; exit 1 if any test failed.
"""

import argparse
import io
import json
import os
import re
import sys
import unittest
from pathlib import Path

KITS = (
    ("sglang.test.kits.basic_api_contract_kit", "BasicAPIContractMixin"),
    ("sglang.test.kits.matched_stop_kit", "MatchedStopMixin"),
    ("sglang.test.kits.json_constrained_kit", "JSONConstrainedMixin"),
)


def kit_cases(base_url: str, model: str) -> list[type]:
    import importlib

    from sglang.test.test_utils import CustomTestCase

    cases = []
    for module, mixin_name in KITS:
        mixin = getattr(importlib.import_module(module), mixin_name)
        bound = {"base_url": base_url, "model": model, "served_model_name": model}
        cases.append(type(mixin_name.removesuffix("Mixin"), (mixin, CustomTestCase), bound))
    return cases


def run(base_url: str, model: str) -> list[dict]:
    outcomes = []
    for case in kit_cases(base_url, model):
        suite = unittest.defaultTestLoader.loadTestsFromTestCase(case)
        names = [test.id() for test in suite]  # a run empties the suite
        result = unittest.TextTestRunner(stream=io.StringIO(), verbosity=0).run(suite)
        failed = {test.id(): text for test, text in (*result.failures, *result.errors)}
        for name in names:
            text = failed.get(name, "")
            outcomes.append({"kit": case.__name__, "test": name.rsplit(".", 1)[1], "ok": not text, "error": _cause(text)})
    return outcomes


def _cause(traceback_text: str) -> str:
    """The failing assertion of a traceback; CustomTestCase's retry wrapper adds its own last line."""
    lines = [line for line in traceback_text.splitlines() if re.match(r"^[\w.]+(Error|Exception)\b", line)]
    causes = [line for line in lines if "retry() exceed" not in line]
    return (causes or lines or [""])[-1]


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.gpu.sglang_kits", description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--model", required=True, help="served model name")
    parser.add_argument("--label", default="", help="what the server is (recipe and settings), for the report")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "runs")) / "kits")
    args = parser.parse_args()
    outcomes = run(args.base_url.rstrip("/"), args.model)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"kits{'-' + args.label if args.label else ''}.json").write_text(json.dumps(
        {"server": args.label, "base_url": args.base_url, "tests": outcomes}, indent=2) + "\n")  # fmt: skip
    for o in outcomes:
        print(f"{'PASS' if o['ok'] else 'FAIL'}  {args.label}  {o['kit']}.{o['test']}  {o['error'][:160]}")
    passed = sum(o["ok"] for o in outcomes)
    print(f"{passed}/{len(outcomes)} kit tests passed against {args.label or args.base_url}")
    return 0 if passed == len(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())

"""The SGLang-layer tests under each supported SGLang release other than the one installed here.

The project's venv holds the `serve` extra's SGLang (0.5.17, the release its GPU suites serve with). Every other
release in `sglang_ext.SUPPORTED_SGLANG` gets a venv of its own beside it, `.venv-sglang-<release>`: that SGLang
with its own pins (0.5.23: torch 2.14.1, transformers 5.19.0) and the project's `sglang-tests` extra, in which
the test files that exercise SGLang run as they do here: its loaders, schemes and `process_weights_after_loading`
for every format, its option parser, `python -m launch --list` and `--dry-run` of every recipe.

`python -m pytest` runs it (tests/test_sglang_releases.py; deselect with `-m "not sglang_matrix"`);
`python -m tests.sglang_matrix [RELEASE ...]` runs it alone. A venv is kept and brought up to date on the next
run, so only the first costs the install (about 10 GB, 5 minutes).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from launch.sglang_options import installed_sglang_version
from sglang_ext import SUPPORTED_SGLANG

REPO = Path(__file__).resolve().parent.parent

# The files that build SGLang's own classes or parse with its parser, or run the launcher against it.
SGLANG_LAYER_TESTS = (
    "tests/test_supported_sglang.py",
    "tests/test_qwen3_5_override_sglang.py",
    "tests/test_quark_int8_sglang.py",
    "tests/test_quark_mxfp4_cuda_sglang.py",
    "tests/test_quantize_sglang.py",
    "tests/test_moe_configs.py",
    "tests/test_sglang_options.py",
    "tests/test_recipes.py",
    "tests/test_launcher.py",
    "tests/test_memory_plan.py",
    "tests/test_topology.py",
)


@dataclass(frozen=True)
class Outcome:
    release: str
    returncode: int
    counts: dict[str, int]  # tests, failures, errors, skipped
    skips: list[str]  # each skipped test's reason
    output: str

    @property
    def summary(self) -> str:
        c = self.counts
        passed = c["tests"] - c["failures"] - c["errors"] - c["skipped"]
        return (f"SGLang {self.release}: {passed} passed, {c['failures']} failed, {c['errors']} errors, "
                f"{c['skipped']} skipped")  # fmt: skip


def other_releases() -> list[str]:
    installed = (installed_sglang_version() or "").split("+")[0]
    return [release for release in SUPPORTED_SGLANG if release != installed]


def venv_python(release: str) -> Path:
    """`.venv-sglang-<release>`'s interpreter, the venv made or brought up to date first."""
    venv = REPO / f".venv-sglang-{release}"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    install = [str(python), "-m", "pip", "install", "-q", "-e", f"{REPO}[sglang-tests]", f"sglang=={release}"]
    done = subprocess.run(install, cwd=REPO, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"installing SGLang {release} into {venv} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return python


def run(release: str) -> Outcome:
    python = venv_python(release)
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "junit.xml"
        done = subprocess.run(
            [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", *SGLANG_LAYER_TESTS],
            cwd=REPO, capture_output=True, text=True,
        )  # fmt: skip
        suite = ET.parse(report).getroot().find("testsuite") if report.exists() else None
    counts = {key: int(suite.get(key, 0)) if suite is not None else 0 for key in ("tests", "failures", "errors", "skipped")}
    skips = [skip.get("message", "") for skip in suite.iter("skipped")] if suite is not None else []
    return Outcome(release, done.returncode, counts, skips, done.stdout + done.stderr)


def main(argv: list[str] | None = None) -> int:
    cli = argparse.ArgumentParser(prog="python -m tests.sglang_matrix", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    cli.add_argument("releases", nargs="*", metavar="RELEASE", help="default: every supported release but this venv's")
    releases = cli.parse_args(argv).releases or other_releases()
    unknown = [release for release in releases if release not in SUPPORTED_SGLANG]
    if unknown:
        cli.error(f"{', '.join(unknown)}: not a release sglang_ext supports ({', '.join(SUPPORTED_SGLANG)})")
    failed = 0
    for release in releases:
        outcome = run(release)
        print(outcome.output[-4000:] if outcome.returncode else "", outcome.summary, sep="")
        failed += outcome.returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

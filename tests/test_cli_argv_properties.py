"""Property tests over every command line's argv: `python -m launch`, `python -m eval`, `python -m
sglang_ext.fixtures`, `python -m sglang_ext.inspect` and `python -m sglang_ext.quantize`, given drawn flags and values (numbers out of range,
empty, unicode, YAML-looking text, paths that are files, missing or unwritable), end with exit 0, 1 or 2 and,
when they fail, one error line that names the argument (with the fix, or argparse's usage), never a traceback.

Each CLI's `main(argv)` runs in this process, as `python -m` runs it. Nothing reaches the network, a GPU or a
server: the launcher always plans (`--dry-run`), the evals are pointed at a port where nothing listens (their
checks of the arguments come before any request), and the fixture writer's shapes are the tiny ones.

CI runs the derandomized `ci` profile (100 cases per CLI); `HYPOTHESIS_PROFILE=sweep python -m pytest
tests/test_cli_argv_properties.py` draws 2,000 fresh cases per CLI (tests/conftest.py).
"""

from __future__ import annotations

import contextlib
import io
import re
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from launch import __main__ as launch_cli
from sglang_ext import inspect as inspect_cli
from sglang_ext.fixtures import __main__ as fixtures_cli
from sglang_ext.quantize import __main__ as quantize_cli

# Text a user might type, or mistype: empty, unicode, YAML-looking, flag-looking, numbers out of range.
TYPED = st.one_of(
    st.sampled_from(["", " ", "0", "-1", "-5", "1e309", "nan", "inf", "2**70", "99999999999999999999", "null", "~",
                     "true", "::", "[1, 2", "{a: b}", "{a: [", "- x", "&anchor", "!!python/object:os.system", "a: b: c",
                     "'", '"', "--", "-x", "=", "tp-size", "ünïcødé", "模型", "🙂", "\t", "a\nb", "%s", "${HOME}"]),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12),
)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def places(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Paths of every kind a user may give: a file, a path under a file, missing, unwritable (root may write
    anywhere else), a fresh directory, an empty one, a checkpoint, unicode."""
    root = tmp_path_factory.mktemp("places")
    (root / "file").write_text("not a directory\n")
    (root / "empty").mkdir()
    from sglang_ext.fixtures import write_fixture

    write_fixture(root / "checkpoint", "bf16")
    _warm_up()
    return {
        "file": str(root / "file"),
        "under-a-file": str(root / "file" / "sub"),
        "missing": str(root / "missing" / "deeper"),
        "unwritable": "/proc/sglang-ext-test/out",
        "fresh": str(root / "fresh"),
        "empty": str(root / "empty"),
        "checkpoint": str(root / "checkpoint"),
        "unicode": str(root / "ünï 模型"),
        "empty-text": "",
    }


def _warm_up() -> None:
    """Import once what the first case would import (SGLang's option parser, lm-eval), so that no case's time
    is an import's."""
    import importlib

    from launch.recipe import load_recipe

    load_recipe("tiny-bf16")
    for module in ("eval.gsm8k", "eval.mmlu_pro", "eval.wikitext", "eval.speed", "eval.chat"):
        importlib.import_module(module)


def _path(places: dict[str, str]) -> st.SearchStrategy[str]:
    return st.sampled_from(sorted(places)).map(places.__getitem__)


def run(main: Callable[[list[str]], int], argv: list[str]) -> tuple[int, str]:
    """Exit status and everything printed, as `python -m` would end (argparse's exit included)."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        try:
            status = main(argv)
        except SystemExit as exited:
            status = exited.code
    return status, printed.getvalue()


def check_ending(argv: list[str], status: int, printed: str) -> None:
    assert status in (0, 1, 2), (argv, status, printed[-2000:])
    assert "Traceback" not in printed, (argv, printed[-4000:])
    if status == 0:
        return
    errors = [line for line in printed.splitlines() if "error:" in line]
    assert len(errors) == 1, (argv, printed[-3000:])
    message = printed[printed.index(errors[0]) :]
    flat = " ".join(message.split())  # rich wraps long lines
    named = [token for token in argv
             if repr(token) in message or token.strip() and any(" ".join(part.split()) in flat for part in (token, token.split("=")[0]) if part.strip())]  # fmt: skip
    missing = re.search(r"--[a-z]|arguments are required", message)  # it names the flag or argument not given
    assert named or missing, (argv, message)
    assert "fix:" in message or "usage:" in printed, (argv, printed[-3000:])


LAUNCH_KEYS = ["tp-size", "port", "host", "page-size", "attention-backend", "mem-fraction-static", "model.path",
               "model.fixture", "eval.max_tokens", "eval.concurrency", "topology.nodes", "topology.replicas", "topology.replicas_per_gpu",
               "hardware.vendor", "hardware.gpu_count", "stand_ins.sm90.why", "stand_ins.sm99x.why",
               "stand_ins.sm90.server_args.attention-backendd", "sglang.version", "api_key_env", "title", "nope.nope"]  # fmt: skip


@given(data=st.data())
def test_launch_ends_with_one_clear_error(places, data) -> None:
    recipe = data.draw(st.one_of(st.sampled_from(["tiny-bf16", "tiny-int8", "qwen3.6-35b-int8-h100", "qwen3.5-397b-nvfp4-rtxpro6000-mtp",
                                                  "tiny-bf61", "x.yaml"]), _path(places), TYPED), label="recipe")  # fmt: skip
    argv = [recipe, "--dry-run"]
    for _ in range(data.draw(st.integers(0, 4), label="flags")):
        flag = data.draw(st.sampled_from(["--set", "--stand-in", "--replicas", "--node-rank", "--dist-init-addr",
                                          "--timeout", "--log-dir", "--no-hardware-check"]), label="flag")  # fmt: skip
        if flag == "--set":
            key = data.draw(st.one_of(st.sampled_from(LAUNCH_KEYS), TYPED), label="key")
            argv += [flag, f"{key}={data.draw(st.one_of(TYPED, _path(places)), label='value')}"]
        elif flag == "--stand-in":
            argv += [flag, data.draw(st.one_of(st.sampled_from(["sm90", "sm120", "gfx942", "gfx950", "sm99x", "hopper"]), TYPED))]
        elif flag == "--log-dir":
            argv += [flag, data.draw(_path(places))]
        elif flag == "--no-hardware-check":
            argv.append(flag)
        else:
            argv += [flag, data.draw(st.one_of(st.sampled_from(["2", "0", "-1", "10.0.0.1:5000", "[::1]:70000"]), TYPED))]
    status, printed = run(launch_cli.main, argv)
    check_ending(argv, status, printed)


@given(data=st.data())
def test_eval_ends_with_one_clear_error(places, data) -> None:
    from eval.__main__ import main as eval_main

    command = data.draw(st.sampled_from(["gsm8k", "mmlu-pro", "wikitext", "speed", "chat"]), label="command")
    nobody = f"http://127.0.0.1:{_closed_port()}"
    argv = [command]
    if data.draw(st.booleans(), label="--recipe"):
        argv += ["--recipe", data.draw(st.one_of(st.sampled_from(["tiny-bf16", "qwen3.6-35b-int8-h100", "tiny-bf61"]), _path(places)))]
    # a URL where nothing listens, or one that is no URL: never a host that would be looked up
    argv += ["--base-url", data.draw(st.sampled_from([nobody, f"{nobody}/v1", "", "127.0.0.1:1", "ftp://127.0.0.1:1",
                                                       "http://127.0.0.1:99999", "http://[::1", "ünï"]), label="--base-url")]  # fmt: skip
    numbers = {"gsm8k": ["--limit", "--concurrency", "--max-tokens", "--max-retries", "--timeout"],
               "mmlu-pro": ["--limit", "--concurrency", "--max-tokens", "--max-retries", "--timeout"],
               "wikitext": ["--limit", "--concurrency"], "speed": ["--concurrency", "--seed", "--timeout"], "chat": []}[command]  # fmt: skip
    paths = {"gsm8k": ["--output", "--resume", "--data-dir"], "mmlu-pro": ["--output", "--resume"],
             "wikitext": ["--output", "--data-dir"], "speed": ["--output", "--dataset-path"], "chat": []}[command]  # fmt: skip
    for _ in range(data.draw(st.integers(0, 3), label="flags")):
        flag = data.draw(st.sampled_from(numbers + paths + ["--model"]), label="flag")
        value = data.draw(_path(places) if flag in paths else st.one_of(st.sampled_from(["0", "-5", "1", "1,2", "0,1"]), TYPED))
        argv += [flag, value]
    status, printed = run(eval_main, argv)
    check_ending(argv, status, printed)


@given(data=st.data())
def test_fixtures_end_with_one_clear_error(places, data, tmp_path_factory) -> None:
    outdir = data.draw(st.one_of(_path(places), TYPED.map(lambda name: str(tmp_path_factory.getbasetemp() / "fixtures" / name))),
                       label="outdir")  # fmt: skip
    argv = [outdir]
    for _ in range(data.draw(st.integers(0, 3), label="flags")):
        flag = data.draw(st.sampled_from(["--format", "--seed", "--shape", "--layers", "--mtp-acceptance", "--mtp-experts", "--device"]))
        choices = {"--format": ["bf16", "quark-w8a8-int8", "int3"], "--shape": ["tiny", "tiny-top10", "huge"],
                   "--mtp-experts": ["fused", "per-expert", "both"], "--device": ["cpu", "cuda", "cuda:1", "meta", "tpu"],
                   "--layers": ["1", "2", "0", "129"], "--mtp-acceptance": ["0.5", "1.5", "-0"]}.get(flag, [])  # fmt: skip
        argv += [flag, data.draw(st.one_of(st.sampled_from(choices), TYPED) if choices else TYPED)]
    status, printed = run(fixtures_cli.main, argv)
    check_ending(argv, status, printed)


@given(data=st.data())
def test_inspect_ends_with_one_clear_error_or_a_report(places, data) -> None:
    argv = [data.draw(st.one_of(_path(places), TYPED), label="path")]
    if data.draw(st.booleans(), label="--json"):
        argv += ["--json", data.draw(st.one_of(_path(places), TYPED.map(lambda name: str(Path(places["fresh"]).parent / f"{name}.json"))))]
    if data.draw(st.booleans(), label="--max-problems"):
        argv += ["--max-problems", data.draw(TYPED)]
    status, printed = run(inspect_cli.main, argv)
    if status == 1 and "problem(s)" in printed:  # a checkpoint that does not match: a report, not an error
        assert "Traceback" not in printed, (argv, printed[-2000:])
        assert argv[0] in printed.replace("\n", "") or not argv[0].isprintable(), (argv, printed[-2000:])  # rich drops control characters
        return
    check_ending(argv, status, printed)


@given(data=st.data())
def test_quantize_ends_with_one_clear_error_or_a_checkpoint(places, data, tmp_path_factory) -> None:
    fresh = TYPED.map(lambda name: str(tmp_path_factory.getbasetemp() / "quantized" / name))
    argv = [data.draw(_path(places), label="src"), data.draw(st.one_of(_path(places), fresh), label="out")]
    if data.draw(st.booleans(), label="--to"):
        argv += ["--to", data.draw(st.one_of(st.sampled_from(["quark-w8a8-int8", "ct-mxfp4", "modelopt-nvfp4", "int3"]), TYPED))]
    for _ in range(data.draw(st.integers(0, 3), label="flags")):
        flag = data.draw(st.sampled_from(["--scales", "--input-amax", "--max-shard-size", "--threads", "--fuse-shared-expert"]))
        choices = {"--scales": ["max", "mse", "min"], "--input-amax": ["8", "0", "-1", "inf"],
                   "--max-shard-size": ["5GB", "1KB", "0", "2GiB"], "--threads": ["1", "2", "0", "-3"]}.get(flag)  # fmt: skip
        argv += [flag] if choices is None else [flag, data.draw(st.one_of(st.sampled_from(choices), TYPED))]
    status, printed = run(quantize_cli.main, [*argv, "--no-progress"])
    check_ending(argv, status, printed)


"""What the conformance suite serves: its cases (a tiny recipe, FSE on or off), on generated checkpoints of
each fixture shape or on checkpoint directories the user gives (`--checkpoints FORMAT=DIR`, e.g. written by
`python -m sglang_ext.quantize`), and the `--set` items each server is launched with. No SGLang, no GPU."""

import argparse
import dataclasses
import functools
import json
from dataclasses import dataclass
from pathlib import Path

from launch.checkpoint import SCHEME_OF_FORMAT
from launch.recipe import load_recipe
from sglang_ext.shared_expert_fusion import decide_shared_expert_fusion

FSE_OFF = ("disable-shared-experts-fusion=true",)
SHAPES = ("tiny", "tiny-top10")  # sglang_ext.fixtures shapes the tiny recipes serve; tiny-top10 routes as the 397B
MEM_FRACTION = 0.1  # of the memory still free when each server starts (servers run side by side)


@dataclass(frozen=True)
class Case:
    label: str  # what --cases selects: the format's short name, " fse-off" when the fusion is turned off
    recipe: str
    fse: bool | None  # None: the checkpoint keeps the shared expert out of the MoE either way
    sets: tuple[str, ...] = ()
    shape: str = "tiny"  # of the generated checkpoint
    checkpoint: Path | None = None  # a given checkpoint directory instead of the generated one

    @property
    def served(self) -> str:
        """What is served: the generated checkpoint's shape, or the given directory."""
        return str(self.checkpoint) if self.checkpoint else self.shape

    @property
    def name(self) -> str:
        """The label, and where the checkpoint comes from unless it is the generated tiny one."""
        where = self.checkpoint.name if self.checkpoint else self.shape
        return self.label if (self.checkpoint, self.shape) == (None, "tiny") else f"{self.label} @{where}"


CASES = (
    Case("bf16", "tiny-bf16", True),
    Case("bf16 fse-off", "tiny-bf16", False, FSE_OFF),
    Case("int8", "tiny-int8", True),
    Case("int8 fse-off", "tiny-int8", False, FSE_OFF),
    Case("nvfp4", "tiny-nvfp4", None),
    Case("ct-mxfp4", "tiny-ct-mxfp4", None),
    # Last: SGLang's Marlin MXFP4 kernels compile on first use (~5 min on a fresh H100).
    Case("mxfp4-fse", "tiny-mxfp4-fse", True),
    Case("mxfp4-fse fse-off", "tiny-mxfp4-fse", False, FSE_OFF),
)


@functools.cache
def recipe_of_format() -> dict[str, str]:
    """checkpoint_format -> the tiny recipe of the suite that serves it, read from the recipes."""
    recipes = dict.fromkeys(case.recipe for case in CASES)
    return {load_recipe(recipe).recipe.checkpoint_format: recipe for recipe in recipes}


def given_checkpoint(item: str) -> tuple[str, Path]:
    """argparse type of one `--checkpoints FORMAT=DIR`: the format and the directory, checked to hold a
    checkpoint of that format (`sglang_ext.formats.check`, the inspector's check)."""
    from sglang_ext.formats.check import check_checkpoint

    fmt, sep, text = item.partition("=")
    formats = recipe_of_format()
    if not sep or not fmt or not text:
        raise argparse.ArgumentTypeError(f"{item!r}: give FORMAT=DIR, e.g. quark-w8a8-int8=runs/quantized/int8")
    if fmt not in formats:
        raise argparse.ArgumentTypeError(f"{item!r}: no format {fmt!r}; the formats: {', '.join(formats)}")
    directory = Path(text).expanduser().resolve()
    written_by = f"the OUT of `python -m sglang_ext.quantize SRC OUT --to {fmt}`"
    if not directory.is_dir():
        raise argparse.ArgumentTypeError(f"{item!r}: {directory} is not a directory; give {written_by}")
    if not (directory / "config.json").is_file():
        raise argparse.ArgumentTypeError(f"{item!r}: {directory} has no config.json, so it is no checkpoint; give {written_by}")
    report = check_checkpoint(directory)
    if report.scheme not in ("unknown", SCHEME_OF_FORMAT[fmt]):
        actual = next((f for f, scheme in SCHEME_OF_FORMAT.items() if scheme == report.scheme and f in formats), None)
        fix = f"give it as {actual}={text}" if actual else f"give {written_by}"
        raise argparse.ArgumentTypeError(f"{item!r}: {directory} holds a {report.scheme} checkpoint, not {fmt}; {fix}")
    if not report.ok:
        first = report.problems[0]
        detail = f"{first.tensor}: {first.message}" if first.tensor else first.message
        raise argparse.ArgumentTypeError(f"{item!r}: {directory} does not match its config.json ({len(report.problems)} "
                                         f"problem(s); first: {detail}); `python -m sglang_ext.inspect {directory}` lists them")  # fmt: skip
    return fmt, directory


def _given_cases(fmt: str, directory: Path) -> tuple[Case, ...]:
    """A given checkpoint served as the suite's recipe of its format: FSE on and off where sglang_ext fuses its
    shared expert (it is stored like the routed experts, e.g. `--fuse-shared-expert`), else once."""
    recipe = recipe_of_format()[fmt]
    short = next(case.label for case in CASES if case.recipe == recipe)
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    runner = load_recipe(recipe).recipe.server_args.get("moe-runner-backend", "auto")
    if not decide_shared_expert_fusion(config, config.get("quantization_config"), moe_runner_backend=runner).fuse:
        return (Case(short, recipe, None, checkpoint=directory),)
    return Case(short, recipe, True, checkpoint=directory), Case(f"{short} fse-off", recipe, False, FSE_OFF, checkpoint=directory)


def plan(shapes: tuple[str, ...] = ("tiny",), checkpoints: tuple[tuple[str, Path], ...] = ()) -> tuple[Case, ...]:
    """The cases of a run: every case on the given checkpoints if any, else on the generated checkpoint of each
    shape; ValueError where two would have one name."""
    if checkpoints:
        cases = [case for fmt, directory in checkpoints for case in _given_cases(fmt, directory)]
    else:
        cases = [dataclasses.replace(case, shape=shape) for shape in dict.fromkeys(shapes) for case in CASES]
    names = [case.name for case in cases]
    if twice := sorted({name for name in names if names.count(name) > 1}):
        raise ValueError(f"two checkpoints would both be called {', '.join(twice)}: give each directory once, "
                         "under its own name")  # fmt: skip
    return tuple(cases)


def server_sets(case: Case, tp: int = 1, ep: int = 1) -> list[str]:
    """The launcher's `--set` items for `case` at tensor and expert parallelism `tp` and `ep`."""
    source = (f"model.path={case.checkpoint}", "model.fixture=null", "model.fixture_mtp_experts=null") if case.checkpoint \
        else (f"model.fixture_shape={case.shape}",)  # fmt: skip
    return [f"mem-fraction-static={MEM_FRACTION}", "cuda-graph-backend-decode=disabled", *source, f"tp-size={tp}",
            *((f"ep-size={ep}",) if ep > 1 else ()), *case.sets]  # fmt: skip

"""Check a local checkpoint directory against the recipe before starting SGLang.

A missing scale or a shared expert stored in the wrong precision otherwise surfaces minutes later as a
KeyError or a shape assertion deep inside SGLang's weight loader. Hub ids are not checked here (nothing is
downloaded); `python -m sglang_ext.inspect DIR` checks any directory by hand.
"""

from pathlib import Path

from launch.errors import LaunchError

# Recipe checkpoint_format -> the scheme the inspector detects. FP8 checkpoints are served by stock
# SGLang and not described by sglang_ext.formats, so they are not checked.
SCHEME_OF_FORMAT = {
    "bf16": "bf16",
    "quark-mxfp4-fse": "quark-mxfp4",
    "modelopt-nvfp4": "modelopt-nvfp4",
    "ct-mxfp4": "ct-mxfp4",
    "quark-w8a8-int8": "quark-w8a8-int8",
}
SHOWN_PROBLEMS = 10


def check_local_checkpoint(path: str, checkpoint_format: str, recipe_name: str) -> bool:
    """Raise LaunchError when `path` is a local checkpoint that does not match the recipe; return whether
    it was checked (False for hub ids, FP8, or without the fixtures extra's torch)."""
    directory = Path(path)
    if not (directory / "config.json").is_file() or checkpoint_format not in SCHEME_OF_FORMAT:
        return False
    try:
        from sglang_ext.formats.check import check_checkpoint
    except ImportError:
        return False
    report = check_checkpoint(directory)
    inspect = f"python -m sglang_ext.inspect {directory}"
    if not report.ok:
        lines = [f"  {p.tensor or directory}: {p.message}" for p in report.problems[:SHOWN_PROBLEMS]]
        more = len(report.problems) - SHOWN_PROBLEMS
        raise LaunchError(
            f"checkpoint {directory} does not match its config.json ({len(report.problems)} problem(s)):\n"
            + "\n".join(lines)
            + (f"\n  ... and {more} more" if more > 0 else ""),
            hint=f"re-download or re-export the checkpoint; `{inspect}` prints the full report",
        )
    wanted = SCHEME_OF_FORMAT[checkpoint_format]
    if report.scheme != wanted:
        raise LaunchError(
            f"recipe {recipe_name} says checkpoint_format {checkpoint_format}, but {directory} is {report.scheme}",
            hint="point model.path at the right checkpoint, or use a recipe for this format (`python -m launch --list`)",
        )
    if checkpoint_format == "quark-mxfp4-fse" and "shared expert" not in report.quantized:
        raise LaunchError(
            f"recipe {recipe_name} serves a fused-shared-expert checkpoint, but {directory} keeps the shared "
            "expert unquantized (its quantization_config excludes it)",
            hint="use the MXFP4-FSE export (shared expert quantized), or a recipe without FSE",
        )
    return True

"""Check a local checkpoint directory against the recipe before starting SGLang.

A missing scale or a shared expert stored in the wrong precision otherwise surfaces minutes later as a
KeyError or a shape assertion deep inside SGLang's weight loader. Hub ids are not checked here (nothing is
downloaded); `python -m sglang_ext.inspect DIR` checks any directory by hand.
"""

import re
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
# A Hugging Face hub id: ORG/NAME of letters, digits, '-', '_' and '.' (what huggingface_hub accepts).
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_model_path(path: str, where: str) -> str:
    """`model.path` as the server will read it: an existing checkpoint directory, or a hub id. Anything else
    (a local path with nothing there, a file) is refused here rather than minutes later inside SGLang;
    `where` names the recipe file or `--set` that gave the path."""
    local = Path(path).expanduser()
    if local.is_dir():
        return str(local)
    if local.exists():
        raise LaunchError(f"{where}: model.path: {path} is a file; it must be the checkpoint directory "
                          "(the folder with config.json and *.safetensors)",
                          hint=f"--set model.path={local.parent}" if (local.parent / "config.json").exists()
                          else "point model.path at the checkpoint directory")  # fmt: skip
    if HUB_ID.match(path) and not path.startswith("."):
        return path
    raise LaunchError(
        f"{where}: model.path: {path} is neither a checkpoint directory on this machine (nothing is there) "
        "nor a hub id (ORG/NAME)",
        hint="copy the checkpoint there, point model.path at where it is (--set model.path=DIR), or give its hub id",
    )


def drafts_with_its_mtp_head(server_args: dict) -> bool:
    """Whether these server arguments decode speculatively with the checkpoint's own MTP layer as the draft
    (NEXTN, or EAGLE without a separate draft model), as SGLang does for Qwen3.5."""
    algorithm = str(server_args.get("speculative-algorithm") or "").upper()
    return algorithm == "NEXTN" or (algorithm == "EAGLE" and not server_args.get("speculative-draft-model-path"))


def check_local_checkpoint(path: str, checkpoint_format: str, recipe_name: str, needs_mtp: bool = False) -> bool:
    """Raise LaunchError when `path` is a local checkpoint that does not match the recipe; return whether
    it was checked (False for hub ids, FP8, or without the fixtures extra's torch). Missing MTP weights
    matter only when `needs_mtp` (SGLang ignores `mtp.*` unless it drafts with them)."""
    directory = Path(path)
    if not (directory / "config.json").is_file() or checkpoint_format not in SCHEME_OF_FORMAT:
        return False
    try:
        from sglang_ext.formats.check import check_checkpoint
    except ImportError:
        return False
    report = check_checkpoint(directory)
    inspect = f"python -m sglang_ext.inspect {directory}"
    mtp_missing = [p for p in report.problems if p.tensor.startswith("mtp.") and p.message.startswith("missing")]
    if needs_mtp and (mtp_missing or (report.ok and not report.mtp_experts)):
        what = f"lacks its MTP weights ({len(mtp_missing)} mtp.* tensors missing, e.g. {mtp_missing[0].tensor})" if mtp_missing \
            else "has no MTP layer (text_config.mtp_num_hidden_layers is 0)"  # fmt: skip
        raise LaunchError(
            f"recipe {recipe_name} decodes speculatively with the checkpoint's own MTP layer as the draft, "
            f"but {directory} {what}",
            hint="serve it without speculative decoding (--set speculative-algorithm=null and the other "
            "speculative-* options), or use a checkpoint that ships mtp.* (the published ones do)",
        )
    problems = [p for p in report.problems if p not in mtp_missing]
    if problems:
        lines = [f"  {p.tensor or directory}: {p.message}" for p in problems[:SHOWN_PROBLEMS]]
        more = len(problems) - SHOWN_PROBLEMS
        raise LaunchError(
            f"checkpoint {directory} does not match its config.json ({len(problems)} problem(s)):\n"
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

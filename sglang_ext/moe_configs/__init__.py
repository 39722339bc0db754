"""Fused-MoE Triton kernel configs tuned for the Qwen3.5 MoE shapes (`python -m eval.perf.tune_moe` writes them
to `configs/triton_<version>/` here), handed to SGLang through its `SGLANG_MOE_CONFIG_DIR` variable.

SGLang reads that variable as a replacement of its own config folder, not an addition; pointing it at
ours alone would hide the stock configs of every other shape. So the folder it gets is a merged view:
links to every stock config, then ours over them where names clash. The view lives in a cache folder,
named by its content, and is built once (atomically, so tensor-parallel ranks starting together agree).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

TUNED_ROOT = Path(__file__).parent
ENV = "SGLANG_MOE_CONFIG_DIR"
logger = logging.getLogger(__name__)


def tuned_files(root: Path | None = None) -> list[Path]:
    return sorted((root or TUNED_ROOT).glob("configs/triton_*/*.json"))


def merged_config_dir(stock_root: Path, tuned_root: Path, cache: Path) -> Path:
    """A folder whose `configs/triton_*/` hold links to `stock_root`'s configs and `tuned_root`'s, ours
    replacing stock ones of the same name. Returns the existing one when nothing changed."""
    sources = [*sorted(stock_root.glob("configs/triton_*/*.json")), *tuned_files(tuned_root)]
    key = hashlib.sha256()
    for path in sources:
        key.update(f"{path}\0{path.stat().st_mtime_ns}\0".encode())
    target = cache / key.hexdigest()[:16]
    if target.is_dir():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(dir=cache, prefix=".building-"))
    for path in sources:  # stock first, then ours: a later link of the same name wins
        link = building / "configs" / path.parent.name / path.name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(path.resolve())
    try:
        building.rename(target)
    except OSError:  # another rank built the same view first
        shutil.rmtree(building, ignore_errors=True)
    return target


def stock_config_dir() -> Path:
    """SGLang's own fused-MoE config folder (what SGLANG_MOE_CONFIG_DIR defaults to), found without
    importing SGLang."""
    spec = importlib.util.find_spec("sglang.srt.layers.moe.moe_runner.triton_utils.fused_moe_triton_config")
    return Path(spec.origin).resolve().parent


def use_tuned_moe_configs(cache: Path | None = None) -> Path | None:
    """Point SGLang's fused-MoE config lookup at the merged view, unless the user set SGLANG_MOE_CONFIG_DIR
    (theirs is kept) or no tuned config ships. Must run in the process that runs the MoE kernels, before
    its first forward; `sglang_ext.models` calls it at import."""
    if os.environ.get(ENV) or not tuned_files():
        return None
    cache = cache or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sglang_ext" / "moe_configs"
    merged = merged_config_dir(stock_config_dir(), TUNED_ROOT, cache)
    os.environ[ENV] = str(merged)
    logger.info("fused-MoE configs: SGLang's plus %d tuned by sglang_ext (%s)", len(tuned_files()), merged)
    return merged

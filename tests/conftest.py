import os
import shutil
from pathlib import Path

import pytest
import torch

from launch.recipe import recipe_paths

# Without a GPU, Triton kernels run in Triton's interpreter (sglang_ext.kernels' tests, tests/triton_cpu.py).
# Triton reads the variable when a module defines a kernel, so it is set before any test module is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def recipes_dir(tmp_path: Path) -> Path:
    """A scratch copy of recipes/ that a test may edit."""
    target = tmp_path / "recipes"
    shutil.copytree(REPO / "recipes", target)
    return target


def all_recipe_names() -> list[str]:
    return list(recipe_paths())


@pytest.fixture(scope="session")
def fixtures_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint in every fixture format (seed 0), written once per session; tests only read it
    (a test that corrupts one copies it first)."""
    from sglang_ext.fixtures import FORMATS, write_fixture

    root = tmp_path_factory.mktemp("fixtures")
    for fmt in FORMATS:
        write_fixture(root / fmt, fmt, seed=0)
    # The BF16 model with its MTP experts as the Qwen3.6 formats store them (fused 3-D), for tests that
    # compare such a format with the BF16 weights it quantizes.
    write_fixture(root / "bf16-mtp-fused", "bf16", seed=0, mtp_fused_experts=True)
    return root


def bf16_source(fixtures_root: Path, fmt: str) -> Path:
    """The BF16 fixture with the MTP expert layout of `fmt`'s checkpoint family."""
    from sglang_ext.fixtures import QWEN3_6_FORMATS

    return fixtures_root / ("bf16-mtp-fused" if fmt in QWEN3_6_FORMATS else "bf16")


def _hypothesis_profiles() -> None:
    import os
    from datetime import timedelta

    from hypothesis import HealthCheck, settings

    # Function-scoped fixtures (tmp paths) are reused across examples on purpose: each example rewrites them.
    common = {"deadline": timedelta(seconds=10), "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]}
    settings.register_profile("ci", max_examples=100, derandomize=True, **common)
    settings.register_profile("sweep", max_examples=2000, **common)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


_hypothesis_profiles()

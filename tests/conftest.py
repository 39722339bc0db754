import shutil
from pathlib import Path

import pytest

from launch.recipe import recipe_paths

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
    return root


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

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

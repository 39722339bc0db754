"""The numbers `python -m eval` takes on its command line, checked by a pydantic schema as a recipe's are:
`--max-tokens` and `--concurrency` with the very bounds of the recipe's `eval` section (`EvalSettings`),
the others with their own. A value outside them is a usage error (exit 2) before anything is sent or
written, so a refused run leaves no output folder behind to block the rerun.
"""

from __future__ import annotations

import argparse
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from launch.errors import LaunchError
from launch.recipe import EvalSettings

EXIT_USAGE = 2


def _as_in_recipes(name: str) -> Any:
    """eval.NAME's type and bounds in a recipe, optional on the command line (the recipe's value then)."""
    field = EvalSettings.model_fields[name]
    return Annotated[field.annotation, *field.metadata] | None


Positive = Annotated[int, Field(ge=1)]


class Numbers(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    max_tokens: _as_in_recipes("max_tokens") = None
    concurrency: _as_in_recipes("concurrency") = None
    limit: Positive | None = None
    max_retries: Positive | None = None
    timeout: Annotated[float, Field(gt=0)] | None = None


# What to do instead, per option.
FIXES = {
    "max_tokens": "give a generation budget of at least 1 token, or leave it out for the recipe's eval.max_tokens",
    "concurrency": "give at least 1 request in flight, or leave it out for the recipe's eval.concurrency",
    "limit": "give at least 1 question, or leave --limit out to ask them all",
    "max_retries": "give at least 1 try per request (the default is 5)",
    "timeout": "give a number of seconds above 0",
}


def check(args: argparse.Namespace) -> None:
    """LaunchError (exit 2) naming the first option outside its bounds, with the fix."""
    given = {name: value for name in Numbers.model_fields
             if (value := getattr(args, name, None)) is not None and not isinstance(value, list)}  # speed's sweep list: its own type

    try:
        Numbers.model_validate(given)
    except ValidationError as err:
        name = str(err.errors()[0]["loc"][0])
        flag = "--" + name.replace("_", "-")
        raise LaunchError(f"{flag} {given[name]}: {err.errors()[0]['msg'].lower()}", hint=FIXES[name], exit_code=EXIT_USAGE) from None

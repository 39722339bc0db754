"""`--set KEY=VALUE`: change any recipe field or SGLang server argument from the command line.

KEY is a dotted path into the recipe (`model.path`, `eval.max_tokens`, `server_args.tp-size`); a KEY that is not
a recipe field is taken as an SGLang option (`--set tp-size=2` is `server_args.tp-size`). VALUE is read by the
type of what KEY names: as text where that is a string (`host=::`, `model.path=/a:b`, an SGLang option that
takes a string), otherwise as a YAML scalar or flow collection (`2` is an int, `true` a bool, `[1, 2]` a list);
`null` removes the key. The result is validated like a recipe file, so a wrong type is reported against the
`--set` (or the launcher flag, e.g. `--replicas`) that caused it.
"""

from __future__ import annotations

import copy
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import BaseModel

from launch.errors import LaunchError

NULLS = ("null", "~", "Null", "NULL")


@dataclass(frozen=True)
class Override:
    """One KEY=VALUE and what the user typed to ask for it (`--set ...` or a launcher flag such as `--replicas 2`)."""

    text: str
    said: str

    @classmethod
    def of(cls, item: str | Override) -> Override:
        return item if isinstance(item, Override) else cls(item, f"--set {item}")


def _annotation(parts: tuple[str, ...]) -> Any:
    """The type annotation of the recipe field at `parts`, or None where the path leaves the schema."""
    from launch.recipe import Recipe

    model: Any = Recipe
    annotation = None
    for part in parts:
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return None
        annotation = model = model.model_fields[part].annotation
    return annotation


def _takes_text(annotation: Any) -> bool:
    """Whether a field of this type holds a string (str, str | None, a Literal of strings)."""
    if annotation is str:
        return True
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Literal:
        return all(isinstance(a, str) for a in args)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        kinds = [a for a in args if a is not type(None)]
        return bool(kinds) and all(map(_takes_text, kinds))
    return False


def parse_override(text: str, option_takes_text: Callable[[str], bool] = lambda key: False) -> tuple[tuple[str, ...], Any]:
    """(key path, value) of one KEY=VALUE; `option_takes_text(name)` says whether an SGLang option takes a string."""
    from launch.recipe import Recipe

    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise LaunchError(f"--set {text!r}: expected KEY=VALUE", hint="e.g. --set tp-size=2 or --set model.path=/models/x")
    parts = tuple(key.split("."))
    if parts[0] not in Recipe.model_fields:
        parts = ("server_args", key)
    if raw.strip() in NULLS:
        return parts, None
    if parts[0] == "env" or (parts[0] == "server_args" and len(parts) == 2 and option_takes_text(parts[1])) or _takes_text(
        _annotation(parts)
    ):
        return parts, raw
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw  # not YAML: a plain string
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: list[str | Override], origin: dict,
                    option_takes_text: Callable[[str], bool] = lambda key: False) -> dict[str, Any]:  # fmt: skip
    result = copy.deepcopy(data)
    for item in map(Override.of, overrides):
        parts, value = parse_override(item.text, option_takes_text)
        node = result
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise LaunchError(f"{item.said}: '{part}' is a single value, it has no field '{parts[-1]}'",
                                  hint=f"set {'.'.join(parts[:-1])} itself, or a field of a mapping (docs/recipes.md)")  # fmt: skip
            node = child
        if value is None:
            node.pop(parts[-1], None)
        else:
            node[parts[-1]] = value
        origin[parts] = item.said
    return result

"""`--set KEY=VALUE`: change any recipe field or SGLang server argument from the command line.

KEY is a dotted path into the recipe (`model.path`, `eval.max_tokens`, `server_args.tp-size`); a KEY that is not
a recipe field is taken as an SGLang option (`--set tp-size=2` is `server_args.tp-size`). VALUE is read as a
YAML scalar or flow collection (`2` is an int, `true` a bool, `[1, 2]` a list, `null` removes the key), and the
result is validated like a recipe file, so a wrong type is reported against the `--set` that caused it.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from launch.errors import LaunchError


def _recipe_fields() -> set[str]:
    from launch.recipe import Recipe

    return set(Recipe.model_fields)


def parse_override(text: str) -> tuple[tuple[str, ...], Any]:
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise LaunchError(f"--set {text!r}: expected KEY=VALUE, e.g. --set tp-size=2 or --set model.path=/models/x")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw  # not YAML: a plain string such as a path with a colon
    parts = tuple(key.split("."))
    if parts[0] not in _recipe_fields():
        parts = ("server_args", key)
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: list[str], origin: dict) -> dict[str, Any]:
    result = copy.deepcopy(data)
    for text in overrides:
        parts, value = parse_override(text)
        node = result
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise LaunchError(f"--set {text}: '{part}' is a single value, it has no field '{parts[-1]}'")
            node = child
        if value is None:
            node.pop(parts[-1], None)
        else:
            node[parts[-1]] = value
        origin[parts] = f"--set {text}"
    return result

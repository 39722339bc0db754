"""Which server an evaluation talks to, and a check that it is there and serves the expected model.

Defaults come from the recipe, so `python -m eval gsm8k --recipe R` reaches the server that
`python -m launch R` started; `--base-url` and `--model` point it anywhere else.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from launch.errors import LaunchError
from launch.recipe import LoadedRecipe, Recipe, load_recipe


@dataclass(frozen=True)
class Target:
    base_url: str  # scheme://host:port, no trailing slash, no /v1
    model: str  # the served model name
    recipe: LoadedRecipe | None
    api_key: str | None = None  # sent as "Authorization: Bearer KEY" (the server's --api-key)

    @property
    def launch_hint(self) -> str:
        name = self.recipe.name if self.recipe else "RECIPE"
        return f"start it with `python -m launch {name}`, or pass --base-url to a running server"


def resolve(recipe: str | None, base_url: str | None = None, model: str | None = None, *, ask_server: bool = False) -> Target:
    """The server and model to use; with ask_server, a missing model name is the server's first one."""
    loaded = load_recipe(recipe) if recipe else None
    if not base_url and loaded is None:
        raise LaunchError("no server given", hint="pass --recipe RECIPE or --base-url URL")
    url = (base_url or f"http://{loaded.recipe.host}:{loaded.recipe.port}").rstrip("/").removesuffix("/v1")
    _check_url(url, given=bool(base_url))
    if model is None and loaded is not None:
        model = loaded.recipe.model.served_name
    if model is None and ask_server:
        model = served_models(Target(url, "", None))[0]
    if model is None:
        raise LaunchError("no model name given", hint="pass --recipe RECIPE or --model NAME")
    return Target(url, model, loaded, api_key_of(loaded))


def _check_url(url: str, given: bool) -> None:
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as err:  # an unclosed [IPv6 or a port out of range
        parts, port = None, err
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or isinstance(port, ValueError):
        where = f"--base-url {url}" if given else f"the recipe's host and port ({url})"
        raise LaunchError(f"{where}: not an http(s)://HOST:PORT address", hint="e.g. --base-url http://127.0.0.1:30000",
                          exit_code=2 if given else 1)  # fmt: skip


def api_key_of(loaded: LoadedRecipe | None) -> str | None:
    """The key the launcher gave the server: from the variable the recipe's api_key_env names (without a
    recipe, the default variable)."""
    variable = loaded.recipe.api_key_env if loaded else Recipe.model_fields["api_key_env"].default
    return os.environ.get(variable) or None


def get_json(url: str, body: dict[str, Any] | None = None, timeout: float = 30, api_key: str | None = None) -> Any:
    """GET (or POST `body`) and decode JSON; every failure becomes a LaunchError that names the URL."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {api_key}"} if api_key else {})}
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
    except urllib.error.HTTPError as err:
        detail = err.read().decode(errors="replace")[:300]
        hint = "the server wants an API key: export the variable the recipe's api_key_env names" if err.code == 401 else None
        raise LaunchError(f"{url} answered HTTP {err.code}: {detail}", hint=hint) from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
        reason = getattr(err, "reason", err)
        raise LaunchError(f"cannot reach {url}: {reason}", hint="check the address and that the server is up") from None
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        raise LaunchError(f"{url} answered with something that is not JSON: {raw[:200]!r}",
                          hint="point --base-url at an OpenAI-compatible server (SGLang's)") from None


def served_models(target: Target) -> list[str]:
    url = f"{target.base_url}/v1/models"
    try:
        listing = get_json(url, timeout=10, api_key=target.api_key)
    except LaunchError as err:
        raise LaunchError(f"no OpenAI-compatible server at {target.base_url} ({err})", hint=target.launch_hint) from None
    return [m.get("id", "?") for m in listing.get("data", [])]


def check(target: Target) -> None:
    """Fail early, with the fix, when the server is down or serves another model."""
    models = served_models(target)
    if target.model not in models:
        raise LaunchError(
            f"{target.base_url} serves {', '.join(models) or 'no models'}, not '{target.model}'",
            hint="pass --model with one of those names, or start the right recipe",
        )

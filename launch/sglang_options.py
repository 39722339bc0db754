"""SGLang's server options, as data: which flags exist in a pinned SGLang version, what they take, and how a
recipe's `server_args` mapping becomes a `launch_server` command line.

The table is read from SGLang's own argument parser (`ServerArgs.add_cli_args`) where SGLang is importable,
and from a checked-in snapshot of that parser otherwise (`sglang_options/<version>.json`), so a recipe's
flags are checked on a machine without SGLang too. Regenerate a snapshot with
`python -m launch.sglang_options --write` on a machine with that SGLang installed.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib.metadata
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

SNAPSHOT_DIR = Path(__file__).with_name("sglang_options")

Takes = Literal["flag", "negatable", "value", "list"]
ValueType = Literal["int", "float", "str", "size", "json"]

# argparse `type=` callables in SGLang that are not plain int/float/str, by function name.
_SPECIAL_TYPES: dict[str, ValueType] = {
    "human_readable_int": "size",
    "loads": "json",
    "json_list_type": "json",
}


# Bounds SGLang's parser leaves unchecked but a server cannot start outside of (option dest -> (low, high),
# inclusive; None: unbounded), so a recipe or --set is refused before anything starts.
VALUE_BOUNDS: dict[str, tuple[float | None, float | None]] = {
    "port": (1, 65535),
    "nccl_port": (1, 65535),
    "tp_size": (1, None),
    "ep_size": (1, None),
    "dp_size": (1, None),
    "pp_size": (1, None),
    "nnodes": (1, None),
    "node_rank": (0, None),
    "mem_fraction_static": (0, 1),
}


@dataclass(frozen=True)
class Option:
    flags: tuple[str, ...]
    dest: str
    takes: Takes
    type: ValueType
    choices: tuple[str, ...] | None = None
    renamed_to: str | None = None
    deprecated: bool = False

    @property
    def name(self) -> str:
        return self.flags[0].lstrip("-")


class ServerArgError(ValueError):
    """One bad `server_args` entry; `key` is the recipe key it concerns."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def _option_from_action(action: argparse.Action) -> Option | None:
    if not action.option_strings or isinstance(action, argparse._HelpAction):
        return None
    kind = type(action).__name__
    renamed_to = getattr(action, "new_flag", None)
    deprecated = kind.startswith("Deprecated")
    if isinstance(action, argparse.BooleanOptionalAction):
        takes: Takes = "negatable"
    elif action.nargs == 0:
        takes = "flag"
    elif action.nargs in ("+", "*") or isinstance(action.nargs, int) and action.nargs > 1:
        takes = "list"
    else:
        takes = "value"
    type_name = getattr(action.type, "__name__", "str") if action.type else "str"
    value_type: ValueType = _SPECIAL_TYPES.get(type_name) or (
        type_name if type_name in ("int", "float") else "str"
    )
    choices = tuple(sorted(str(c) for c in action.choices)) if action.choices else None
    return Option(
        flags=tuple(action.option_strings),
        dest=action.dest,
        takes=takes,
        type=value_type,
        choices=choices,
        renamed_to=renamed_to,
        deprecated=deprecated,
    )


class OptionTable:
    def __init__(self, version: str, options: list[Option], source: str):
        self.version = version
        self.options = options
        self.source = source
        self.by_name = {flag.lstrip("-"): opt for opt in options for flag in opt.flags}

    @classmethod
    def from_parser(cls, parser: argparse.ArgumentParser, version: str, source: str) -> OptionTable:
        options = [opt for a in parser._actions if (opt := _option_from_action(a))]
        return cls(version, options, source)

    @classmethod
    def snapshot(cls, version: str) -> OptionTable:
        path = SNAPSHOT_DIR / f"{version}.json"
        if not path.exists():
            known = ", ".join(sorted(p.stem for p in SNAPSHOT_DIR.glob("*.json")))
            raise FileNotFoundError(
                f"no option snapshot for SGLang {version} (have: {known}); generate one with "
                f"`python -m launch.sglang_options --write` where SGLang {version} is installed"
            )
        data = json.loads(path.read_text())
        options = [
            Option(**{**o, "flags": tuple(o["flags"]), "choices": o["choices"] and tuple(o["choices"])})
            for o in data["options"]
        ]
        return cls(data["sglang_version"], options, source=str(path))

    def to_json(self) -> str:
        return json.dumps(
            {"sglang_version": self.version, "options": [asdict(o) for o in self.options]}, indent=1
        )

    def lookup(self, key: str) -> Option:
        if key.startswith("-"):
            raise ServerArgError(key, f"write the option name without dashes: '{key.lstrip('-')}'")
        option = self.by_name.get(key)
        if option is None:
            close = difflib.get_close_matches(key.replace("_", "-"), self.by_name, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ServerArgError(key, f"SGLang {self.version} has no option '--{key}'{hint}")
        if option.renamed_to:
            successor = option.renamed_to.lstrip("-")
            # A plain option name takes the same value; SGLang writes anything else as a usage ("attn-dp-size <dp-size>").
            same = " (same value)" if successor.replace("-", "").isalnum() else ""
            raise ServerArgError(key, f"'--{key}' is a deprecated alias in SGLang {self.version}; use '{successor}'{same}")
        if option.deprecated:
            raise ServerArgError(key, f"'--{key}' is deprecated in SGLang {self.version}; remove it")
        return option

    def to_cli(self, server_args: dict[str, Any]) -> list[str]:
        """Validate every entry and render the command-line tokens, in the mapping's order.

        Raises a list of all problems at once (as an ExceptionGroup of ServerArgError) so a user fixes a
        recipe in one pass.
        """
        problems: list[ServerArgError] = []
        tokens: list[str] = []
        seen: dict[str, str] = {}
        for key, value in server_args.items():
            try:
                option = self.lookup(key)
                if option.dest in seen:
                    raise ServerArgError(key, f"sets the same option as '{seen[option.dest]}'")
                seen[option.dest] = key
                tokens += _render(key, option, value)
            except ServerArgError as err:
                problems.append(err)
        if problems:
            raise ExceptionGroup("invalid server_args", problems)
        return tokens


def _render(key: str, option: Option, value: Any) -> list[str]:
    flag = f"--{key}"
    if option.takes in ("flag", "negatable"):
        if not isinstance(value, bool):
            raise ServerArgError(key, f"'{key}' is an on/off flag: write true or false, not {value!r}")
        if option.takes == "negatable" and not value:
            return [f"--no-{key}"]
        return [flag] if value else []
    if option.takes == "list":
        items = value if isinstance(value, list) else [value]
        return [flag, *(_render_value(key, option, item) for item in items)]
    if isinstance(value, list) and option.type != "json":
        raise ServerArgError(key, f"'{key}' takes one value, not a list")
    return [flag, _render_value(key, option, value)]


def _render_value(key: str, option: Option, value: Any) -> str:
    if option.type == "json":
        return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    if isinstance(value, (dict, list)) or value is None:
        raise ServerArgError(key, f"'{key}' takes a {option.type}, not {value!r}")
    if option.type == "int" and (isinstance(value, bool) or not isinstance(value, int)):
        raise ServerArgError(key, f"'{key}' takes an integer, not {value!r}")
    if option.type == "float" and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ServerArgError(key, f"'{key}' takes a number, not {value!r}")
    if option.type == "size" and (isinstance(value, bool) or not isinstance(value, (int, str))):
        raise ServerArgError(key, f"'{key}' takes a token count (e.g. 32768 or '32k'), not {value!r}")
    if isinstance(value, bool):
        raise ServerArgError(key, f"'{key}' takes a {option.type}, not a true/false")
    low, high = VALUE_BOUNDS.get(option.dest, (None, None))
    if isinstance(value, (int, float)) and ((low is not None and value < low) or (high is not None and value > high)):
        bounds = f"{low}..{high}" if high is not None else f"≥ {low}"
        raise ServerArgError(key, f"'{key}' must be {bounds}; got {value!r}")
    text = str(value)
    if option.choices and text not in option.choices:
        raise ServerArgError(
            key, f"'{key}' must be one of {', '.join(option.choices)}; got {text!r}"
        )
    return text


def installed_sglang_version() -> str | None:
    """The installed SGLang's version, read from package metadata without importing SGLang (slow, GPU-bound)."""
    try:
        return importlib.metadata.version("sglang")
    except importlib.metadata.PackageNotFoundError:
        return None


def sglang_parser() -> argparse.ArgumentParser:
    """SGLang's own `launch_server` argument parser. Importing it needs SGLang and its dependencies."""
    from sglang.srt.server_args import ServerArgs

    parser = argparse.ArgumentParser(prog="sglang.launch_server", exit_on_error=False)
    ServerArgs.add_cli_args(parser)
    return parser


def parse_with_sglang(cli: list[str]) -> argparse.Namespace:
    """Parse a full `launch_server` command line with SGLang's own parser; ValueError on rejection."""
    parser = sglang_parser()
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            namespace, unknown = parser.parse_known_args(cli)
    except (argparse.ArgumentError, SystemExit) as err:
        raise ValueError(f"SGLang's parser rejected the arguments: {err} {stderr.getvalue().strip()}")
    if unknown:
        raise ValueError(f"SGLang's parser does not know: {' '.join(unknown)}")
    return namespace


def option_table(version: str) -> OptionTable:
    """The table for `version`: live from SGLang when that exact version is importable, else the snapshot."""
    if installed_sglang_version() == version:
        try:
            return OptionTable.from_parser(sglang_parser(), version, source="sglang (installed)")
        except ImportError:
            pass  # SGLang's metadata is present but its dependencies are not: use the snapshot.
    return OptionTable.snapshot(version)


def _main() -> None:
    cli = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--write", action="store_true", help="write the snapshot for the installed SGLang")
    args = cli.parse_args()
    version = installed_sglang_version()
    if version is None:
        raise SystemExit("SGLang is not installed here; nothing to read the options from")
    table = OptionTable.from_parser(sglang_parser(), version, source="sglang (installed)")
    if args.write:
        path = SNAPSHOT_DIR / f"{version}.json"
        path.write_text(table.to_json() + "\n")
        print(f"wrote {len(table.options)} options of SGLang {version} to {path}")
    else:
        print(table.to_json())


if __name__ == "__main__":
    _main()

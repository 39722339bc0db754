"""The recipe: one pydantic model that says how to serve one checkpoint on one kind of machine.

Every tool in this repository (launcher, evals, tests) reads recipes through `load_recipe`, which
- reads YAML and follows `extends:` (a base file, relative to the recipe; a child's mapping is merged into
  the base's key by key, and a child's `null` deletes the inherited key, e.g. to drop a server flag),
- applies `--stand-in ARCH`: the recipe's `stand_ins.ARCH` merged in (its `null` removes an option or
  variable), the hardware set to that architecture, and every change listed (`Substitution`),
- rejects unknown keys and wrong types, naming the layer that supplied the offending value (a file, a `--set`,
  a launcher flag),
- checks every `server_args` key, and every stand-in's, against the option table of each SGLang release the
  recipe names (`sglang.version`: one release or a list, each one sglang_ext supports).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from launch.errors import LaunchError
from launch.overrides import Override, apply_overrides
from launch.sglang_options import OptionTable, ServerArgError, installed_sglang_version, option_table
from launch.sglang_rules import violations
from sglang_ext import SUPPORTED_SGLANG, supported_list

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"
DEFAULT_RECIPE = "tiny-bf16"

# The generated checkpoints' shapes (sglang_ext.fixtures.model_config.SHAPES), kept here so that a recipe is
# checked without torch.
FixtureShape = Literal["tiny", "tiny-top10", "qwen3.5-35b-a3b", "qwen3.5-397b-a17b-tp4"]
CheckpointFormat = Literal[
    "bf16", "fp8", "quark-mxfp4-fse", "modelopt-nvfp4", "ct-mxfp4", "quark-w8a8-int8"
]
# Options the launcher derives from other recipe fields; a recipe may not set them in server_args.
OWNED_OPTIONS = {
    "model-path": "model.path",
    "model": "model.path",
    "served-model-name": "model.served_name",
    "revision": "model.revision",
    "api-key": "api_key_env (the environment variable that holds the key; a key in a file is a leaked key)",
    "nnodes": "topology.nodes",
    "node-rank": "the launcher's --node-rank",
    "dist-init-addr": "the launcher's --dist-init-addr",
    "base-gpu-id": "topology.replicas (each replica's first GPU)",
}
ARCH = re.compile(r"^(sm\d{2,3}|gfx[0-9a-f]{3,4})$")


def _arch_name(name: str) -> str:
    if not ARCH.match(name):
        raise ValueError(f"{name!r} is not a GPU architecture name (e.g. sm90 for H100/H200, gfx942 for MI300X)")
    return name


ArchName = Annotated[str, AfterValidator(_arch_name)]
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _env_name(name: str) -> str:
    if not ENV_NAME.match(name):
        raise ValueError(f"{name!r} is not an environment variable name (letters, digits and _, not starting with a digit)")
    return name


EnvName = Annotated[str, AfterValidator(_env_name)]
# smg's load-balancing policies (smg/router_args.py COMMON_POLICY_CHOICES, smg 1.13.0).
RouterPolicy = Literal["random", "round_robin", "cache_aware", "power_of_two", "least_load", "consistent_hashing"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(_Strict):
    path: str | None = Field(None, description="hub id (org/name) or local checkpoint directory")
    fixture: CheckpointFormat | None = Field(
        None, description="instead of path: a tiny random checkpoint this repository generates"
    )
    fixture_shape: FixtureShape = Field("tiny", description="the generated checkpoint's shape (sglang_ext.fixtures)")
    fixture_mtp_acceptance: float = Field(
        0.0, ge=0, le=1, description="its MTP head agrees with the greedy main model at this share (0: random head)"
    )
    fixture_mtp_experts: Literal["per-expert", "fused"] | None = Field(
        None, description="its MTP experts' layout (None: the format's checkpoint family's, sglang_ext.fixtures.QWEN3_6_FORMATS)"
    )
    served_name: str
    revision: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if (self.path is None) == (self.fixture is None):
            raise ValueError("set exactly one of model.path (hub id or directory) and model.fixture")
        if self.path is not None and self.model_fields_set & {"fixture_shape", "fixture_mtp_acceptance", "fixture_mtp_experts"}:
            raise ValueError("model.fixture_* describe a generated checkpoint; with model.path they do nothing, remove them")
        return self


class HardwareSpec(_Strict):
    vendor: Literal["nvidia", "amd", "any"]
    archs: list[str] = Field(
        default_factory=list,
        description="accepted GPU architectures (sm90, sm100, sm120, gfx942, gfx950, gfx1151, ...); empty: any",
    )
    gpu_names: list[str] = Field(default_factory=list, description="the GPUs it was validated on, for people")
    gpu_count: int = Field(ge=1)
    min_memory_gib: float = Field(0, ge=0, description="per GPU")


def _supported_release(version: str) -> str:
    if version not in SUPPORTED_SGLANG:
        raise ValueError(f"SGLang {version} is not one sglang_ext supports ({supported_list()})")
    return version


def _one_or_more(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


SGLangRelease = Annotated[str, AfterValidator(_supported_release)]


class SGLangSpec(_Strict):
    version: Annotated[list[SGLangRelease], BeforeValidator(_one_or_more)] = Field(
        min_length=1, description="the SGLang release(s) the recipe is checked against; the launcher refuses any other"
    )
    image: str | None = Field(None, description="container image the source validated with")

    def release_for(self, installed: str | None) -> str:
        """The release a server of this recipe runs: the installed one where the recipe names it, else the first."""
        release = release_of(installed)
        return release if release in self.version else self.version[0]


def release_of(version: str | None) -> str | None:
    """An installed SGLang's release, without a local build's tag (0.5.23+rocm -> 0.5.23)."""
    return version and version.split("+")[0]


class ExpectedResult(_Strict):
    task: str = Field(description="e.g. gsm8k, mmlu_pro, wikitext2")
    metric: str = Field(description="lm-eval metric key, e.g. 'exact_match,flexible-extract'")
    value: float
    tolerance: float = Field(ge=0, description="absolute, in the metric's unit")
    higher_is_better: bool = True
    num_fewshot: int | None = None
    sampling: str = "greedy"
    baseline: float | None = Field(None, description="the unquantized model's score in the same source")
    questions: int | None = Field(None, ge=1, description="how many questions the source's score rests on (GSM8K: 1319); "
                                  "a run on fewer is judged with its sampling error")  # fmt: skip
    source: str


class EvalSettings(_Strict):
    max_tokens: int = Field(2048, ge=1)
    concurrency: int = Field(16, ge=1)
    think: bool = False


class StandIn(_Strict):
    """What must change to rehearse a recipe on a GPU architecture it was not written for; everything else
    (parallelism, KV dtype, page size, cache strategy, chunked prefill, speculative decoding, parsers) stays.
    `null` removes a recipe's option or variable."""

    why: str = Field(description="what the recipe's hardware has that this architecture lacks, for people")
    server_args: dict[str, Any] = Field(default_factory=dict)
    env: dict[EnvName, str | None] = Field(default_factory=dict)
    min_memory_gib: float | None = Field(None, ge=0, description="per GPU on the stand-in hardware")


class Topology(_Strict):
    nodes: int = Field(1, ge=1, le=64, description="hosts one server spans (SGLang --nnodes): every host runs "
                       "`python -m launch RECIPE --node-rank K --dist-init-addr HEAD:PORT`")  # fmt: skip
    replicas: int = Field(1, ge=1, le=64, description="servers on this host, each on the GPUs its parallelism takes, behind smg's router")
    replicas_per_gpu: int | None = Field(None, ge=1, le=64, description="replicas sharing each GPU (or set of GPUs), which split the "
                                         "memory one server would take; unset: shared only where the host has too few GPUs")  # fmt: skip
    router_policy: RouterPolicy = Field("cache_aware", description="smg's policy across the replicas")

    @model_validator(mode="after")
    def _one_kind(self) -> Topology:
        if self.nodes > 1 and self.replicas > 1:
            raise ValueError("replicas of a multi-node server are not launched from one host: set nodes or replicas, not both")
        if self.replicas_per_gpu is not None and self.replicas_per_gpu > self.replicas:
            raise ValueError(f"replicas_per_gpu ({self.replicas_per_gpu}) is more than the replicas ({self.replicas})")
        return self


class Recipe(_Strict):
    title: str
    model: ModelSpec
    checkpoint_format: CheckpointFormat
    hardware: HardwareSpec
    sglang: SGLangSpec
    server_args: dict[str, Any] = Field(default_factory=dict)
    env: dict[EnvName, str] = Field(default_factory=dict)
    expected: list[ExpectedResult] = Field(default_factory=list)
    eval: EvalSettings = Field(default_factory=EvalSettings)
    topology: Topology = Field(default_factory=Topology)
    api_key_env: str = Field("SGLANG_API_KEY", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                             description="environment variable holding the key clients must send (SGLang's --api-key)")
    stand_ins: dict[ArchName, StandIn] = Field(
        default_factory=dict, description="GPU architecture (sm90, gfx942, ...) -> how to rehearse the recipe there"
    )
    notes: str = ""

    @property
    def host(self) -> str:
        return str(self.server_args.get("host", "127.0.0.1"))

    @property
    def port(self) -> int:
        return int(self.server_args.get("port", 30000))

    @property
    def parallelism(self) -> dict[str, int]:
        """SGLang's tp, pp and dp sizes as these server arguments set them (1 where unset); dp counts GPUs
        only without DP attention, which runs its ranks inside the TP group (0.5.17: `dp-size` with
        `enable-dp-attention`; 0.5.23: `attn-dp-size`, leaving `dp-size` to count replicas)."""
        size = {name: int(self.server_args.get(f"{name}-size") or 1) for name in ("tp", "pp", "dp")}
        if self.server_args.get("enable-dp-attention"):
            size["dp"] = 1
        return size

    @property
    def gpus_per_host(self) -> int:
        """GPUs one server takes on each host it spans (its tp × pp × dp over topology.nodes)."""
        size = self.parallelism
        return -(-size["tp"] * size["pp"] * size["dp"] // self.topology.nodes)


@dataclass(frozen=True)
class LoadedRecipe:
    name: str
    path: Path
    recipe: Recipe
    server_cli: list[str]
    options: OptionTable
    origin: dict[tuple, Path | str] = field(default_factory=dict)  # key path -> the file or --set that set it
    substitutions: list[Substitution] = field(default_factory=list)  # what --stand-in changed

    def where(self, *key: str) -> str:
        """The recipe file, or `--set ...`, that supplied the field at `key` (for error messages)."""
        return _where(_owner(self.origin, key, self.path))


def recipe_paths(directory: Path = RECIPES_DIR) -> dict[str, Path]:
    """Servable recipes by name (file stem); bases live in subfolders and are not listed."""
    return {p.stem: p for p in sorted(directory.glob("*.yaml"))}


def resolve(name_or_path: str, directory: Path = RECIPES_DIR) -> Path:
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml"):
        if not candidate.exists():
            raise LaunchError(f"recipe file {candidate} does not exist", hint="give a recipe name (`python -m launch --list`) or an existing YAML file")
        return candidate.resolve()
    known = recipe_paths(directory)
    if name_or_path not in known:
        import difflib

        close = difflib.get_close_matches(name_or_path, known, n=3, cutoff=0.4)
        raise LaunchError(
            f"unknown recipe '{name_or_path}'",
            hint=(f"did you mean {', '.join(close)}? " if close else "")
            + "`python -m launch --list` shows all recipes",
        )
    return known[name_or_path]


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise LaunchError(f"{where}: not valid YAML: {err.problem}", hint="fix the YAML syntax there")
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise LaunchError(f"{path}: not valid YAML text: {err}", hint="a recipe is UTF-8 YAML; fix or rewrite the file")
    except OSError as err:
        raise LaunchError(f"cannot read recipe {path}: {err.strerror}", hint="give a readable YAML file")
    if not isinstance(data, dict):
        raise LaunchError(f"{path}: a recipe is a YAML mapping (key: value), not {type(data).__name__}", hint="see docs/recipes.md")
    return data


def _merge(base: dict, child: dict, origin: dict, child_file: Path, prefix: tuple = ()) -> dict:
    """Child over base, key by key; records in `origin` which file supplied each key path."""
    merged = dict(base)
    for key, value in child.items():
        path = (*prefix, key)
        if value is None and path[0] == "stand_ins":
            merged[key] = None  # a stand-in's null removes the option from the recipe it rehearses, so it stays
        elif value is None:
            merged.pop(key, None)
        elif isinstance(value, dict):
            inherited = merged.get(key)
            merged[key] = _merge(inherited if isinstance(inherited, dict) else {}, value, origin, child_file, path)
        else:
            merged[key] = value
        origin[path] = child_file
    return merged


def read_layers(path: Path, origin: dict | None = None, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The recipe at `path` with its `extends:` chain merged in (base first)."""
    origin = {} if origin is None else origin
    if path in _chain:
        raise LaunchError(f"{path}: `extends` loops back: {' -> '.join(map(str, (*_chain, path)))}")
    data = _read_yaml(path)
    base_ref = data.pop("extends", None)
    base: dict[str, Any] = {}
    if base_ref is not None:
        if not isinstance(base_ref, str):
            raise LaunchError(f"{path}: extends: must be a file name relative to {path.parent}")
        base_path = (path.parent / base_ref).resolve()
        if not base_path.exists():
            raise LaunchError(f"{path}: extends: {base_ref} does not exist (looked for {base_path})")
        base = read_layers(base_path, origin, (*_chain, path))
    return _merge(base, data, origin, path)


def _owner(origin: dict[tuple, Path | str], loc: tuple, default: Path) -> Path | str:
    for n in range(len(loc), 0, -1):
        if loc[:n] in origin:
            return origin[loc[:n]]
    return default


def _owners(origin: dict[tuple, Path | str], loc: tuple, default: Path) -> list[Path | str]:
    """Who set the value at `loc`: for a check across a section (`topology`: nodes or replicas), whoever set
    a field inside it, else the layer that set `loc` or its nearest parent."""
    inside = [owner for key, owner in origin.items() if len(key) > len(loc) and key[: len(loc)] == loc]
    return list(dict.fromkeys(inside)) or [_owner(origin, loc, default)]


def _where(path: Path | str) -> str:
    """A file relative to the working directory where possible, or an override's own text."""
    if isinstance(path, str):
        return path
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def validate(data: dict[str, Any], path: Path, origin: dict[tuple, Path | str] | None = None) -> Recipe:
    origin = origin or {}
    try:
        return Recipe.model_validate(data)
    except ValidationError as err:
        lines = []
        for problem in err.errors():
            loc = tuple(p for p in problem["loc"] if p != "[key]")  # a mapping's key is reported under it
            key = ".".join(str(p) for p in loc) or "(top level)"
            who = ", ".join(_where(owner) for owner in _owners(origin, loc, path))
            message = "unknown key (not part of the recipe schema)" if problem["type"] == "extra_forbidden" else problem["msg"]
            lines.append(f"{who}: {key}: {message}")
        raise LaunchError(
            f"recipe {_where(path)} is invalid:\n  " + "\n  ".join(lines),
            hint="see docs/recipes.md for every field",
        )


def _option_problems(args: dict[str, Any], section: tuple[str, ...], table: OptionTable, path: Path,
                     origin: dict[tuple, Path | str]) -> tuple[list[str], list[str]]:  # fmt: skip
    """The command-line tokens of a `server_args` mapping found at `section`, and one line per entry SGLang
    would reject, naming the layer that set it. A `null` (a stand-in removing an option) is checked by name."""

    def problem(key: str, message: str) -> str:
        return f"{_where(_owner(origin, (*section, key), path))}: {'.'.join(section)}.{key}: {message}"

    problems = [problem(key, f"set by the recipe's {OWNED_OPTIONS[key]} instead") for key in args if key in OWNED_OPTIONS]
    for key in [k for k, v in args.items() if v is None and k not in OWNED_OPTIONS]:
        try:
            table.lookup(key)
        except ServerArgError as err:
            problems.append(problem(key, str(err)))
    try:
        cli = table.to_cli({k: v for k, v in args.items() if k not in OWNED_OPTIONS and v is not None})
    except ExceptionGroup as group:
        problems += [problem(err.key, str(err)) for err in group.exceptions if isinstance(err, ServerArgError)]
        cli = []
    return cli, problems


def check_server_args(recipe: Recipe, path: Path, origin: dict[tuple, Path | str] | None = None) -> tuple[list[str], OptionTable]:
    """The server's command-line tokens and option table for the release it runs on (`SGLangSpec.release_for`);
    LaunchError if any release the recipe names would reject `server_args` or an option any stand-in sets
    (each stand-in is checked here, whether or not `--stand-in` asks for it)."""
    origin = origin or {}
    run_on = recipe.sglang.release_for(installed_sglang_version())
    problems: dict[str, list[str]] = {}  # message -> the releases that reject it
    refused: dict[str, list[str]] = {}
    for version in recipe.sglang.version:
        try:
            table = option_table(version)
        except FileNotFoundError as err:
            raise LaunchError(f"{_where(path)}: sglang.version: {err}")
        cli, found = _option_problems(recipe.server_args, ("server_args",), table, path, origin)
        for arch, entry in recipe.stand_ins.items():
            found += _option_problems(entry.server_args, ("stand_ins", arch, "server_args"), table, path, origin)[1]
        for message in found:
            problems.setdefault(message, []).append(version)
        for message in violations(recipe.server_args, version) if not found else []:
            refused.setdefault(message, []).append(version)
        if version == run_on:
            run_cli, run_table = cli, table
    if refused:
        raise LaunchError(
            f"recipe {_where(path)} combines server arguments refused at start by {_releases(refused)}:\n  "
            + "\n  ".join(_per_release(refused)),
            hint="change the options named above in the recipe or with --set (launch/sglang_rules.py cites SGLang's checks)",
        )
    if problems:
        raise LaunchError(
            f"recipe {_where(path)} has server arguments rejected by {_releases(problems)}:\n  "
            + "\n  ".join(_per_release(problems)),
            hint="option names are SGLang's own (`python -m sglang.launch_server --help`); checked against "
            + ", ".join(sorted({option_table(v).source for v in recipe.sglang.version})),
        )
    return run_cli, run_table


def _releases(found: dict[str, list[str]]) -> str:
    return f"SGLang {' and '.join(_union(found))}"


def _union(found: dict[str, list[str]]) -> list[str]:
    return sorted({v for releases in found.values() for v in releases})


def _per_release(found: dict[str, list[str]]) -> list[str]:
    """One line per problem, naming its releases where only some of those in the heading have it."""
    every = _union(found)
    return [message if releases == every or f"SGLang {releases[0]}" in message else f"{message} (SGLang {', '.join(releases)})"
            for message, releases in found.items()]  # fmt: skip


@dataclass(frozen=True)
class Substitution:
    key: str  # server_args.<option>, env.<VAR> or hardware.<field>
    card: Any  # the recipe's value (None: not set)
    stand_in: Any  # the stand-in's (None: removed)


def _vendor(arch: str) -> str:
    return "nvidia" if arch.startswith("sm") else "amd"


def stand_in_layer(data: dict[str, Any], arch: str, path: Path) -> tuple[dict[str, Any], list[Substitution]]:
    """The recipe mapping `data` as rehearsed on `arch` (its `stand_ins` entry merged in, hardware set to that
    architecture), and each value that changed. LaunchError for an unknown or unlisted architecture."""
    if not ARCH.match(arch):
        raise LaunchError(f"--stand-in {arch}: not a GPU architecture name", hint="e.g. --stand-in sm90 (H100/H200) or gfx942 (MI300X)")
    hardware = data.get("hardware") if isinstance(data.get("hardware"), dict) else {}
    stand_ins = data.get("stand_ins") if isinstance(data.get("stand_ins"), dict) else {}
    archs, vendor = hardware.get("archs") or [], hardware.get("vendor")
    if arch in archs or (not archs and vendor in ("any", _vendor(arch))):
        return data, []  # the recipe runs there as written
    entry = stand_ins.get(arch)
    if not isinstance(entry, dict):  # not listed (an entry of another type was refused when validated)
        runs_on = ", ".join(archs) if archs else f"any {vendor} GPU"
        raise LaunchError(
            f"{_where(path)}: stand_ins: no stand-in for {arch} (the recipe runs on {runs_on}; "
            f"stand-ins: {', '.join(sorted(stand_ins)) or 'none'})",
            hint=f"rehearse on an architecture it lists, or add stand_ins.{arch} to the recipe (docs/recipes.md)",
        )
    merged, changes = copy.deepcopy(data), []
    for section in ("server_args", "env"):
        target = merged.setdefault(section, {})
        for key, value in (entry.get(section) or {}).items():
            if target.get(key) != value:
                changes.append(Substitution(f"{section}.{key}", target.get(key), value))
            if value is None:
                target.pop(key, None)
            else:
                target[key] = value
    new_hardware = {**hardware, "vendor": _vendor(arch), "archs": [arch], "gpu_names": []}
    if entry.get("min_memory_gib") is not None:
        new_hardware["min_memory_gib"] = entry["min_memory_gib"]
    changes += [Substitution(f"hardware.{k}", hardware.get(k), v) for k, v in new_hardware.items()
                if k != "gpu_names" and hardware.get(k) != v]  # fmt: skip
    merged["hardware"] = new_hardware
    return merged, changes


def load_recipe(name_or_path: str, overrides: list[str | Override] = (), directory: Path = RECIPES_DIR,
                stand_in: str | None = None) -> LoadedRecipe:  # fmt: skip
    """Read, merge, override (`--set KEY=VALUE`), validate (stand-ins included), rehearse on another
    architecture (`--stand-in ARCH`; `--set` still wins) and validate again; LaunchError on any problem."""
    path = resolve(name_or_path, directory)
    origin: dict[tuple, Path | str] = {}
    written = read_layers(path, origin)
    sglang = written.get("sglang")
    takes_text = _text_options(sglang.get("version") if isinstance(sglang, dict) else None)
    data = apply_overrides(written, overrides, origin, takes_text)
    recipe = validate(data, path, origin)
    cli, table = check_server_args(recipe, path, origin)
    substitutions: list[Substitution] = []
    if stand_in is not None:
        rehearsed, substitutions = stand_in_layer(data, stand_in, path)
        for change in substitutions:
            origin[tuple(change.key.split(".", 1))] = f"{_where(path)} stand_ins.{stand_in}"
        if substitutions:
            data = apply_overrides(rehearsed, overrides, origin, takes_text)  # --set wins over the stand-in
            recipe = validate(data, path, origin)
            cli, table = check_server_args(recipe, path, origin)
    return LoadedRecipe(name=path.stem, path=path, recipe=recipe, server_cli=cli, options=table, origin=origin,
                        substitutions=substitutions)  # fmt: skip


def _text_options(version: Any) -> Callable[[str], bool]:
    """Whether an SGLang option of the recipe's first release (`sglang.version`) takes one string (so
    `--set host=::` is text, not YAML)."""
    tables: list[OptionTable] = []  # read on the first --set of an option, once
    releases = _one_or_more(version)
    first = str(releases[0]) if isinstance(releases, list) and releases else str(version)

    def takes_text(name: str) -> bool:
        try:
            tables[:] = tables or [option_table(first)]
            option = tables[0].lookup(name)
        except (FileNotFoundError, ServerArgError):
            return False  # reported when the recipe is checked
        return option.takes == "value" and option.type == "str"

    return takes_text

import importlib.util
from pathlib import Path

import pytest

from launch.errors import LaunchError
from launch.recipe import load_recipe
from launch.sglang_options import parse_with_sglang
from sglang_ext import SUPPORTED_SGLANG
from tests.conftest import all_recipe_names

REQUIRED = {
    "qwen3.5-397b-mxfp4-fse-mi355x", "qwen3.5-397b-fp8-mi355x", "qwen3.5-397b-nvfp4-rtxpro6000-mtp",
    "qwen3.5-397b-nvfp4-rtxpro6000", "qwen3.5-35b-mxfp4-h100", "qwen3.5-35b-mxfp4-mi355x",
    "qwen3.6-35b-int8-mi355x", "qwen3.6-35b-int8-strixhalo", "qwen3.6-35b-int8-h100",
    "qwen3.6-35b-bf16-mi355x", "qwen3.6-35b-bf16-strixhalo", "qwen3.6-35b-bf16-h100", "tiny-bf16",
}


def test_every_required_recipe_ships():
    assert REQUIRED <= set(all_recipe_names())


@pytest.mark.parametrize("name", all_recipe_names())
def test_recipe_is_valid(name):
    loaded = load_recipe(name)
    assert loaded.recipe.title
    assert loaded.recipe.sglang.version == list(SUPPORTED_SGLANG)  # a user on either release can serve every recipe
    for result in loaded.recipe.expected:
        assert result.source


@pytest.mark.skipif(importlib.util.find_spec("sglang") is None, reason="SGLang not installed: checked against the snapshot only")
@pytest.mark.parametrize("name", all_recipe_names())
def test_sglang_own_parser_accepts_recipe(name):
    loaded = load_recipe(name)
    parse_with_sglang(["--model-path", "m", *loaded.server_cli])


def test_nvfp4_recipe_carries_the_card_flags():
    cli = " ".join(load_recipe("qwen3.5-397b-nvfp4-rtxpro6000-mtp").server_cli)
    for flag in ("--quantization modelopt_fp4", "--kv-cache-dtype fp8_e4m3", "--attention-backend triton",
                 "--moe-runner-backend flashinfer_cutlass", "--fp4-gemm-backend flashinfer_cudnn",
                 "--cuda-graph-max-bs-decode 10", "--max-running-requests 10", "--chunked-prefill-size 32768",
                 "--speculative-algorithm NEXTN", "--speculative-num-steps 5", "--speculative-eagle-topk 1",
                 "--speculative-num-draft-tokens 6", "--mamba-radix-cache-strategy extra_buffer",
                 "--page-size 64", "--tp-size 4", "--ep-size 4", "--reasoning-parser qwen3",
                 "--tool-call-parser qwen3_coder"):
        assert flag in cli


def test_variant_without_speculation_drops_only_the_speculative_flags():
    with_mtp = load_recipe("qwen3.5-397b-nvfp4-rtxpro6000-mtp").recipe.server_args
    without = load_recipe("qwen3.5-397b-nvfp4-rtxpro6000").recipe.server_args
    dropped = set(with_mtp) - set(without)
    assert dropped == {"speculative-algorithm", "speculative-num-steps", "speculative-eagle-topk",
                       "speculative-num-draft-tokens"}
    assert all(with_mtp[k] == without[k] for k in without)


def test_hardware_variant_inherits_the_base():
    h100 = load_recipe("qwen3.5-35b-mxfp4-h100").recipe
    mi = load_recipe("qwen3.5-35b-mxfp4-mi355x").recipe
    assert h100.model == mi.model and h100.expected == mi.expected
    assert h100.hardware.archs == ["sm90"] and mi.env == {"SGLANG_USE_AITER": "1"}


def _write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _error(name: str, directory: Path, overrides=()) -> str:
    with pytest.raises(LaunchError) as caught:
        load_recipe(name, list(overrides), directory=directory)
    return str(caught.value)


def test_unknown_key_names_file_and_key(recipes_dir):
    path = recipes_dir / "tiny-bf16.yaml"
    path.write_text(path.read_text() + "gpu_memory: 3\n")
    message = _error("tiny-bf16", recipes_dir)
    assert "tiny-bf16.yaml: gpu_memory: unknown key" in message


def test_unknown_key_in_a_base_names_the_base(recipes_dir):
    base = recipes_dir / "base" / "qwen3.5-397b-mi355x-tp4.yaml"
    base.write_text(base.read_text().replace("  gpu_count: 4", "  gpu_count: 4\n  gpu_cuont: 4"))
    message = _error("qwen3.5-397b-fp8-mi355x", recipes_dir)
    assert "base/qwen3.5-397b-mi355x-tp4.yaml: hardware.gpu_cuont: unknown key" in message


def test_bad_server_flag_in_a_base_names_the_base_and_suggests(recipes_dir):
    base = recipes_dir / "base" / "qwen3.6-35b.yaml"
    base.write_text(base.read_text().replace("mem-fraction-static", "mem-fraction-statik"))
    message = _error("qwen3.6-35b-int8-h100", recipes_dir)
    assert "base/qwen3.6-35b.yaml: server_args.mem-fraction-statik" in message
    assert "did you mean 'mem-fraction-static'" in message


def test_bad_yaml_names_line(recipes_dir):
    _write(recipes_dir, "broken.yaml", "title: x\nmodel: [unclosed\n")
    message = _error("broken", recipes_dir)
    assert "broken.yaml:3" in message and "not valid YAML" in message


def test_missing_field_and_wrong_type(recipes_dir):
    _write(recipes_dir, "partial.yaml", "extends: tiny-bf16.yaml\nhardware: {vendor: nvidia, gpu_count: two}\n")
    message = _error("partial", recipes_dir)
    assert "partial.yaml: hardware.gpu_count" in message and "integer" in message


def test_model_needs_exactly_one_source(recipes_dir):
    _write(recipes_dir, "both.yaml", "extends: tiny-bf16.yaml\nmodel: {path: org/x}\n")
    assert "exactly one of model.path" in _error("both", recipes_dir)


def test_extends_loop_is_reported(recipes_dir):
    _write(recipes_dir, "a.yaml", "extends: b.yaml\n")
    _write(recipes_dir, "b.yaml", "extends: a.yaml\n")
    assert "loops back" in _error("a", recipes_dir)


def test_missing_base_is_reported(recipes_dir):
    _write(recipes_dir, "orphan.yaml", "extends: base/nope.yaml\n")
    assert "extends: base/nope.yaml does not exist" in _error("orphan", recipes_dir)


def test_model_path_in_server_args_points_to_the_model_field(recipes_dir):
    assert "set by the recipe's model.path" in _error("tiny-bf16", recipes_dir, ["model-path=/x"])


def test_unknown_recipe_suggests_close_names():
    with pytest.raises(LaunchError) as caught:
        load_recipe("tiny-bf61")
    assert "did you mean tiny-bf16" in str(caught.value)


def test_overrides_are_typed_and_reach_server_args_and_fields():
    loaded = load_recipe("tiny-bf16", ["tp-size=2", "model.served_name=foo", "eval.max_tokens=64",
                                        "server_args.mem-fraction-static=0.5", "grammar-backend=null"])
    assert loaded.recipe.server_args["tp-size"] == 2
    assert loaded.recipe.model.served_name == "foo" and loaded.recipe.eval.max_tokens == 64
    assert loaded.server_cli[loaded.server_cli.index("--mem-fraction-static") + 1] == "0.5"
    assert "--grammar-backend" not in loaded.server_cli


@pytest.mark.parametrize("override, message", [
    ("tp-size=two", "--set tp-size=two: server_args.tp-size"),
    ("eval.max_tokens=lots", "--set eval.max_tokens=lots: eval.max_tokens"),
    ("hardware.vendor=intel", "--set hardware.vendor=intel: hardware.vendor"),
    ("tp-size", "expected KEY=VALUE"),
])
def test_bad_override_names_the_override(override, message):
    with pytest.raises(LaunchError) as caught:
        load_recipe("tiny-bf16", [override])
    assert message in str(caught.value)


def test_readme_lists_every_recipe():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for name in all_recipe_names():
        family = name.rsplit("-", 1)[0]
        assert f"`{name}`" in readme or f"`{family}-{{" in readme or f"`{name.split('-')[0]}-{{" in readme, name


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["mamba-radix-cache-strategy=no_buffer", "page-size=64", "disable-overlap-schedule=true"],
         "takes page-size 1 only, not 64"),
        (["mamba-radix-cache-strategy=no_buffer"], "no_buffer needs disable-overlap-schedule: true"),
        (["mamba-radix-cache-strategy=extra_buffer", "mamba-track-interval=4"],
         "mamba-track-interval 4 is below speculative-num-draft-tokens 6"),
        (["page-size=48"], "mamba-track-interval 256 must be a multiple of page-size 48"),
    ],
)
def test_option_combinations_sglang_refuses_at_start_are_refused_first(recipes_dir: Path, sets: list[str], message: str):
    # card 001's recipe: NEXTN 5/1/6, extra_buffer, page size 64
    error = _error("qwen3.5-397b-nvfp4-rtxpro6000-mtp", recipes_dir, sets)
    assert "combines server arguments refused at start by SGLang 0.5.17 and 0.5.23" in error and message in error


def test_a_start_rule_a_release_dropped_is_checked_for_the_releases_that_keep_it(recipes_dir: Path):
    lazy_dflash = ["mamba-radix-cache-strategy=extra_buffer_lazy", "speculative-algorithm=DFLASH"]
    error = _error("tiny-bf16", recipes_dir, lazy_dflash)
    assert "refused at start by SGLang 0.5.17:" in error
    assert "DFLASH; use extra_buffer\n" in error  # the heading names the one release
    both = _error("tiny-bf16", recipes_dir, [*lazy_dflash, "page-size=48"])
    assert "refused at start by SGLang 0.5.17 and 0.5.23:" in both
    assert "DFLASH; use extra_buffer (SGLang 0.5.17)\n" in both and "multiple of page-size 48 under extra_buffer\n" in both
    assert load_recipe("tiny-bf16", [*lazy_dflash, "sglang.version=0.5.23"], directory=recipes_dir).recipe.sglang.version == ["0.5.23"]


def test_an_option_one_release_lacks_is_refused_naming_that_release(recipes_dir: Path):
    error = _error("tiny-bf16", recipes_dir, ["attn-dp-size=1"])
    assert "rejected by SGLang 0.5.17:" in error and "SGLang 0.5.17 has no option '--attn-dp-size'" in error
    assert load_recipe("tiny-bf16", ["attn-dp-size=1", "sglang.version=0.5.23"], directory=recipes_dir).server_cli[-2:] == [
        "--attn-dp-size", "1"]  # fmt: skip


@pytest.mark.parametrize("version", ["0.5.20", "[0.5.17, 0.5.22]", "[]"])
def test_a_release_sglang_ext_does_not_support_is_refused_naming_the_supported_ones(recipes_dir: Path, version: str):
    error = _error("tiny-bf16", recipes_dir, [f"sglang.version={version}"])
    assert "--set sglang.version" in error and "sglang.version" in error
    assert "not one sglang_ext supports (0.5.17 and 0.5.23)" in error or "at least 1 item" in error, error


def test_fixture_shapes_a_recipe_may_name_are_the_generators():
    import typing

    from launch.recipe import FixtureShape
    from sglang_ext.fixtures.model_config import SHAPES

    assert set(typing.get_args(FixtureShape)) == set(SHAPES)


def test_fixture_variants_are_for_generated_checkpoints_only(recipes_dir: Path):
    error = _error("qwen3.6-35b-int8-h100", recipes_dir, ["model.fixture_mtp_acceptance=0.8"])
    assert "model.fixture_* describe a generated checkpoint" in error
    assert "Input should be less than or equal to 1" in _error("tiny-bf16", recipes_dir, ["model.fixture_mtp_acceptance=1.5"])


SEED_RECIPES = ("qwen3.5-397b-mxfp4-fse-mi355x", "qwen3.5-397b-nvfp4-rtxpro6000-mtp", "qwen3.5-35b-mxfp4-mi355x",
                "qwen3.6-35b-int8-mi355x")  # fmt: skip


@pytest.mark.parametrize("name", SEED_RECIPES)
def test_each_seed_recipe_has_a_hopper_stand_in_sglang_accepts(name):
    card = load_recipe(name)
    rehearsal = load_recipe(name, stand_in="sm90")
    assert rehearsal.substitutions and rehearsal.recipe.hardware.archs == ["sm90"]
    assert rehearsal.recipe.hardware.vendor == "nvidia"
    assert "SGLANG_USE_AITER" not in rehearsal.recipe.env and rehearsal.recipe.server_args.get("attention-backend") != "aiter"
    changed = {c.key.removeprefix("server_args.") for c in rehearsal.substitutions if c.key.startswith("server_args.")}
    kept = {k: v for k, v in card.recipe.server_args.items() if k not in changed}
    assert kept and all(rehearsal.recipe.server_args[k] == v for k, v in kept.items())  # tp, ep, kv dtype, spec, ...
    assert rehearsal.recipe.hardware.gpu_count == card.recipe.hardware.gpu_count
    parse_with_sglang(["--model-path", "m", *rehearsal.server_cli])


def test_the_nvfp4_stand_in_keeps_every_card_flag_but_the_fp4_kernels():
    rehearsal = load_recipe("qwen3.5-397b-nvfp4-rtxpro6000-mtp", stand_in="sm90")
    assert {c.key: (c.card, c.stand_in) for c in rehearsal.substitutions if c.key.startswith("server_args.")} == {
        "server_args.moe-runner-backend": ("flashinfer_cutlass", "marlin"),
        "server_args.fp4-gemm-backend": ("flashinfer_cudnn", "marlin"),
        "server_args.mm-attention-backend": (None, "triton_attn"),
    }
    args = rehearsal.recipe.server_args
    assert (args["tp-size"], args["ep-size"], args["kv-cache-dtype"], args["page-size"]) == (4, 4, "fp8_e4m3", 64)
    assert (args["speculative-algorithm"], args["speculative-num-steps"], args["mamba-radix-cache-strategy"]) == ("NEXTN", 5, "extra_buffer")


def test_a_set_overrides_the_stand_in_and_native_architectures_change_nothing():
    assert load_recipe("qwen3.5-397b-mxfp4-fse-mi355x", ["attention-backend=flashinfer"], stand_in="sm90").recipe.server_args[
        "attention-backend"] == "flashinfer"  # fmt: skip
    native = load_recipe("qwen3.6-35b-int8-h100", stand_in="sm90")
    assert native.substitutions == [] and native.server_cli == load_recipe("qwen3.6-35b-int8-h100").server_cli


@pytest.mark.parametrize(("arch", "message"), [("sm100", "no stand-in for sm100"), ("hopper", "not a GPU architecture name")])
def test_an_unknown_or_unlisted_architecture_is_refused(arch: str, message: str):
    with pytest.raises(LaunchError, match=message):
        load_recipe("qwen3.5-397b-mxfp4-fse-mi355x", stand_in=arch)


@pytest.mark.parametrize(("stand_in", "message"), [
    ("sm99x: {why: typo}", "stand_ins.sm99x: Value error, 'sm99x' is not a GPU architecture name"),
    ("sm90: {why: typo, server_args: {attention-backendd: triton}}",
     "stand_ins.sm90.server_args.attention-backendd: SGLang 0.5.17 has no option '--attention-backendd'; did you mean 'attention-backend'?"),
    ("sm90: {why: typo, server_args: {attention-backend: tritonn}}", "stand_ins.sm90.server_args.attention-backend: 'attention-backend' must be one of"),
    ("sm90: {why: typo, server_args: {mem-fraction-statik: null}}", "stand_ins.sm90.server_args.mem-fraction-statik: SGLang 0.5.17 has no option"),
    ("sm90: triton please", "stand_ins.sm90: Input should be a valid dictionary"),
])  # fmt: skip
def test_every_stand_in_is_checked_at_load_as_server_args_are(recipes_dir: Path, stand_in: str, message: str):
    from launch import __main__ as cli

    path = _write(recipes_dir, "rehearsed.yaml", f"extends: tiny-bf16.yaml\nhardware: {{vendor: amd, archs: [gfx950], gpu_count: 1}}\n"
                  f"stand_ins:\n  {stand_in}\n")  # fmt: skip
    error = _error("rehearsed", recipes_dir)
    assert f"rehearsed.yaml: {message}" in error, error
    assert "no stand-in for" not in _error("rehearsed", recipes_dir)  # the same error when --stand-in names it
    with pytest.raises(LaunchError) as caught:
        load_recipe("rehearsed", directory=recipes_dir, stand_in="sm90")
    assert message in str(caught.value)
    assert cli.main([str(path), "--dry-run"]) == 1


def test_a_recipe_for_any_gpu_is_rehearsed_as_written_and_a_vendors_says_so():
    anywhere = load_recipe("tiny-bf16", stand_in="sm90")
    assert anywhere.substitutions == [] and anywhere.server_cli == load_recipe("tiny-bf16").server_cli
    with pytest.raises(LaunchError) as caught:
        load_recipe("tiny-bf16", ["hardware.vendor=nvidia"], stand_in="gfx942")
    assert "no stand-in for gfx942 (the recipe runs on any nvidia GPU; stand-ins: none)" in str(caught.value)
    assert load_recipe("tiny-bf16", ["hardware.vendor=nvidia"], stand_in="sm120").substitutions == []


def test_errors_blame_the_layer_that_set_the_value(recipes_dir: Path):
    from launch.overrides import Override

    both = _error("tiny-bf16", recipes_dir, ["topology.nodes=2", Override("topology.replicas=2", "--replicas 2")])
    assert "  --set topology.nodes=2, --replicas 2: topology: Value error, replicas of a multi-node server" in both
    assert "tiny-bf16.yaml" not in both.split("\n", 1)[1]
    zero = _error("tiny-bf16", recipes_dir, [Override("topology.replicas=0", "--replicas 0")])
    assert "  --replicas 0: topology.replicas: Input should be greater than or equal to 1" in zero
    _write(recipes_dir, "base/topology.yaml", "topology: {nodes: 2}\n")
    _write(recipes_dir, "two-hosts.yaml", "extends: tiny-bf16.yaml\n")
    (recipes_dir / "tiny-bf16.yaml").write_text("extends: base/topology.yaml\n" + (recipes_dir / "tiny-bf16.yaml").read_text())
    layered = _error("two-hosts", recipes_dir, [Override("topology.replicas=2", "--replicas 2")])
    assert "base/topology.yaml, --replicas 2: topology: Value error" in layered


def test_set_values_are_read_by_the_fields_type():
    loaded = load_recipe("tiny-bf16", ["host=::", "title=yes", "model.served_name=1e3", "sglang.version=0.5.17",
                                       "tp-size=2", "mem-fraction-static=0.5", "env.FLAG=on", "grammar-backend=null"])  # fmt: skip
    assert loaded.recipe.host == "::" and loaded.server_cli[loaded.server_cli.index("--host") + 1] == "::"
    assert (loaded.recipe.title, loaded.recipe.model.served_name, loaded.recipe.env["FLAG"]) == ("yes", "1e3", "on")
    assert loaded.recipe.server_args["tp-size"] == 2 and loaded.recipe.server_args["mem-fraction-static"] == 0.5
    assert "grammar-backend" not in loaded.recipe.server_args
    assert load_recipe("tiny-bf16", ["model.fixture=null", "model.path=/models/a: b"]).recipe.model.path == "/models/a: b"


def test_the_cli_prints_each_substitution_beside_the_card_value():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "launch", "qwen3.5-397b-nvfp4-rtxpro6000-mtp", "--stand-in", "sm90", "--dry-run"],
                          cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    row = next(line for line in done.stderr.splitlines() if "moe-runner-backend" in line)
    assert "flashinfer_cutlass" in row and "marlin" in row
    assert "--moe-runner-backend marlin" in done.stdout and "--speculative-algorithm NEXTN" in done.stdout


@pytest.mark.parametrize("name", [n for n in all_recipe_names() if n.endswith("-mtp")])
def test_each_mtp_recipe_has_a_twin_and_drafts_with_the_checkpoints_mtp_layer(name):
    from launch.checkpoint import drafts_with_its_mtp_head

    mtp, twin = load_recipe(name), load_recipe(name.removesuffix("-mtp"))
    assert drafts_with_its_mtp_head(mtp.recipe.server_args) and not drafts_with_its_mtp_head(twin.recipe.server_args)
    assert (mtp.recipe.model, mtp.recipe.hardware, mtp.recipe.checkpoint_format) == (twin.recipe.model, twin.recipe.hardware, twin.recipe.checkpoint_format)
    if mtp.recipe.hardware.vendor == "amd":
        parse_with_sglang(["--model-path", "m", *load_recipe(name, stand_in="sm90").server_cli])


def test_an_environment_variable_name_the_shell_cannot_export_is_refused_naming_the_set():
    with pytest.raises(LaunchError) as caught:
        load_recipe("tiny-bf16", ["env.1BAD=1"])
    assert "--set env.1BAD=1" in str(caught.value) and "'1BAD' is not an environment variable name" in str(caught.value)
    assert load_recipe("tiny-bf16", ["env.SGLANG_EXT_SMALL_M_GEMV=1"]).recipe.env["SGLANG_EXT_SMALL_M_GEMV"] == "1"

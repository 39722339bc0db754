"""The tiny random Qwen3.5-MoE fixtures: determinism, caching, layout, and loading with transformers."""

import json
import struct
from pathlib import Path

import pytest
from safetensors import safe_open
from safetensors.torch import load_file
import torch
from transformers import AutoModelForImageTextToText, AutoTokenizer, Qwen3_5MoeForConditionalGeneration

from sglang_ext import fixtures
from sglang_ext.fixtures import FORMATS, STAMP_FILE, ensure_fixture, write_fixture
from sglang_ext.fixtures.__main__ import main as cli_main
from sglang_ext.fixtures.model_config import TOKENIZER_DIR
from sglang_ext.fixtures.train_tokenizer import write_tokenizer
from sglang_ext.formats import shards

# The first question of GSM8K's train split (MIT licence).
GSM8K_QUESTION = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?"
)


@pytest.fixture(scope="module")
def bf16_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fixture(tmp_path_factory.mktemp("bf16"), "bf16", seed=0)


def safetensors_header(path: Path) -> dict[str, dict]:
    with path.open("rb") as file:
        (length,) = struct.unpack("<Q", file.read(8))
        header = json.loads(file.read(length))
    header.pop("__metadata__", None)
    return header


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def test_same_seed_writes_identical_files_and_another_seed_other_weights(bf16_dir: Path, tmp_path: Path) -> None:
    again = write_fixture(tmp_path / "again", "bf16", seed=0)
    for path in bf16_dir.iterdir():
        assert (again / path.name).read_bytes() == path.read_bytes(), path.name

    other = write_fixture(tmp_path / "other", "bf16", seed=1)
    assert (other / "model.safetensors").read_bytes() != (bf16_dir / "model.safetensors").read_bytes()
    assert (other / "config.json").read_bytes() == (bf16_dir / "config.json").read_bytes()


def test_unknown_format_is_refused_naming_the_valid_ones(tmp_path: Path) -> None:
    assert FORMATS == ("bf16", "quark-mxfp4-fse", "modelopt-nvfp4", "ct-mxfp4", "quark-w8a8-int8")
    valid = "valid formats: bf16, quark-mxfp4-fse, modelopt-nvfp4, ct-mxfp4, quark-w8a8-int8"
    with pytest.raises(ValueError, match=rf"'int3'.*{valid}"):
        write_fixture(tmp_path / "x", "int3")
    with pytest.raises(ValueError, match=valid):
        ensure_fixture("int3", root=tmp_path)
    assert not any(tmp_path.iterdir())


def test_ensure_fixture_is_idempotent(tmp_path: Path) -> None:
    first = ensure_fixture("bf16", seed=3, root=tmp_path)
    assert first == tmp_path / "bf16-seed3"
    weights_mtime = (first / "model.safetensors").stat().st_mtime_ns

    assert ensure_fixture("bf16", seed=3, root=tmp_path) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == weights_mtime
    assert [path.name for path in tmp_path.iterdir()] == ["bf16-seed3"]  # no staging leftovers


def test_ensure_fixture_regenerates_on_a_stale_stamp(tmp_path: Path) -> None:
    target = ensure_fixture("bf16", seed=0, root=tmp_path)
    stamp = read_json(target / STAMP_FILE)
    (target / STAMP_FILE).write_text(json.dumps({**stamp, "generator_version": stamp["generator_version"] - 1}))
    (target / "model.safetensors").write_bytes(b"truncated")

    assert ensure_fixture("bf16", seed=0, root=tmp_path) == target
    assert read_json(target / STAMP_FILE) == stamp
    assert safetensors_header(target / "model.safetensors")


def test_ensure_fixture_leaves_nothing_behind_when_writing_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(outdir: Path, config: dict, tensors: dict) -> dict:
        (outdir / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("disk full")

    monkeypatch.setitem(fixtures.WRITERS, "bf16", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        ensure_fixture("bf16", seed=0, root=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_default_cache_root_follows_sglang_ext_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SGLANG_EXT_CACHE", str(tmp_path))
    assert fixtures.default_root() == tmp_path / "fixtures"


def test_tensor_layout_is_the_published_one(bf16_dir: Path) -> None:
    header = safetensors_header(bf16_dir / "model.safetensors")
    text = read_json(bf16_dir / "config.json")["text_config"]
    experts, hidden, inter = text["num_experts"], text["hidden_size"], text["moe_intermediate_size"]

    # Main layers: fused 3-D experts. MTP: one tensor per expert and projection.
    assert header["model.language_model.layers.0.mlp.experts.gate_up_proj"]["shape"] == [experts, 2 * inter, hidden]
    assert header["model.language_model.layers.3.mlp.experts.down_proj"]["shape"] == [experts, hidden, inter]
    assert not any(".mlp.experts.0." in name for name in header if name.startswith("model."))
    assert header[f"mtp.layers.0.mlp.experts.{experts - 1}.down_proj.weight"]["shape"] == [hidden, inter]
    mtp_dense = {"fc.weight", "pre_fc_norm_embedding.weight", "pre_fc_norm_hidden.weight", "norm.weight",
                 "layers.0.self_attn.q_proj.weight", "layers.0.mlp.shared_expert_gate.weight"}  # fmt: skip
    assert {f"mtp.{name}" for name in mtp_dense} <= header.keys()
    assert "lm_head.weight" in header and "model.visual.merger.linear_fc2.weight" in header

    dtypes = {name: entry["dtype"] for name, entry in header.items()}
    assert dtypes["model.language_model.layers.0.linear_attn.A_log"] == "F32"
    assert dtypes["model.language_model.layers.0.linear_attn.norm.weight"] == "F32"
    assert {dtype for name, dtype in dtypes.items() if not name.endswith(("A_log", "linear_attn.norm.weight"))} == {
        "BF16"
    }
    assert (bf16_dir / "model.safetensors.index.json").exists() is False


def test_a_model_over_one_shard_is_written_in_shards_with_their_index(bf16_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A real-shaped model is drawn on the GPU and copied to host memory one shard at a time.
    whole = load_file(str(bf16_dir / "model.safetensors"))
    limit = (bf16_dir / "model.safetensors").stat().st_size // 3
    monkeypatch.setattr(shards, "DEFAULT_MAX_SHARD_BYTES", limit)
    sharded = write_fixture(tmp_path / "sharded", "bf16", seed=0)

    files = sorted(path.name for path in sharded.glob("*.safetensors"))
    assert len(files) >= 3 and files == [f"model-{i:05d}-of-{len(files):05d}.safetensors" for i in range(1, len(files) + 1)]
    index = read_json(sharded / "model.safetensors.index.json")
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in whole.values())
    assert index["weight_map"].keys() == whole.keys()
    for name in files:
        part = load_file(str(sharded / name))
        assert {index["weight_map"][tensor] for tensor in part} == {name}
        assert len(part) == 1 or sum(t.numel() * t.element_size() for t in part.values()) <= limit
        assert all(torch.equal(tensor, whole[tensor_name]) for tensor_name, tensor in part.items())


def test_transformers_loads_the_checkpoint_and_gives_spread_logits(bf16_dir: Path) -> None:
    model, info = AutoModelForImageTextToText.from_pretrained(bf16_dir, output_loading_info=True)
    assert isinstance(model, Qwen3_5MoeForConditionalGeneration)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]

    tokenizer = AutoTokenizer.from_pretrained(bf16_dir)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": GSM8K_QUESTION}],
        add_generation_prompt=True,
        enable_thinking=False,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        logits = model(**prompt).logits.float()

    tokens = prompt["input_ids"].shape[1]
    assert logits.shape == (1, tokens, model.config.text_config.vocab_size)
    assert torch.isfinite(logits).all()
    assert logits.std(dim=-1).min() > 0.3  # every position has a spread-out distribution
    assert logits[0].argmax(dim=-1).unique().numel() > 1  # and the positions differ


def test_tokenizer_round_trips_a_gsm8k_question(bf16_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(bf16_dir)
    ids = tokenizer(GSM8K_QUESTION)["input_ids"]
    assert tokenizer.decode(ids) == GSM8K_QUESTION
    assert len(ids) < len(GSM8K_QUESTION) / 2.5  # learned merges, not bytes
    assert 2000 <= len(tokenizer) <= 4000


def test_chat_template_handles_thinking(bf16_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(bf16_dir)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": GSM8K_QUESTION}]

    off = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    on = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert off.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n")
    assert off.endswith(f"{GSM8K_QUESTION}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert on.endswith("<|im_start|>assistant\n<think>\n")
    assert tokenizer.apply_chat_template(messages, tokenize=False).endswith("<|im_end|>\n")


def test_chat_template_source_is_the_one_in_tokenizer_config() -> None:
    template = (TOKENIZER_DIR / "chat_template.jinja").read_text(encoding="utf-8")
    assert read_json(TOKENIZER_DIR / "tokenizer_config.json")["chat_template"] == template


def test_config_token_ids_match_the_tokenizer(bf16_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(bf16_dir)
    config = read_json(bf16_dir / "config.json")
    generation = read_json(bf16_dir / "generation_config.json")
    token_id = tokenizer.convert_tokens_to_ids

    assert config["image_token_id"] == token_id("<|image_pad|>")
    assert config["video_token_id"] == token_id("<|video_pad|>")
    assert config["vision_start_token_id"] == token_id("<|vision_start|>")
    assert config["vision_end_token_id"] == token_id("<|vision_end|>")
    assert config["text_config"]["eos_token_id"] == token_id("<|endoftext|>")
    assert generation["eos_token_id"] == [token_id("<|im_end|>"), token_id("<|endoftext|>")]
    assert tokenizer.eos_token_id == token_id("<|im_end|>")
    vocab_size = config["text_config"]["vocab_size"]
    assert len(tokenizer) <= vocab_size < len(tokenizer) + 64 and vocab_size % 64 == 0


def test_shipped_tokenizer_is_small_and_reproducible(tmp_path: Path) -> None:
    shipped = [TOKENIZER_DIR / "tokenizer.json", TOKENIZER_DIR / "tokenizer_config.json"]
    assert sum(path.stat().st_size for path in shipped) < 300_000
    gsm8k_train = Path(__file__).resolve().parent / "data" / "gsm8k" / "train-full.jsonl.gz"
    for path in write_tokenizer(gsm8k_train, tmp_path):
        assert path.read_bytes() == (TOKENIZER_DIR / path.name).read_bytes(), path.name


def test_cli_writes_and_lists_the_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cli_main([str(tmp_path / "out"), "--seed", "2"])
    printed = capsys.readouterr().out
    assert "model.safetensors" in printed and "config.json" in printed
    total = sum(path.stat().st_size for path in (tmp_path / "out").iterdir())
    assert f"{total:,} bytes" in printed
    assert read_json(tmp_path / "out" / STAMP_FILE)["seed"] == 2


def test_a_vocab_size_override_sizes_embedding_and_lm_head_and_is_stamped(tmp_path: Path) -> None:
    checkpoint = write_fixture(tmp_path / "wide", "bf16", vocab_size=10048)
    assert read_json(checkpoint / "config.json")["text_config"]["vocab_size"] == 10048
    assert read_json(checkpoint / STAMP_FILE)["vocab_size"] == 10048
    with safe_open(checkpoint / "model.safetensors", "pt") as f:
        rows = {name: f.get_slice(name).get_shape()[0] for name in f.keys()
                if name.endswith(("embed_tokens.weight", "lm_head.weight"))}  # fmt: skip
    assert rows and set(rows.values()) == {10048}, rows


def test_real_shapes_follow_the_published_configs(tmp_path: Path) -> None:
    from sglang_ext.fixtures.model_config import model_config

    text = model_config("qwen3.5-35b-a3b", num_layers=8)["text_config"]
    assert (text["hidden_size"], text["num_experts"], text["num_experts_per_tok"]) == (2048, 256, 8)
    assert (text["moe_intermediate_size"], text["shared_expert_intermediate_size"], text["vocab_size"]) == (512, 512, 248320)
    assert (text["num_attention_heads"], text["num_key_value_heads"], text["head_dim"]) == (16, 2, 256)
    assert (text["linear_num_key_heads"], text["linear_num_value_heads"], text["linear_key_head_dim"]) == (16, 32, 128)
    assert text["layer_types"] == ["linear_attention"] * 3 + ["full_attention"] + ["linear_attention"] * 3 + ["full_attention"]
    assert text["rope_parameters"]["mrope_section"] == [11, 11, 10]
    tp4 = model_config("qwen3.5-397b-a17b-tp4")["text_config"]
    assert (tp4["hidden_size"], tp4["num_experts"], tp4["moe_intermediate_size"], tp4["num_hidden_layers"]) == (4096, 512, 256, 60)
    with pytest.raises(ValueError, match="valid shapes: tiny, tiny-top10, qwen3.5-35b-a3b, qwen3.5-397b-a17b-tp4"):
        write_fixture(tmp_path / "x", "bf16", shape="qwen3.5-1t")


@pytest.mark.parametrize("where", ["file", "under a file"])
def test_cli_refuses_an_output_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str) -> None:
    (tmp_path / "taken").write_text("not a directory")
    outdir = tmp_path / "taken" if where == "file" else tmp_path / "taken" / "checkpoint"
    with pytest.raises(SystemExit) as exit_info:
        cli_main([str(outdir)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'taken'} is a file, not a directory" in err and "Traceback" not in err


def test_cli_refuses_absurd_layer_counts_and_devices(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv, message in ((["--layers", "0"], "give 1 to 128 decoder layers"), (["--device", "tpu9"], "is not a torch device")):
        with pytest.raises(SystemExit):
            cli_main([str(tmp_path / "c"), *argv])
        assert message in capsys.readouterr().err


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_397b_routed_tiny_shape_is_a_valid_checkpoint_in_every_format(tmp_path: Path, fmt: str) -> None:
    from sglang_ext.formats.check import check_checkpoint

    checkpoint = write_fixture(tmp_path / fmt, fmt, shape="tiny-top10")
    text = read_json(checkpoint / "config.json")["text_config"]
    assert (text["num_experts"], text["num_experts_per_tok"]) == (32, 10)
    assert text["layer_types"] == ["linear_attention"] * 3 + ["full_attention"]  # the 397B's 3:1
    report = check_checkpoint(checkpoint)
    assert report.ok, report.problems[:3]


def test_each_format_stores_the_mtp_experts_as_its_checkpoint_family_does(fixtures_root: Path) -> None:
    text = read_json(fixtures_root / "bf16" / "config.json")["text_config"]
    experts, hidden, inter = text["num_experts"], text["hidden_size"], text["moe_intermediate_size"]
    for fmt in FORMATS:
        header = safetensors_header(fixtures_root / fmt / "model.safetensors")
        per_expert = [name for name in header if name.startswith("mtp.layers.0.mlp.experts.0.")]
        excluded = json.dumps(read_json(fixtures_root / fmt / "config.json").get("quantization_config", {}))
        if fmt in fixtures.QWEN3_6_FORMATS:  # Qwen3.6: fused 3-D, as Qwen/Qwen3.6-35B-A3B stores them
            assert header["mtp.layers.0.mlp.experts.gate_up_proj"]["shape"] == [experts, 2 * inter, hidden], fmt
            assert header["mtp.layers.0.mlp.experts.down_proj"]["shape"] == [experts, hidden, inter], fmt
            assert not per_expert and "mtp.layers.0.mlp.experts.0." not in excluded, fmt
            assert "mtp.layers.0.self_attn.q_proj" in excluded  # the MTP head stays BF16 (SGLang: an mtp.* exclude)
        else:  # Qwen3.5: per expert
            assert len(per_expert) == 3 and "mtp.layers.0.mlp.experts.gate_up_proj" not in header, fmt
    assert fixtures.QWEN3_6_FORMATS == ("quark-w8a8-int8",)


def test_the_int8_recipe_and_cli_default_to_qwen36s_layout_and_either_can_ask_for_the_other(tmp_path: Path, capsys) -> None:
    from launch.__main__ import _model_path
    from launch.recipe import load_recipe

    assert load_recipe("tiny-int8").recipe.model.fixture_mtp_experts == "fused"
    assert "-mtpfused-" in _model_path(load_recipe("tiny-int8"), materialize=False)
    assert "-mtpfused-" not in _model_path(load_recipe("tiny-bf16"), materialize=False)
    assert fixtures.fixture_dir("quark-w8a8-int8") == fixtures.fixture_dir("quark-w8a8-int8", variant=fixtures.Variant(mtp_fused_experts=True))
    assert cli_main([str(tmp_path / "int8"), "--format", "quark-w8a8-int8", "--mtp-experts", "per-expert"]) == 0
    assert "mtp.layers.0.mlp.experts.0.gate_proj.weight" in safetensors_header(tmp_path / "int8" / "model.safetensors")
    assert read_json(tmp_path / "int8" / STAMP_FILE)["mtp_fused_experts"] is False


def test_a_file_in_the_way_is_named_once(tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "taken"
    blocker.write_text("")
    for outdir, says in ((blocker, f"{blocker} is a file"), (blocker / "sub", f"{blocker / 'sub'}: its parent {blocker} is a file")):
        with pytest.raises(SystemExit) as exited:
            cli_main([str(outdir)])
        err = capsys.readouterr().err
        assert exited.value.code == 2 and f"error: {says}, not a directory" in err
        assert err.count(str(blocker)) == 1 + (outdir != blocker), err


def test_an_empty_outdir_is_refused_not_read_as_the_working_directory(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    for outdir in ("", "  "):
        with pytest.raises(SystemExit) as exited:
            cli_main([outdir])
        assert exited.value.code == 2 and "an empty path; give the directory to write" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_every_file_of_a_checkpoint_gets_the_same_mode(fixtures_root: Path) -> None:
    for fmt in FORMATS:
        modes = {path.name: oct(path.stat().st_mode & 0o777) for path in (fixtures_root / fmt).iterdir()}
        assert set(modes.values()) == {modes["config.json"]}, (fmt, modes)

"""The GPU conformance suite's cases on CPU, everything short of starting SGLang: checkpoints written by the
quantizer taken with `--checkpoints FORMAT=DIR` (planned, accepted by the launcher, scored against their own
dequantization), the tiny-top10 cases of every format, and the image chats (SGLang's own request model and
image loader read them; transformers' float32 model answers them, deterministically)."""

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from sglang_ext.fixtures import FORMATS
from sglang_ext.formats.check import check_checkpoint
from sglang_ext.formats.reference import reference_model
from sglang_ext.quantize.__main__ import main as quantize_main
from tests.gpu import conformance
from tests.gpu import conformance_images as images
from tests.gpu.conformance_plan import CASES, plan, recipe_of_format, server_sets

FORMAT_OPTIONS = {"quark-w8a8-int8": [], "modelopt-nvfp4": ["--input-amax", "8"]}


@pytest.fixture(scope="module")
def quantized(fixtures_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The BF16 fixture through `python -m sglang_ext.quantize SRC OUT --to FORMAT`, as the GPU session writes them."""
    root = tmp_path_factory.mktemp("quantized")
    for fmt, options in FORMAT_OPTIONS.items():
        assert quantize_main([str(fixtures_root / "bf16"), str(root / fmt), "--to", fmt, "--no-progress", *options]) == 0
    return {fmt: root / fmt for fmt in FORMAT_OPTIONS}


def perfect_server(case: conformance.Result, reference, processor, prompts: list[list[int]], pngs: dict[str, bytes], new_tokens: int = 3) -> None:
    """Fill `case` with what a server computing exactly the reference would answer: greedy text and image chats."""
    for prompt in prompts:
        tokens = list(prompt)
        for _ in range(new_tokens):
            tokens.append(int(conformance._log_softmax(reference, {"input_ids": torch.tensor([tokens])}, "cpu")[-1].argmax()))
        logprobs = conformance._log_softmax(reference, {"input_ids": torch.tensor([tokens])}, "cpu")
        case.sequences.append(tokens)
        case.logprobs.append(logprobs[:-1].gather(-1, torch.tensor(tokens[1:])[:, None])[:, 0].tolist())
    for image in images.IMAGES:
        output: list[int] = []
        for _ in range(new_tokens):
            output.append(int(conformance._log_softmax(reference, images.reference_inputs(processor, pngs[image.form], output), "cpu")[-1].argmax()))
        inputs = images.reference_inputs(processor, pngs[image.form], output)
        logprobs = conformance._log_softmax(reference, inputs, "cpu")
        ids = inputs["input_ids"][0].tolist()
        prompt = ids[: -len(output)]
        chosen = logprobs[len(prompt) - 1 : -1].gather(-1, torch.tensor(output)[:, None])[:, 0].tolist()
        case.image_answers.append(images.Answer(image.form, prompt, output, chosen))


# --- --checkpoints FORMAT=DIR -------------------------------------------------------------------------


def test_quantized_checkpoints_are_planned_served_by_their_recipe_and_scored_against_their_dequantization(
    quantized: dict[str, Path], tmp_path: Path, capsys
) -> None:  # fmt: skip
    from launch.__main__ import main as launch_main

    assert conformance.main(["--checkpoints", *(f"{fmt}={d}" for fmt, d in quantized.items()), "--dry-run"]) == 0
    shown = capsys.readouterr().out
    assert "3 cases" in shown and "int8 fse-off @quark-w8a8-int8" in shown and "tiny-nvfp4" in shown

    cases = plan(checkpoints=tuple(quantized.items()))
    # INT8 quantizes the shared expert as the routed ones, so sglang_ext fuses it: on and off. NVFP4 (no
    # --fuse-shared-expert) keeps it BF16: once, unfused.
    assert [(c.name, c.recipe, c.fse) for c in cases] == [
        ("int8 @quark-w8a8-int8", "tiny-int8", True), ("int8 fse-off @quark-w8a8-int8", "tiny-int8", False),
        ("nvfp4 @modelopt-nvfp4", "tiny-nvfp4", None)]  # fmt: skip
    for case in cases:  # the real launcher, as the suite will call it, up to starting SGLang
        assert launch_main([case.recipe, "--dry-run", *[a for s in server_sets(case) for a in ("--set", s)]]) == 0
        command = capsys.readouterr().out
        assert f"--model-path {case.checkpoint}" in command.replace("\\\n", "").replace("    ", "")
        assert ("--disable-shared-experts-fusion" in command) is (case.fse is False)

    checkpoints = conformance.checkpoints_of(cases)
    assert checkpoints == {("tiny-int8", str(quantized["quark-w8a8-int8"])): quantized["quark-w8a8-int8"],
                           ("tiny-nvfp4", str(quantized["modelopt-nvfp4"])): quantized["modelopt-nvfp4"]}  # fmt: skip
    # The reference the suite builds for the INT8 one answers as a perfect server would, so it scores itself
    # exactly; its processor and vision tower come from the quantized directory.
    from transformers import AutoProcessor

    from sglang_ext.formats.dequantize import write_dequantized

    int8 = quantized["quark-w8a8-int8"]
    reference = reference_model(int8, write_dequantized(int8, tmp_path / "reference"))
    prompts = conformance.prompt_ids(int8)[:2]
    pictures = images.write_pngs(tmp_path / "images")
    result = conformance.Result(cases[0].name, cases[0].recipe, True, cases[0].served, chat_completion_tokens=8, fused_in_log=True)
    perfect_server(result, reference, AutoProcessor.from_pretrained(int8), prompts, {i.form: p.read_bytes() for i, p in pictures.items()})
    conformance.score([result], {key: path for key, path in checkpoints.items() if key[0] == "tiny-int8"}, prompts, pictures, tmp_path, "cpu")
    assert (tmp_path / "dequantized" / "tiny-int8@quark-w8a8-int8" / "model.safetensors").is_file()
    assert result.max_abs_logprob_error < 1e-4 and result.greedy_agreement == 1.0
    assert result.image_max_abs_logprob_error < 1e-4 and result.image_greedy_agreement == 1.0
    assert conformance.case_failures(result) == []


def test_a_checkpoint_missing_or_of_another_format_is_refused_naming_it(quantized: dict[str, Path], tmp_path: Path, capsys) -> None:
    int8, nvfp4 = quantized["quark-w8a8-int8"], quantized["modelopt-nvfp4"]
    (tmp_path / "empty").mkdir()
    broken = tmp_path / "broken"  # the INT8 checkpoint less one weight scale
    shutil.copytree(int8, broken)
    (shard,) = broken.glob("*.safetensors")
    scale = "model.language_model.layers.0.linear_attn.in_proj_qkv.weight_scale"
    save_file({name: t for name, t in load_file(shard).items() if name != scale}, shard)
    index = json.loads((broken / "model.safetensors.index.json").read_text())
    del index["weight_map"][scale]
    (broken / "model.safetensors.index.json").write_text(json.dumps(index))
    refusals = {
        f"quark-w8a8-int8={tmp_path / 'gone'}": f"{tmp_path / 'gone'} is not a directory; give the OUT of `python -m sglang_ext.quantize SRC OUT --to quark-w8a8-int8`",
        f"quark-w8a8-int8={tmp_path / 'empty'}": f"{tmp_path / 'empty'} has no config.json, so it is no checkpoint",
        f"quark-w8a8-int8={nvfp4}": f"{nvfp4} holds a modelopt-nvfp4 checkpoint, not quark-w8a8-int8; give it as modelopt-nvfp4={nvfp4}",
        f"bf16={int8}": f"{int8} holds a quark-w8a8-int8 checkpoint, not bf16; give it as quark-w8a8-int8={int8}",
        f"quark-w8a8-int8={broken}": f"{broken} does not match its config.json (1 problem(s); first: {scale}: missing",
        f"int8={int8}": "no format 'int8'; the formats: bf16, quark-w8a8-int8, modelopt-nvfp4, ct-mxfp4, quark-mxfp4-fse",
        str(int8): "give FORMAT=DIR",
    }
    for item, message in refusals.items():
        with pytest.raises(SystemExit) as exit_info:
            conformance.main(["--checkpoints", item, "--dry-run"])
        error = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in error and "Traceback" not in error, (item, error)
    with pytest.raises(SystemExit):
        conformance.main(["--checkpoints", f"quark-w8a8-int8={int8}", "--shapes", "tiny-top10", "--dry-run"])
    assert "give one of them" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        conformance.main(["--checkpoints", f"quark-w8a8-int8={int8}", f"quark-w8a8-int8={int8}", "--dry-run"])
    assert "two checkpoints would both be called int8 @quark-w8a8-int8" in capsys.readouterr().err
    assert set(recipe_of_format()) == {"bf16", *FORMAT_OPTIONS, "ct-mxfp4", "quark-mxfp4-fse"}


# --- --shapes tiny,tiny-top10 --------------------------------------------------------------------------


def test_tiny_top10_cases_of_every_format_are_selected_and_their_checkpoints_built(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("SGLANG_EXT_CACHE", str(tmp_path / "cache"))
    assert conformance.main(["--shapes", "tiny,tiny-top10", "--dry-run"]) == 0
    assert f"{2 * len(CASES)} cases" in capsys.readouterr().out

    top10 = plan(("tiny-top10",))
    assert [c.label for c in top10] == [c.label for c in CASES] and {c.shape for c in top10} == {"tiny-top10"}
    assert {(c.recipe, c.fse) for c in top10} == {(c.recipe, c.fse) for c in CASES}  # FSE on and off where it fuses
    assert top10[1].name == "bf16 fse-off @tiny-top10" and "model.fixture_shape=tiny-top10" in server_sets(top10[1])
    checkpoints = conformance.checkpoints_of(top10)
    assert {recipe for recipe, _ in checkpoints} == set(conformance.THRESHOLDS)  # every format, same pass marks
    assert set(recipe_of_format()) == set(FORMATS)
    for (recipe, served), checkpoint in checkpoints.items():
        text = json.loads((checkpoint / "config.json").read_text())["text_config"]
        assert served == "tiny-top10" and (text["num_experts"], text["num_experts_per_tok"]) == (32, 10), recipe
        assert check_checkpoint(checkpoint).ok, recipe

    assert conformance.main(["--shape", "tiny-top10", "--cases", "int8,int8 fse-off", "--dry-run"]) == 0  # the old flag
    shown = capsys.readouterr().out
    assert "2 cases" in shown and "int8 fse-off @tiny-top10" in shown and "bf16" not in shown
    with pytest.raises(SystemExit):
        conformance.main(["--shapes", "tiny,tiny-top11"])
    assert "no shape tiny-top11; the shapes: tiny, tiny-top10" in capsys.readouterr().err


@pytest.mark.skipif(conformance.gpu_unavailable() is None, reason="a GPU is here: this would start the servers")
def test_without_a_gpu_the_suite_says_why_and_serves_nothing(tmp_path: Path, capsys) -> None:
    assert conformance.main(["--cases", "bf16", "--out", str(tmp_path)]) == 1
    assert f"conformance: {conformance.gpu_unavailable()}, so nothing is served" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


# --- image chats ---------------------------------------------------------------------------------------


def test_sglang_reads_the_image_chat_request_and_both_image_urls(tmp_path: Path) -> None:
    from PIL import Image
    from sglang.srt.entrypoints.openai.protocol import ChatCompletionRequest
    from sglang.srt.utils.common import load_image

    pictures = images.write_pngs(tmp_path)
    assert [url.split(":", 1)[0] for url in (images.image_url(i, p) for i, p in pictures.items())] == ["data", "file"]
    for image, path in pictures.items():
        url = images.image_url(image, path)
        request = ChatCompletionRequest(**images.chat_request(url, "tiny-qwen3.5-moe", 16))
        assert request.return_token_ids and request.ignore_eos and request.logprobs and request.max_completion_tokens == 16
        assert request.chat_template_kwargs == {"enable_thinking": False}
        assert request.messages[0].content[0].image_url.url == url
        loaded, _ = load_image(url, False)
        expected = np.asarray(Image.open(io.BytesIO(images.png(image))).convert("RGB"))
        assert loaded.size == (image.width, image.height) and np.array_equal(np.asarray(loaded.convert("RGB")), expected)
    assert images.png(images.IMAGES[0]) == images.png(images.IMAGES[0])


def test_an_image_answer_is_read_from_sglangs_own_response_model() -> None:
    from sglang.srt.entrypoints.openai import protocol

    logprobs = protocol.ChoiceLogprobs(content=[protocol.ChatCompletionTokenLogprob(token=t, bytes=[], logprob=-0.5 * i, top_logprobs=[])
                                                for i, t in enumerate("ab")])  # fmt: skip
    choice = protocol.ChatCompletionResponseChoice(index=0, message=protocol.ChatMessage(role="assistant", content="ab"),
                                                   logprobs=logprobs, finish_reason="length", prompt_token_ids=[1, 2, 3], token_ids=[7, 8])  # fmt: skip
    response = protocol.ChatCompletionResponse(id="x", model="m", choices=[choice], usage=protocol.UsageInfo(prompt_tokens=3, completion_tokens=2, total_tokens=5))
    answer = images.parse_answer("file", json.loads(response.model_dump_json()))
    assert answer == images.Answer("file", [1, 2, 3], [7, 8], [0.0, -0.5])
    without_ids = json.loads(response.model_dump_json(exclude={"choices": {0: {"token_ids"}}}))
    with pytest.raises(ValueError, match="lacks token ids or logprobs"):
        images.parse_answer("file", without_ids)


def test_the_float32_reference_answers_an_image_chat_of_a_tiny_checkpoint(fixtures_root: Path) -> None:
    from PIL import Image
    from transformers import AutoProcessor

    checkpoint = fixtures_root / "bf16"
    model, processor = reference_model(checkpoint, checkpoint), AutoProcessor.from_pretrained(checkpoint)
    vocab = json.loads((checkpoint / "config.json").read_text())["text_config"]["vocab_size"]
    for image in images.IMAGES:
        inputs = images.reference_inputs(processor, images.png(image))
        in_prompt, from_grid = images.image_token_count(processor, inputs)
        # the processor's grid: one token per 2x2 merge of 16-pixel patches, and the prompt holds that many
        assert in_prompt == from_grid == (image.width // 32) * (image.height // 32)
        logits = conformance._log_softmax(model, inputs, "cpu")
        assert logits.shape == (inputs["input_ids"].shape[1], vocab) and bool(logits.isfinite().all())
        assert torch.equal(logits, conformance._log_softmax(model, images.reference_inputs(processor, images.png(image)), "cpu"))
        teacher_forced = conformance._log_softmax(model, images.reference_inputs(processor, images.png(image), [11, 12]), "cpu")
        assert torch.allclose(teacher_forced[: len(logits)], logits, atol=1e-4)  # output tokens do not change the past
        # the picture reaches the language model: other pixels, same prompt tokens, other logits after the image
        inverted = io.BytesIO()
        Image.fromarray(255 - np.asarray(Image.open(io.BytesIO(images.png(image))))).save(inverted, format="PNG")
        other_inputs = images.reference_inputs(processor, inverted.getvalue())
        assert torch.equal(other_inputs["input_ids"], inputs["input_ids"])
        assert (conformance._log_softmax(model, other_inputs, "cpu")[-1] - logits[-1]).abs().max() > 1e-3


def test_image_chats_are_scored_and_a_wrong_server_or_prompt_is_caught(fixtures_root: Path) -> None:
    from transformers import AutoProcessor

    checkpoint = fixtures_root / "bf16"
    model, processor = reference_model(checkpoint, checkpoint), AutoProcessor.from_pretrained(checkpoint)
    pngs = {image.form: images.png(image) for image in images.IMAGES}
    perfect = conformance.Result("bf16", "tiny-bf16", True)
    perfect_server(perfect, model, processor, [], pngs)
    conformance._score_images(perfect, model, processor, pngs, "cpu")
    assert perfect.image_max_abs_logprob_error < 1e-4 and perfect.image_greedy_agreement == 1.0 and perfect.image_problems == []

    wrong = conformance.Result("bf16", "tiny-bf16", True)
    wrong.image_answers = [images.Answer(a.form, a.prompt_ids, a.output_ids[:-1] + [(a.output_ids[-1] + 1) % 3000],
                                         [lp - 0.5 for lp in a.logprobs]) for a in perfect.image_answers]  # fmt: skip
    short = perfect.image_answers[0]
    wrong.image_answers.append(images.Answer(short.form, short.prompt_ids[:5] + short.prompt_ids[9:], short.output_ids, short.logprobs))
    conformance._score_images(wrong, model, processor, pngs, "cpu")
    assert wrong.image_max_abs_logprob_error > 0.5 and abs(wrong.image_greedy_exact_agreement - 2 / 3) < 1e-6
    assert wrong.image_problems == [f"base64: SGLang's prompt has {len(short.prompt_ids) - 4} tokens (60 image), the processor's "
                                    f"{len(short.prompt_ids)} (64 image)"]  # fmt: skip
    wrong.chat_completion_tokens, wrong.fused_in_log, wrong.max_abs_logprob_error, wrong.greedy_agreement = 8, True, 0.0, 1.0
    misses = wrong.image_greedy_miss_shortfalls  # the two changed last tokens, of the two chats scored
    assert len(misses) == 2 and all(m > 0 for m in misses)
    near = sum(m < conformance.NEAR_TIE for m in misses)
    assert abs(wrong.image_greedy_agreement - (6 - len(misses) + near) / 6) < 1e-6  # 2 chats × 3 tokens; a near-tie agrees
    wrong.image_greedy_agreement = 0.5
    assert conformance.case_failures(wrong) == [
        f"bf16: image max |Δlogprob| {wrong.image_max_abs_logprob_error:.4f} ≥ 0.25",
        f"bf16: image greedy agreement 0.500 < 0.95 (2 misses, {near} at a near-tie, which agree; the "
        f"reference puts SGLang's token {min(misses):.3f}–{max(misses):.3f} nats below its best)",
        f"bf16: image {wrong.image_problems[0]}"]  # fmt: skip


# --- --rescore OUT ------------------------------------------------------------------------------------


def test_a_finished_run_is_scored_again_from_its_saved_answers(fixtures_root: Path, tmp_path: Path, capsys) -> None:
    """Each case's answers are kept as served (servers/<case>/raw.json); `--rescore` scores them again without
    a server, against checkpoints found where the run served them or where --checkpoints says they are now."""
    from transformers import AutoProcessor

    checkpoint = fixtures_root / "bf16"
    model, processor = reference_model(checkpoint, checkpoint), AutoProcessor.from_pretrained(checkpoint)
    prompts = conformance.prompt_ids(checkpoint)
    pngs = {image.form: images.png(image) for image in images.IMAGES}
    moved = tmp_path / "elsewhere"  # where the GPU host had the checkpoint; not on this machine
    run = tmp_path / "run"
    results = []
    for name, fse in (("bf16 @elsewhere", True), ("bf16 fse-off @elsewhere", False)):
        result = conformance.Result(name, "tiny-bf16", fse, str(moved), chat_completion_tokens=8, fused_in_log=fse)
        perfect_server(result, model, processor, prompts, pngs)
        result.top2_gaps = [[1.0] * 3 for _ in prompts]
        conformance._save_raw(result, conformance.case_dir(run / "servers", name))
        results.append(conformance.Result(**{k: v for k, v in vars(result).items() if k not in conformance.RAW_FIELDS}))
    conformance.save_run(run / "conformance.json", results, [])  # as served: not scored yet

    with pytest.raises(SystemExit) as exit_:
        conformance.main(["--rescore", str(run)])
    assert exit_.value.code == 2 and f"served {moved}, which is not here: give --checkpoints bf16=DIR" in capsys.readouterr().err

    assert conformance.main(["--rescore", str(run), "--checkpoints", f"bf16={checkpoint}"]) == 0
    assert "PASS: 2 cases, 1 FSE pairs" in capsys.readouterr().out
    rescored = json.loads((run / "rescored.json").read_text())
    assert [(r["max_abs_logprob_error"] < 1e-4, r["greedy_agreement"], r["image_greedy_agreement"]) for r in rescored["results"]] == [
        (True, 1.0, 1.0), (True, 1.0, 1.0)]  # fmt: skip
    assert rescored["fse_pairs"][0]["identical_sequences"] == len(prompts)
    assert json.loads((run / "conformance.json").read_text())["fse_pairs"] == []  # the run's own record is kept

    (run / "servers" / "bf16-fse-off-@elsewhere" / conformance.RAW_FILE).unlink()
    with pytest.raises(SystemExit):
        conformance.main(["--rescore", str(run), "--checkpoints", f"bf16={checkpoint}"])
    assert "raw.json: missing, so 'bf16 fse-off @elsewhere' cannot be scored again" in capsys.readouterr().err

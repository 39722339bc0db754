"""The GPU conformance suite's scorer, on CPU: a server that computes exactly the reference scores zero
error and full agreement; one that answers with other logprobs and tokens is caught."""

from pathlib import Path

import pytest
import torch

from sglang_ext.fixtures import write_fixture
from sglang_ext.formats.reference import reference_model
from tests.gpu import conformance


def test_scorer_on_a_perfect_and_a_wrong_server(tmp_path: Path) -> None:
    checkpoint = write_fixture(tmp_path / "bf16", "bf16")
    model = reference_model(checkpoint, checkpoint)
    prompts = conformance.prompt_ids(checkpoint)[:2]
    perfect = conformance.Result("perfect", "tiny-bf16", True)
    for prompt in prompts:  # greedy decode with the reference itself, as a perfect server would
        tokens = list(prompt)
        for _ in range(4):
            with torch.no_grad():
                tokens.append(int(model(input_ids=torch.tensor([tokens])).logits[0, -1].argmax()))
        with torch.no_grad():
            logprobs = model(input_ids=torch.tensor([tokens])).logits[0].log_softmax(-1)
        perfect.sequences.append(tokens)
        perfect.logprobs.append(logprobs[:-1].gather(-1, torch.tensor(tokens[1:])[:, None])[:, 0].tolist())
    lengths = [len(p) for p in prompts]
    conformance._score(perfect, model, lengths, "cpu")
    assert perfect.max_abs_logprob_error < 1e-4 and perfect.greedy_agreement == 1.0 and perfect.greedy_miss_shortfalls == []

    wrong = conformance.Result("wrong", "tiny-bf16", False)
    wrong.sequences = [s[:-1] + [(s[-1] + 1) % 3000] for s in perfect.sequences]
    wrong.logprobs = [[lp - 0.5 for lp in lps] for lps in perfect.logprobs]
    conformance._score(wrong, model, lengths, "cpu")
    assert wrong.max_abs_logprob_error > 0.5 and wrong.greedy_exact_agreement == 0.75
    assert len(wrong.greedy_miss_shortfalls) == 2 and all(s > 0 for s in wrong.greedy_miss_shortfalls)
    beyond_ties = sum(s >= conformance.NEAR_TIE for s in wrong.greedy_miss_shortfalls)
    assert wrong.greedy_agreement == 1 - beyond_ties / 8  # 2 prompts × 4 tokens; a near-tie miss agrees
    wrong.greedy_agreement, wrong.greedy_miss_shortfalls = 0.5, [0.5, 0.02]  # what a miss report says: near-ties, range
    assert any("(2 misses, 1 at a near-tie, which agree; the reference puts SGLang's token 0.020–0.500 nats below its best)"
               in why for why in conformance.case_failures(wrong))  # fmt: skip

    perfect.top2_gaps = [[1.0] * 4 for _ in prompts]  # decisive everywhere: parting is unexplained
    wrong.top2_gaps = [[1.0, 1.0, 1.0, 0.05] for _ in prompts]  # ... unless the last token was a near-tie
    pair = conformance.compare_fse(perfect, wrong, lengths)
    assert pair["identical_sequences"] == 0 and pair["unexplained_divergences"] == 0
    assert abs(pair["max_abs_prompt_logprob_diff"] - 0.5) < 1e-6
    wrong.top2_gaps = [[1.0] * 4 for _ in prompts]
    assert conformance.compare_fse(perfect, wrong, lengths)["unexplained_divergences"] == 2


def test_split_runs_merge_into_one_table(tmp_path: Path, capsys) -> None:
    first = [conformance.Result("bf16", "tiny-bf16", True, max_abs_logprob_error=0.1, greedy_agreement=1.0,
                                chat_completion_tokens=8, image_max_abs_logprob_error=0.05, image_greedy_agreement=1.0),
             conformance.Result("bf16 @tiny-top10", "tiny-bf16", True, "tiny-top10", max_abs_logprob_error=0.1, greedy_agreement=1.0,
                                chat_completion_tokens=8, fused_in_log=True, image_problems=["file: refused, 400 bad image"])]  # fmt: skip
    second = [conformance.Result("nvfp4", "tiny-nvfp4", None, error="server did not start")]
    pair = {"pair": "bf16 vs bf16 fse-off", "recipe": "tiny-bf16", "served": "tiny", "sequences": 8, "identical_sequences": 8,
            "unexplained_divergences": 0, "max_abs_prompt_logprob_diff": 0.01, "mean_abs_prompt_logprob_diff": 0.001}
    conformance.save_run(tmp_path / "a.json", first, [pair])
    conformance.save_run(tmp_path / "b.json", second, [])
    results, pairs = conformance.load_runs([tmp_path / "a.json", tmp_path / "b.json"])
    assert [(r.case, r.fse, r.max_abs_logprob_error, r.image_max_abs_logprob_error) for r in results][0] == ("bf16", True, 0.1, 0.05)
    assert results[1].image_problems == ["file: refused, 400 bad image"] and results[1].served == "tiny-top10"
    assert results[2].error == "server did not start" and pairs == [pair]
    conformance.print_table(results, pairs)
    table = capsys.readouterr().out
    assert "nvfp4" in table and "8/8 generations identical" in table and "0.0500" in table
    # bf16's numbers pass, but nothing in its server log said the shared expert was fused; at tiny-top10 an
    # image was refused (so nothing of the images was scored) and FSE off did not run
    assert conformance.failures(results, pairs) == [
        "bf16: server log says fused=None, case wants True", "bf16 @tiny-top10: image greedy agreement nan < 0.95",
        "bf16 @tiny-top10: image file: refused, 400 bad image", "nvfp4: server did not start",
        "FSE on/off of tiny-bf16 on tiny-top10: not compared (a case of the pair did not run or failed)"]  # fmt: skip
    results[0].fused_in_log = True
    assert conformance.failures(results[:1], pairs) == []
    assert conformance.failures(results[:1], []) == [
        "FSE on/off of tiny-bf16 on tiny: not compared (a case of the pair did not run or failed)"]


def test_bad_merge_input_names_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "conformance.json"
    broken.write_text('{"results": [')
    with pytest.raises(ValueError, match=f"{broken}: not a conformance.json .* pass the conformance.json"):
        conformance.load_runs([broken])
    with pytest.raises(ValueError, match="missing.json: not a conformance.json"):
        conformance.load_runs([tmp_path / "missing.json"])
    broken.write_text('{"results": [], "fse_pairs": [{"pair": "bf16 vs bf16 fse-off", "recipe": "tiny-bf16"}]}')
    with pytest.raises(ValueError, match="written before --shapes and --checkpoints, rerun it"):
        conformance.load_runs([broken])

"""The GPU conformance suite's scorer, on CPU: a server that computes exactly the reference scores zero
error and full agreement; one that answers with other logprobs and tokens is caught."""

from pathlib import Path

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
    assert perfect.max_abs_logprob_error < 1e-4 and perfect.greedy_agreement == 1.0

    wrong = conformance.Result("wrong", "tiny-bf16", False)
    wrong.sequences = [s[:-1] + [(s[-1] + 1) % 3000] for s in perfect.sequences]
    wrong.logprobs = [[lp - 0.5 for lp in lps] for lps in perfect.logprobs]
    conformance._score(wrong, model, lengths, "cpu")
    assert wrong.max_abs_logprob_error > 0.5 and wrong.greedy_agreement == 0.75

    perfect.top2_gaps = [[1.0] * 4 for _ in prompts]  # decisive everywhere: parting is unexplained
    wrong.top2_gaps = [[1.0, 1.0, 1.0, 0.05] for _ in prompts]  # ... unless the last token was a near-tie
    pair = conformance.compare_fse(perfect, wrong, lengths)
    assert pair["identical_sequences"] == 0 and pair["unexplained_divergences"] == 0
    assert abs(pair["max_abs_prompt_logprob_diff"] - 0.5) < 1e-6
    wrong.top2_gaps = [[1.0] * 4 for _ in prompts]
    assert conformance.compare_fse(perfect, wrong, lengths)["unexplained_divergences"] == 2

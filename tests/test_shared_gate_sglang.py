"""SGLANG_EXT_FUSED_SHARED_GATE inside SGLang 0.5.17's MoE block, on a CPU (Triton kernels in the interpreter):
the Qwen3.5 override's fused block appends the shared slot with its one kernel where it may, giving the expert
ids SGLang's own path gives and a weight closer to the exact sigmoid than SGLang's (which rounds the logit and
the sigmoid to BF16); anywhere else, and with the variable unset, SGLang's own path runs unchanged."""

import logging
from pathlib import Path

import pytest

pytest.importorskip("sglang.srt")

import torch  # noqa: E402
from sglang.srt.layers.moe.topk import StandardTopKOutput  # noqa: E402
from sglang.srt.models.qwen2_moe import Qwen2MoeSparseMoeBlock  # noqa: E402
from sglang.srt.runtime_context import get_parallel  # noqa: E402

from sglang_ext.models import qwen3_5 as override  # noqa: E402
from sglang_cpu import cpu_model, sglang_configs, sglang_cpu  # noqa: E402,F401  (fixtures)

TOKENS, TOP_K = 5, 2  # the tiny fixture routes 2 of 8 experts


@pytest.fixture
def block(cpu_model, fixtures_root: Path) -> override.CudaFusableSparseMoeBlock:
    hf_config, _ = sglang_configs(fixtures_root / "bf16")
    block = cpu_model(hf_config, None).model.layers[0].mlp
    assert isinstance(block, override.CudaFusableSparseMoeBlock) and block.enable_shared_expert_fusion
    with torch.no_grad():
        block.shared_expert_gate.weight.copy_(torch.randn_like(block.shared_expert_gate.weight, dtype=torch.float32) / 4)
    return block


@pytest.fixture
def launches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Token counts the fused kernel was called with."""
    calls: list[int] = []
    kernel = override.gate_and_append_shared

    def recorded(x, *args, **kwargs):
        calls.append(x.shape[0])
        return kernel(x, *args, **kwargs)

    monkeypatch.setattr(override, "gate_and_append_shared", recorded)
    return calls


def routed(block: Qwen2MoeSparseMoeBlock) -> tuple[torch.Tensor, StandardTopKOutput]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(TOKENS, block.shared_expert_gate.in_features, generator=generator, dtype=torch.float32).bfloat16()
    ids = torch.stack([torch.randperm(block.num_experts, generator=generator)[:TOP_K] for _ in range(TOKENS)]).int()
    weights = torch.rand(TOKENS, TOP_K, generator=generator, dtype=torch.float32).softmax(-1)  # SGLang's top-k: float32
    logits = torch.zeros(TOKENS, block.num_experts, dtype=torch.float32)
    return x, StandardTopKOutput(topk_weights=weights, topk_ids=ids, router_logits=logits)


def test_one_launch_gives_sglangs_experts_and_a_weight_nearer_the_exact_sigmoid(
    block, launches: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    x, topk = routed(block)
    sglangs = Qwen2MoeSparseMoeBlock._append_shared_to_topk_output(block, topk, x)
    monkeypatch.setenv(override.FUSED_SHARED_GATE, "1")
    ours = block._append_shared_to_topk_output(topk, x)

    assert launches == [TOKENS] and isinstance(ours, StandardTopKOutput)
    assert torch.equal(ours.topk_ids, sglangs.topk_ids) and ours.topk_ids[:, TOP_K].eq(block.num_experts).all()
    assert torch.equal(ours.topk_weights[:, :TOP_K], topk.topk_weights) and ours.router_logits is topk.router_logits
    exact = torch.sigmoid(x.double() @ block.shared_expert_gate.weight.double().t()).squeeze(1)
    ours_error = (ours.topk_weights[:, TOP_K].double() - exact).abs()
    sglangs_error = (sglangs.topk_weights[:, TOP_K].double() - exact).abs()
    assert ours_error.max() < 1e-6 < sglangs_error.max() < 2.0**-7


@pytest.mark.parametrize("value", [None, "0", "all"])
def test_sglangs_own_path_unless_the_variable_is_1(block, launches: list[int], monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture, value: str | None) -> None:  # fmt: skip
    if value is None:
        monkeypatch.delenv(override.FUSED_SHARED_GATE, raising=False)
    else:
        monkeypatch.setenv(override.FUSED_SHARED_GATE, value)
    x, topk = routed(block)
    sglangs = Qwen2MoeSparseMoeBlock._append_shared_to_topk_output(block, topk, x)
    with caplog.at_level(logging.WARNING, logger=override.__name__):
        assert torch.equal(block._append_shared_to_topk_output(topk, x).topk_weights, sglangs.topk_weights)
    assert launches == []
    named = "SGLANG_EXT_FUSED_SHARED_GATE=all: expected 1 (the shared gate in one launch) or 0; off" in caplog.text
    assert named is (value == "all")


def test_sglangs_own_path_where_expert_parallelism_scales_the_weight(block, launches: list[int],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setenv(override.FUSED_SHARED_GATE, "1")
    x, topk = routed(block)
    with get_parallel().override(moe_ep_size=2):
        sglangs = Qwen2MoeSparseMoeBlock._append_shared_to_topk_output(block, topk, x)
        ours = block._append_shared_to_topk_output(topk, x)
    assert torch.equal(ours.topk_weights, sglangs.topk_weights) and launches == []


def test_sglangs_own_path_where_torch_compile_traces(block, launches: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(override.FUSED_SHARED_GATE, "1")
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    x, topk = routed(block)
    sglangs = Qwen2MoeSparseMoeBlock._append_shared_to_topk_output(block, topk, x)
    assert torch.equal(block._append_shared_to_topk_output(topk, x).topk_weights, sglangs.topk_weights)
    assert launches == []

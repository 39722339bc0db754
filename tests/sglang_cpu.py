"""SGLang (0.5.17 or 0.5.23) on a CPU, for tests that load checkpoints through SGLang's own config parsing and loaders:
a one-process gloo group with a published default ServerArgs, the configs SGLang builds for a checkpoint,
and the FSE-override Qwen3.5 model built without the kernels a CPU lacks. Import the fixtures into a test
module that has skipped where SGLang is not installed."""

import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from sglang.srt.configs.load_config import LoadConfig
from sglang.srt.configs.model_config import ModelConfig
from sglang.srt.model_loader.weight_utils import get_quant_config
from sglang.srt.models import qwen2_moe, qwen3_5
from sglang.srt.runtime_context import get_context, get_exec

from sglang_ext import require_supported_sglang
from sglang_ext.models import qwen3_5 as override

SGLANG = require_supported_sglang()


@pytest.fixture(scope="module")
def sglang_cpu():
    """A published default ServerArgs and a one-process gloo group: what SGLang's layers read when built."""
    from sglang.srt.distributed import (
        destroy_distributed_environment,
        destroy_model_parallel,
        init_distributed_environment,
        initialize_model_parallel,
    )
    from sglang.srt.layers.moe import initialize_moe_config

    published = get_context().override_server_args(device="cpu")
    server_args = published.install()
    if SGLANG != "0.5.17":  # 0.5.23 reads every rank from the launcher's placement, published with the args
        from sglang.srt.runtime_context import SpawnRanks, publish

        publish(server_args, role="test", ranks=SpawnRanks(world_rank=0))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    init_distributed_environment(
        backend="gloo", world_size=1, rank=0, local_rank=0, distributed_init_method=f"tcp://127.0.0.1:{port}"
    )
    initialize_model_parallel()
    initialize_moe_config(server_args) if SGLANG == "0.5.17" else initialize_moe_config()  # 0.5.23 reads the published args
    yield
    destroy_model_parallel()
    destroy_distributed_environment()
    published.restore()


def sglang_configs(path: Path):
    """The HF config and quantization config exactly as SGLang's loader builds them for this checkpoint."""
    model_config = ModelConfig(str(path))
    quant_config = None
    if model_config.quantization:
        mapping = qwen3_5.Qwen3_5MoeForConditionalGeneration.packed_modules_mapping
        quant_config = get_quant_config(model_config, LoadConfig(), mapping)
    return model_config.hf_config, quant_config


def stock_init_without_kernels(self, config, quant_config=None, prefix="", language_model_cls=None) -> None:
    """Stands in for SGLang's `Qwen3_5MoeForConditionalGeneration.__init__` on a CPU, which cannot build the
    GDN and attention kernels or the ViT: the language model's MoE blocks under the parameter names SGLang
    gives them, each built as the decoder layers build theirs (module-level name, flag read at build time)."""
    torch.nn.Module.__init__(self)
    text = config.text_config
    text.encoder_only = False
    self.config = text
    self.pp_group = SimpleNamespace(is_first_rank=True, is_last_rank=True)
    self.model = torch.nn.Module()
    self.model.layers = torch.nn.ModuleList()
    for layer in range(text.num_hidden_layers):
        decoder_layer = torch.nn.Module()
        decoder_layer.mlp = qwen3_5.Qwen2MoeSparseMoeBlock(
            layer_id=layer,
            config=text,
            quant_config=quant_config,
            prefix=f"model.language_model.layers.{layer}.mlp",
            support_shared_expert_fusion=not qwen3_5._disable_shared_experts_fusion(),
        )
        self.model.layers.append(decoder_layer)
    self.model.start_layer, self.model.end_layer = 0, text.num_hidden_layers


def build_as_sglangs_loader(model_class, hf_config, quant_config):
    """`model_class(hf_config, quant_config)` as SGLang's `_initialize_model` builds it: 0.5.23 first asks the
    class's `shared_experts_fusion_disable_reason` and publishes the answer while the model is built."""
    if SGLANG == "0.5.17":
        return model_class(hf_config, quant_config)
    from sglang.srt.layers.moe.utils import resolve_shared_experts_config
    from sglang.srt.runtime_context import get_model

    shared_experts = resolve_shared_experts_config(model_class, hf_config, quant_config)
    with get_model().override(shared_experts=shared_experts):
        model = model_class(hf_config, quant_config)
    model.shared_experts_config = shared_experts
    return model


def fusion_published_off(model) -> bool:
    """Whether SGLang's other readers see shared-expert fusion off for this model: 0.5.17 reads the (overridden)
    server arguments, 0.5.23 the layout its loader resolved for the model."""
    if SGLANG == "0.5.17":
        return get_exec().moe.disable_shared_experts_fusion
    return model.shared_experts_config.fusion_disabled


@pytest.fixture
def cpu_model(sglang_cpu, monkeypatch: pytest.MonkeyPatch):
    """Builds the override model as on CUDA, with `stock_init_without_kernels`, zeroed so an unloaded slot
    shows; each test gets its own published ServerArgs, since an off decision is published into it."""
    monkeypatch.setattr(qwen2_moe, "_is_cuda", True)
    monkeypatch.setattr(qwen3_5.Qwen3_5MoeForConditionalGeneration, "__init__", stock_init_without_kernels)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # SGLang's loader builds models under the checkpoint dtype

    def build(hf_config, quant_config) -> override.Qwen3_5MoeForConditionalGeneration:
        model = build_as_sglangs_loader(override.Qwen3_5MoeForConditionalGeneration, hf_config, quant_config)
        with torch.no_grad():
            for param in model.parameters():
                param.zero_()
        return model

    yield build
    torch.set_default_dtype(previous)

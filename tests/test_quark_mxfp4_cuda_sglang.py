"""The Quark MXFP4 CUDA schemes inside SGLang's own layers (0.5.17, 0.5.23), built on CPU (skipped without SGLang).

Marlin's repack and GEMM need a GPU (tests/gpu/check_mxfp4_moe_kernels.py); here: which scheme each layer
gets, that SGLang's FusedMoE loader puts every per-expert tensor (and the fused shared expert, slot E) where
the Marlin preparation reads it, that SGLang's Marlin scale preparation keeps every E8M0 byte, the linear
scheme's numerics, and the two checkpoint formats of issue 4 item 4 (compressed-tensors MXFP4, ModelOpt
NVFP4) as SGLang's MoE layer loads them on the Hopper backends.
"""

from __future__ import annotations

import importlib.util
import json
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytestmark = pytest.mark.skipif(importlib.util.find_spec("sglang") is None, reason="SGLang is not installed")

from sglang_ext import require_supported_sglang  # noqa: E402
from sglang_ext.codecs import mxfp4  # noqa: E402
from sglang_ext.quantization.mxfp4_ct_names import (  # noqa: E402
    ct_mxfp4_expert_name,
    serves_experts_with_mxfp4_moe_method,
)
from sglang_ext.quantization.mxfp4_moe_reference import dequantize_experts  # noqa: E402

LAYER = "model.language_model.layers.0"
ROUTED, HIDDEN, INTERMEDIATE = 8, 128, 64
SGLANG = require_supported_sglang()
# One process's ranks and sizes; SGLang 0.5.17 also names the world's, which 0.5.23 reads from its process group.
_PARALLEL = dict(
    tp_size=1, tp_rank=0, pp_size=1, pp_rank=0, moe_ep_size=1, moe_ep_rank=0,
    moe_tp_size=1, moe_tp_rank=0, moe_dp_size=1, moe_dp_rank=0, attn_tp_size=1, attn_tp_rank=0,
    attn_dp_size=1, attn_dp_rank=0,
)


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory) -> Path:
    from sglang_ext.fixtures import write_fixture

    root = tmp_path_factory.mktemp("fixtures")
    for fmt in ("quark-mxfp4-fse", "ct-mxfp4", "modelopt-nvfp4"):
        write_fixture(root / fmt, fmt=fmt, seed=0)
    return root


def _tensors(path: Path, prefix: str) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    with safe_open(path / "model.safetensors", "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}


def _quant_config(path: Path) -> dict:
    return json.loads((path / "config.json").read_text())["quantization_config"]


@contextmanager
def sglang_layers(moe_runner_backend: str = "auto"):
    """What SGLang publishes before it builds a model, for one CPU process without distributed groups."""
    from sglang.srt.layers.moe.utils import MoeRunnerBackend, get_flags
    from sglang.srt.runtime_context import get_context, get_parallel

    flags = get_flags().moe
    saved = flags.runner_backend
    with get_context().override_server_args(model_path="tiny", moe_runner_backend=moe_runner_backend):
        world = {"world_size": 1, "world_rank": 0} if SGLANG == "0.5.17" else {}
        with get_parallel().override(**_PARALLEL, **world):
            flags.runner_backend = MoeRunnerBackend(moe_runner_backend)
            try:
                yield
            finally:
                flags.runner_backend = saved


def _fused_moe(quant_config, num_experts: int = ROUTED, shared: int = 0, hidden: int = HIDDEN):
    from sglang.srt.layers.moe.fused_moe_triton.layer import FusedMoE

    return FusedMoE(
        num_experts=num_experts + shared, hidden_size=hidden, intermediate_size=INTERMEDIATE, layer_id=0, top_k=2,
        num_fused_shared_experts=shared, params_dtype=torch.bfloat16, quant_config=quant_config,
        prefix="model.layers.0.mlp.experts",
    )


def _load_experts(layer, tensors: dict[str, torch.Tensor], num_experts: int, rename=lambda name: name) -> None:
    """SGLang's Qwen3.5 expert loading (models/qwen3_5.py load_weights): the shared expert renamed to
    expert `num_experts - 1` when fused, then FusedMoE.make_expert_params_mapping and layer.weight_loader."""
    from sglang.srt.layers.moe.fused_moe_triton.layer import FusedMoE

    mapping = FusedMoE.make_expert_params_mapping("gate_proj", "down_proj", "up_proj", num_experts)
    params = dict(layer.named_parameters(prefix="model.layers.0.mlp.experts"))
    for stored, tensor in tensors.items():
        name = rename(stored).replace("model.language_model.", "model.")
        name = name.replace("mlp.shared_expert.", f"mlp.experts.{num_experts - 1}.")
        param_name, weight_name, expert_id, shard_id = next(m for m in mapping if m[1] in name)
        mapped = name.replace(weight_name, param_name)
        if mapped not in params:
            raise KeyError(mapped)
        layer.weight_loader(params[mapped], tensor, mapped, shard_id=shard_id, expert_id=expert_id)


# --------------------------------------------------------------------------- Quark MXFP4: dispatch
@pytest.fixture
def on_cuda(monkeypatch):
    """Make the dispatch act as on a CUDA GPU (the parameter creation and loading it selects are device-free)."""
    from sglang_ext.quantization.quark import w4a4_mxfp4_cuda

    monkeypatch.setattr(w4a4_mxfp4_cuda, "_is_cuda", True)


def _quark_with_cuda_mxfp4(quant_config: dict):
    """SGLang's QuarkConfig plus the two dispatch lines a QuarkConfig override needs (see quark.w4a4_mxfp4_cuda)."""
    from sglang.srt.layers.quantization.quark.quark import QuarkConfig

    from sglang_ext.quantization.quark.w4a4_mxfp4_cuda import quark_mxfp4_cuda_scheme

    class QuarkWithCudaMxfp4(QuarkConfig):
        def get_linear_scheme(self, layer, layer_name):
            return quark_mxfp4_cuda_scheme(self, layer, layer_name) or super().get_linear_scheme(layer, layer_name)

        def get_moe_scheme(self, module, layer_name, **sglang_kwargs):
            return quark_mxfp4_cuda_scheme(self, module, layer_name) or super().get_moe_scheme(module, layer_name, **sglang_kwargs)

    # SGLang's loader adds the model's packed_modules_mapping before from_config (weight_utils.get_quant_config).
    return QuarkWithCudaMxfp4.from_config(dict(quant_config, packed_modules_mapping={}))


def _shared_gate_up(quant_config):
    from sglang.srt.layers.linear import MergedColumnParallelLinear

    return MergedColumnParallelLinear(
        HIDDEN, [INTERMEDIATE] * 2, bias=False, quant_config=quant_config, params_dtype=torch.bfloat16,
        prefix="model.layers.0.mlp.shared_expert.gate_up_proj",
    )


def test_quark_mxfp4_layers_get_the_cuda_schemes(fixtures, on_cuda):
    from sglang_ext.quantization.quark.w4a4_mxfp4_cuda import QuarkW4A4MXFP4Cuda, QuarkW4A4MXFp4MoECuda

    config = _quark_with_cuda_mxfp4(_quant_config(fixtures / "quark-mxfp4-fse"))
    with sglang_layers():
        moe = _fused_moe(config, shared=1)
        linear = _shared_gate_up(config)
    assert isinstance(moe.scheme, QuarkW4A4MXFp4MoECuda)
    assert isinstance(linear.scheme, QuarkW4A4MXFP4Cuda)
    # Sized from the layer's expert count, which includes the fused shared slot; unpadded off aiter.
    shapes = {name: (tuple(p.shape), p.dtype) for name, p in moe.named_parameters()}
    assert shapes == {
        "w13_weight": ((ROUTED + 1, 2 * INTERMEDIATE, HIDDEN // 2), torch.uint8),
        "w2_weight": ((ROUTED + 1, HIDDEN, INTERMEDIATE // 2), torch.uint8),
        "w13_weight_scale": ((ROUTED + 1, 2 * INTERMEDIATE, HIDDEN // 32), torch.uint8),
        "w2_weight_scale": ((ROUTED + 1, HIDDEN, INTERMEDIATE // 32), torch.uint8),
    }


def test_dispatch_leaves_other_layers_to_sglang(fixtures, monkeypatch):
    from sglang_ext.fixtures import quant_configs
    from sglang_ext.quantization.quark import w4a4_mxfp4_cuda
    from sglang_ext.quantization.quark.w4a4_mxfp4_cuda import quark_mxfp4_cuda_scheme

    mxfp4_config = _quark_with_cuda_mxfp4(_quant_config(fixtures / "quark-mxfp4-fse"))
    int8_config = _quark_with_cuda_mxfp4(quant_configs.quark_w8a8_int8([]))
    layer = torch.nn.Module()
    monkeypatch.setattr(w4a4_mxfp4_cuda, "_is_cuda", True)
    assert quark_mxfp4_cuda_scheme(int8_config, layer, "model.layers.0.mlp.experts") is None
    assert quark_mxfp4_cuda_scheme(mxfp4_config, layer, "model.layers.0.mlp.experts") is not None
    monkeypatch.setattr(w4a4_mxfp4_cuda, "_is_cuda", False)  # ROCm: SGLang's aiter schemes
    assert quark_mxfp4_cuda_scheme(mxfp4_config, layer, "model.layers.0.mlp.experts") is None


def test_moe_scheme_refuses_backends_that_relayout_weights(fixtures, on_cuda):
    config = _quark_with_cuda_mxfp4(_quant_config(fixtures / "quark-mxfp4-fse"))
    with sglang_layers("triton_kernel"), pytest.raises(ValueError, match="--moe-runner-backend marlin"):
        _fused_moe(config, shared=1)


# --------------------------------------------------------------------------- Quark MXFP4: loading and numerics
def test_fused_moe_loader_places_every_expert_and_the_shared_expert(fixtures, on_cuda):
    """Bytes in w13/w2 after SGLang's loader = the checkpoint's, gate rows then up rows, shared at slot E."""
    path = fixtures / "quark-mxfp4-fse"
    config = _quark_with_cuda_mxfp4(_quant_config(path))
    tensors = {
        k: v for k, v in _tensors(path, f"{LAYER}.mlp.").items() if ".experts." in k or ".shared_expert." in k
    }
    with sglang_layers():
        moe = _fused_moe(config, shared=1)
        _load_experts(moe, tensors, ROUTED + 1)

    def stored(expert: int, proj: str, suffix: str) -> torch.Tensor:
        module = f"experts.{expert}" if expert < ROUTED else "shared_expert"
        return tensors[f"{LAYER}.mlp.{module}.{proj}.{suffix}"]

    for e in range(ROUTED + 1):
        for suffix, w13, w2 in (("weight", moe.w13_weight, moe.w2_weight),
                                ("weight_scale", moe.w13_weight_scale, moe.w2_weight_scale)):
            assert torch.equal(w13[e], torch.cat([stored(e, "gate_proj", suffix), stored(e, "up_proj", suffix)]))
            assert torch.equal(w2[e], stored(e, "down_proj", suffix))
    # ... so the reference decodes the shared slot to the shared expert's own weights.
    w13, w2 = dequantize_experts(moe.w13_weight, moe.w13_weight_scale, moe.w2_weight, moe.w2_weight_scale)
    shared_down = mxfp4.dequantize(stored(ROUTED, "down_proj", "weight"), stored(ROUTED, "down_proj", "weight_scale"),
                                   dtype=torch.float32)
    assert torch.equal(w2[ROUTED], shared_down)


def test_marlin_scale_preparation_keeps_every_e8m0_byte():
    """prepare_moe_mxfp4_layer_for_marlin widens uint8 scales to BF16 and back to E8M0
    (_normalize_scale_tensor, mxfp4_marlin_process_scales); all 256 bytes must survive, NaN included."""
    from sglang.srt.layers.quantization.marlin_utils_fp4 import _normalize_scale_tensor, mxfp4_marlin_process_scales

    scales = torch.arange(256, dtype=torch.uint8).reshape(8, 32)
    processed = mxfp4_marlin_process_scales(_normalize_scale_tensor(scales, torch.bfloat16), torch.bfloat16)
    assert processed.dtype == torch.float8_e8m0fnu
    # The processing also swaps columns 1 and 2 of every 4 (Marlin's BF16 scale order); undo it.
    restored = processed.view(torch.uint8).reshape(-1, 4)[:, [0, 2, 1, 3]].reshape(scales.shape)
    assert torch.equal(restored, scales)


def test_marlin_shape_rule():
    from sglang_ext.quantization.quark.w4a4_mxfp4_marlin_moe import marlin_shape_error

    assert marlin_shape_error(128, 64) is None  # the tiny fixture
    assert marlin_shape_error(2048, 512) is None  # Qwen3.5-35B-A3B, TP1
    assert marlin_shape_error(4096, 256) is None  # Qwen3.5-397B-A17B, TP4 without EP
    assert "multiple of 128" in marlin_shape_error(2112, 512)
    assert "per TP rank 48" in marlin_shape_error(2048, 48)


def test_linear_scheme_dequantizes_once_and_quantizes_inputs(fixtures, on_cuda):
    """The unfused shared expert: BF16 weight = codec decode of the stored bytes; y = qdq(x) @ W^T."""
    path = fixtures / "quark-mxfp4-fse"
    config = _quark_with_cuda_mxfp4(_quant_config(path))
    tensors = _tensors(path, f"{LAYER}.mlp.shared_expert.")
    with sglang_layers():
        layer = _shared_gate_up(config)
    for shard, proj in enumerate(("gate_proj", "up_proj")):
        for suffix in ("weight", "weight_scale"):
            param = getattr(layer, suffix)
            param.weight_loader(param, tensors[f"{LAYER}.mlp.shared_expert.{proj}.{suffix}"], shard)
    layer.quant_method.process_weights_after_loading(layer)

    expected = torch.cat([
        mxfp4.dequantize(tensors[f"{LAYER}.mlp.shared_expert.{p}.weight"],
                         tensors[f"{LAYER}.mlp.shared_expert.{p}.weight_scale"])
        for p in ("gate_proj", "up_proj")
    ])
    assert layer.weight.dtype == torch.bfloat16 and torch.equal(layer.weight, expected)
    assert not hasattr(layer, "weight_scale")
    x = torch.randn(5, HIDDEN, generator=torch.Generator().manual_seed(0)).bfloat16()
    out, _ = layer(x)
    assert torch.equal(out, F.linear(mxfp4.fake_quantize_activations(x), expected))
    assert not torch.equal(out, F.linear(x, expected))


# --------------------------------------------------------------------------- item 4: compressed-tensors MXFP4
def _ct_config(fixtures: Path):
    from sglang.srt.layers.quantization.compressed_tensors.compressed_tensors import CompressedTensorsConfig

    return CompressedTensorsConfig.from_config(_quant_config(fixtures / "ct-mxfp4"))


def test_ct_mxfp4_experts_go_to_mxfp4_moe_method_and_need_the_name_rename(fixtures):
    from sglang.srt.layers.quantization.mxfp4 import Mxfp4MoEMethod

    tensors = {k: v for k, v in _tensors(fixtures / "ct-mxfp4", f"{LAYER}.mlp.experts.").items()}
    assert any(k.endswith(".weight_packed") for k in tensors)
    config = _ct_config(fixtures)
    assert serves_experts_with_mxfp4_moe_method(config)
    assert not serves_experts_with_mxfp4_moe_method(_quark_with_cuda_mxfp4(_quant_config(fixtures / "quark-mxfp4-fse")))
    assert not serves_experts_with_mxfp4_moe_method(None)
    with sglang_layers("auto"):
        moe = _fused_moe(config)
        assert isinstance(moe.quant_method, Mxfp4MoEMethod)
        with pytest.raises(KeyError, match=r"w(13|2)_weight_packed"):  # SGLang's Qwen3.5 loader as it is
            _load_experts(moe, tensors, ROUTED)
        _load_experts(moe, tensors, ROUTED, rename=ct_mxfp4_expert_name)
    for e in range(ROUTED):
        gate, up = (tensors[f"{LAYER}.mlp.experts.{e}.{p}.weight_packed"] for p in ("gate_proj", "up_proj"))
        assert torch.equal(moe.w13_weight[e], torch.cat([gate, up]))
        assert torch.equal(moe.w2_weight_scale[e], tensors[f"{LAYER}.mlp.experts.{e}.down_proj.weight_scale"])


@pytest.mark.parametrize(("hidden", "padded"), [(HIDDEN, 256), (2048, 2048)])
def test_ct_mxfp4_marlin_pads_hidden_to_256(fixtures, hidden: int, padded: int):
    """Mxfp4MoEMethod under --moe-runner-backend marlin rounds hidden up to 256 (mxfp4.py:398), but the
    per-expert loader copies whole checkpoint rows: real Qwen3.5 hidden sizes are multiples of 256, the tiny
    fixture's 128 is not, so the tiny ct-mxfp4 checkpoint cannot load on Marlin."""
    with sglang_layers("marlin"):
        moe = _fused_moe(_ct_config(fixtures), hidden=hidden)
    assert moe.w13_weight.shape[-1] * 2 == padded


# --------------------------------------------------------------------------- item 4: ModelOpt NVFP4 on Hopper
def test_modelopt_nvfp4_experts_load_for_marlin(fixtures, monkeypatch):
    """ModelOptNvFp4FusedMoEMethod runs Marlin off Blackwell (--moe-runner-backend auto resolves to it on
    SM80-SM90, modelopt_quant.py:1963-1964 and 2527-2528): every stored expert tensor lands in a parameter."""
    from sglang.srt.layers.quantization import modelopt_quant
    from sglang.srt.layers.quantization.modelopt_quant import ModelOptFp4Config, ModelOptNvFp4FusedMoEMethod

    # create_weights also builds CUTLASS-swizzled scale copies with .cuda() (modelopt_quant.py:2113); Marlin
    # never reads them, so on CPU a plain copy stands in.
    monkeypatch.setattr(modelopt_quant, "swizzle_blockscale", lambda scale: scale.clone())
    path = fixtures / "modelopt-nvfp4"
    tensors = _tensors(path, f"{LAYER}.mlp.experts.")
    with sglang_layers("marlin"):
        moe = _fused_moe(ModelOptFp4Config.from_config(_quant_config(path)))
        assert isinstance(moe.quant_method, ModelOptNvFp4FusedMoEMethod)
        _load_experts(moe, tensors, ROUTED)
    for e in range(ROUTED):
        stored = {p: tensors[f"{LAYER}.mlp.experts.{e}.{p}.weight"] for p in ("gate_proj", "up_proj", "down_proj")}
        assert torch.equal(moe.w13_weight[e], torch.cat([stored["gate_proj"], stored["up_proj"]]))
        assert torch.equal(moe.w2_weight[e], stored["down_proj"])
        # Marlin keeps one global scale for gate and up (modelopt_quant.py:2220-2240): the checkpoint's agree.
        gate_scale_2 = tensors[f"{LAYER}.mlp.experts.{e}.gate_proj.weight_scale_2"]
        assert torch.equal(moe.w13_weight_scale_2[e], gate_scale_2.expand(2))
        assert torch.equal(moe.w2_weight_scale[e], tensors[f"{LAYER}.mlp.experts.{e}.down_proj.weight_scale"])

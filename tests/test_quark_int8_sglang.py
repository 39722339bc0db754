"""Quark INT8 W8A8 inside SGLang (0.5.17, 0.5.23) on CPU: scheme selection, parameters, and SGLang's own Qwen3.5
weight loader filling them from the tiny INT8 checkpoint.

The full model needs GPU kernels to build, so the loader runs on a stand-in holding only the quantized
modules (SGLang's own layer classes, under the names and prefixes Qwen3.5 gives them). Skipped where
SGLang is not importable (CI); run with an SGLang 0.5.17 or 0.5.23 environment on any machine.
"""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

pytest.importorskip("sglang", reason="SGLang is not installed")

from safetensors.torch import load_file  # noqa: E402
from sglang.srt.layers.linear import QKVParallelLinear, ReplicatedLinear, RowParallelLinear  # noqa: E402
from sglang.srt.layers.moe.fused_moe_triton.layer import FusedMoE  # noqa: E402
from sglang.srt.layers.moe.token_dispatcher import StandardDispatchOutput  # noqa: E402
from sglang.srt.layers.moe.topk import StandardTopKOutput  # noqa: E402
from sglang.srt.layers.quantization import QUANTIZATION_METHODS  # noqa: E402
from sglang.srt.layers.quantization.quark.quark import QuarkFusedMoEMethod, QuarkLinearMethod  # noqa: E402
from sglang.srt.layers.quantization.quark.schemes import QuarkW4A4MXFp4MoE  # noqa: E402
from sglang.srt.layers.quantization.unquant import UnquantizedLinearMethod  # noqa: E402
from sglang.srt.models.qwen2_moe import Qwen2MoeMLP  # noqa: E402
from sglang.srt.models.qwen3_5 import Qwen3_5GatedDeltaNet, Qwen3_5MoeForConditionalGeneration  # noqa: E402
from sglang.srt.runtime_context import get_context, get_parallel  # noqa: E402

from sglang_ext import require_supported_sglang  # noqa: E402
from sglang_ext.codecs import int8  # noqa: E402
from sglang_ext.fixtures import quant_configs, write_fixture  # noqa: E402
from sglang_ext.quantization.quark.config import QuarkInt8Schemes, register_quark_int8  # noqa: E402
from sglang_ext.quantization.quark.w8a8_int8 import QuarkW8A8Int8  # noqa: E402
from sglang_ext.quantization.quark.w8a8_int8_moe import QuarkW8A8Int8MoE  # noqa: E402

HF = "model.language_model.layers"  # checkpoint names, and the prefixes SGLang gives Qwen3.5's layers
PARAMS = "model.layers"  # parameter names after the loader's rename
BF16_EPS = 2.0**-8
SGLANG = require_supported_sglang()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fixture(tmp_path_factory.mktemp("int8"), "quark-w8a8-int8", seed=0)


@pytest.fixture(scope="module")
def text_config(checkpoint: Path) -> SimpleNamespace:
    return SimpleNamespace(**json.loads((checkpoint / "config.json").read_text())["text_config"])


@pytest.fixture(scope="module")
def tensors(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint / "model.safetensors"))


def build_config(block: dict):
    """The config SGLang builds from a `quantization_config` block, as `weight_utils.get_quant_config` does."""
    # loader.py adds gate_up_proj for quark on top of the model's own mapping
    packed = {**Qwen3_5MoeForConditionalGeneration.packed_modules_mapping, "gate_up_proj": ["gate_proj", "up_proj"]}
    return QUANTIZATION_METHODS["quark"].from_config({**block, "packed_modules_mapping": packed})


@pytest.fixture(autouse=True)
def registered(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(QUANTIZATION_METHODS, "quark", QUANTIZATION_METHODS["quark"])  # restored after each test
    return register_quark_int8()


@pytest.fixture
def quark_config(checkpoint: Path, registered):
    return build_config(json.loads((checkpoint / "config.json").read_text())["quantization_config"])


def tp_ranks(rank: int, size: int) -> dict[str, int]:
    """get_parallel().override() fields for one tensor-parallel rank of attention, dense and MoE layers."""
    fields = {"rank": rank, "size": size}
    return {f"{group}tp_{field}": value for group in ("", "attn_", "moe_") for field, value in fields.items()}


@pytest.fixture(autouse=True)
def single_rank():
    with get_context().override_server_args(), get_parallel().override(moe_ep_size=1, moe_ep_rank=0, **tp_ranks(0, 1)):
        yield


def test_registration_replaces_quark_and_is_idempotent(registered, quark_config) -> None:
    assert QUANTIZATION_METHODS["quark"] is registered
    assert issubclass(registered, QuarkInt8Schemes) and isinstance(quark_config, registered)
    assert register_quark_int8() is registered
    assert quark_config.get_name() == "quark"


def moe_layer(quark_config, experts: int = 9, fused: int = 1) -> FusedMoE:
    return FusedMoE(
        experts, 128, 64, layer_id=0, top_k=2 + fused, num_fused_shared_experts=fused, quant_config=quark_config,
        prefix=f"{HF}.0.mlp.experts", params_dtype=torch.bfloat16,
    )


def test_other_quark_schemes_stay_sglangs(registered) -> None:
    mxfp4 = build_config(quant_configs.quark_mxfp4(exclude=[]))
    assert type(moe_layer(mxfp4, experts=8, fused=0).scheme) is QuarkW4A4MXFp4MoE


def test_linear_scheme_selected_with_int8_params(quark_config) -> None:
    qkv = QKVParallelLinear(128, 64, 8, 2, bias=False, quant_config=quark_config, prefix=f"{HF}.3.self_attn.qkv_proj")
    assert isinstance(qkv.quant_method, QuarkLinearMethod) and isinstance(qkv.scheme, QuarkW8A8Int8)
    assert (qkv.weight.shape, qkv.weight.dtype) == ((768, 128), torch.int8)
    assert (qkv.weight_scale.shape, qkv.weight_scale.dtype) == ((768,), torch.float32)
    assert torch.isnan(qkv.weight_scale).all()  # nothing loaded yet
    # Modules the checkpoint excluded stay unquantized.
    gate = ReplicatedLinear(128, 1, bias=False, quant_config=quark_config, prefix=f"{HF}.0.mlp.shared_expert_gate")
    assert isinstance(gate.quant_method, UnquantizedLinearMethod)


def test_moe_scheme_selected_with_int8_params(quark_config) -> None:
    moe = moe_layer(quark_config)  # 8 routed experts + the fused shared expert
    assert isinstance(moe.quant_method, QuarkFusedMoEMethod) and isinstance(moe.scheme, QuarkW8A8Int8MoE)
    shapes = {name: (tuple(p.shape), p.dtype) for name, p in moe.named_parameters()}
    assert shapes == {
        "w13_weight": ((9, 128, 128), torch.int8),
        "w2_weight": ((9, 128, 64), torch.int8),
        "w13_weight_scale": ((9, 128), torch.float32),
        "w2_weight_scale": ((9, 128), torch.float32),
    }


# --- SGLang's Qwen3.5 loader on the quantized modules ---------------------------------------------------


def attention_tp() -> dict:
    """How Qwen3.5 tells its attention and DeltaNet projections to shard over attention TP: SGLang 0.5.17 hands
    them the rank and size, 0.5.23 the group's name."""
    if SGLANG == "0.5.17":
        return {"tp_rank": get_parallel().attn_tp_rank, "tp_size": get_parallel().attn_tp_size}
    return {"parallel_group": "attn_tp"}


def quantized_modules(cfg: SimpleNamespace, quark_config, fuse_shared: bool) -> nn.Module:
    """A stand-in for Qwen3_5MoeForConditionalGeneration holding its quantized modules only, sharded for
    the current (overridden) attention / MoE tensor-parallel rank as the model shards them."""
    root = nn.Module()
    root.config = SimpleNamespace(num_experts=cfg.num_experts, tie_word_embeddings=False, encoder_only=False)
    root.enable_shared_expert_fusion = fuse_shared
    root.num_fused_shared_experts = int(fuse_shared)
    root.model = nn.Module()
    root.model.layers = nn.ModuleList()
    key_dim = cfg.linear_key_head_dim * cfg.linear_num_key_heads
    value_dim = cfg.linear_value_head_dim * cfg.linear_num_value_heads
    attn_tp = attention_tp()
    for index, kind in enumerate(cfg.layer_types):
        layer, prefix = nn.Module(), f"{HF}.{index}"
        if kind == "linear_attention":
            gdn = layer.linear_attn = nn.Module()
            gdn.in_proj_qkvz = Qwen3_5GatedDeltaNet.create_qkvz_proj(
                None, cfg.hidden_size, key_dim, value_dim, quark_config, f"{prefix}.linear_attn.in_proj_qkvz", **attn_tp
            )
            gdn.in_proj_ba = Qwen3_5GatedDeltaNet.create_ba_proj(
                None, cfg.hidden_size, cfg.linear_num_value_heads, quark_config, f"{prefix}.linear_attn.in_proj_ba",
                **attn_tp,
            )
            for merged in (gdn.in_proj_qkvz, gdn.in_proj_ba):  # as Qwen3_5GatedDeltaNet.__init__ does
                Qwen3_5GatedDeltaNet._bind_packed_weight_loaders(Qwen3_5GatedDeltaNet, merged)
            gdn.out_proj = RowParallelLinear(
                value_dim, cfg.hidden_size, bias=False, reduce_results=False, quant_config=quark_config,
                prefix=f"{prefix}.linear_attn.out_proj", **attn_tp,
            )
        else:
            heads = cfg.num_attention_heads
            layer.qkv_proj = QKVParallelLinear(
                cfg.hidden_size, cfg.head_dim, heads * 2, cfg.num_key_value_heads, bias=False,
                quant_config=quark_config, prefix=f"{prefix}.self_attn.qkv_proj", **attn_tp,
            )
            layer.o_proj = RowParallelLinear(
                heads * cfg.head_dim, cfg.hidden_size, bias=False, reduce_results=False,
                quant_config=quark_config, prefix=f"{prefix}.self_attn.o_proj", **attn_tp,
            )
        mlp = layer.mlp = nn.Module()
        fused = int(fuse_shared)
        mlp.experts = FusedMoE(
            cfg.num_experts + fused, cfg.hidden_size, cfg.moe_intermediate_size, layer_id=index,
            top_k=cfg.num_experts_per_tok + fused, num_fused_shared_experts=fused, quant_config=quark_config,
            prefix=f"{prefix}.mlp.experts", params_dtype=torch.bfloat16,
        )
        if not fuse_shared:
            mlp.shared_expert = Qwen2MoeMLP(
                cfg.hidden_size, cfg.shared_expert_intermediate_size, "silu", quant_config=quark_config,
                reduce_results=False, prefix=f"{prefix}.mlp.shared_expert",
            )
        root.model.layers.append(layer)
    return root


# Where a parameter's rows come from: (tensor-parallel kind, [(checkpoint module, row range or None)]).
# "column" parameters take each piece's rows of this rank, "row" ones this rank's input columns.
Source = tuple[str, list[tuple[str, tuple[int, int] | None]]]


def expected_sources(cfg: SimpleNamespace, fuse_shared: bool) -> dict[str, Source]:
    key_dim = cfg.linear_key_head_dim * cfg.linear_num_key_heads
    value_dim = cfg.linear_value_head_dim * cfg.linear_num_value_heads
    sources: dict[str, Source] = {}
    for index, kind in enumerate(cfg.layer_types):
        hf, p = f"{HF}.{index}", f"{PARAMS}.{index}"
        if kind == "linear_attention":
            qkv = f"{hf}.linear_attn.in_proj_qkv"  # one checkpoint tensor, three shards of in_proj_qkvz
            sources[f"{p}.linear_attn.in_proj_qkvz"] = ("column", [
                (qkv, (0, key_dim)), (qkv, (key_dim, 2 * key_dim)), (qkv, (2 * key_dim, 2 * key_dim + value_dim)),
                (f"{hf}.linear_attn.in_proj_z", None),
            ])
            sources[f"{p}.linear_attn.in_proj_ba"] = ("column", [(f"{hf}.linear_attn.in_proj_{x}", None) for x in "ba"])
            sources[f"{p}.linear_attn.out_proj"] = ("row", [(f"{hf}.linear_attn.out_proj", None)])
        else:
            sources[f"{p}.qkv_proj"] = ("column", [(f"{hf}.self_attn.{x}_proj", None) for x in "qkv"])
            sources[f"{p}.o_proj"] = ("row", [(f"{hf}.self_attn.o_proj", None)])
        experts = [f"{hf}.mlp.experts.{e}" for e in range(cfg.num_experts)]
        if fuse_shared:
            experts.append(f"{hf}.mlp.shared_expert")  # the fused slot, expert id num_experts
        else:
            shared = f"{hf}.mlp.shared_expert"
            gate_up = [(f"{shared}.{x}_proj", None) for x in ("gate", "up")]
            sources[f"{p}.mlp.shared_expert.gate_up_proj"] = ("column", gate_up)
            sources[f"{p}.mlp.shared_expert.down_proj"] = ("row", [(f"{shared}.down_proj", None)])
        for slot, expert in enumerate(experts):
            sources[f"{p}.mlp.experts.w13[{slot}]"] = ("column", [(f"{expert}.{x}_proj", None) for x in ("gate", "up")])
            sources[f"{p}.mlp.experts.w2[{slot}]"] = ("row", [(f"{expert}.down_proj", None)])
    return sources


def expected(tensors: dict[str, torch.Tensor], source: Source, rank: int = 0, size: int = 1):
    """(int8 codes, float32 scales) that `source` gives tensor-parallel rank `rank` of `size`."""
    kind, pieces = source
    codes, scales = [], []
    for module, rows in pieces:
        weight, scale = tensors[f"{module}.weight"], tensors[f"{module}.weight_scale"]
        if rows is not None:
            weight, scale = weight[rows[0] : rows[1]], scale[rows[0] : rows[1]]
        if kind == "column":
            weight, scale = weight.chunk(size)[rank], scale.chunk(size)[rank]
        else:
            weight = weight.chunk(size, dim=1)[rank]
        codes.append(weight)
        scales.append(scale)
    return torch.cat(codes), torch.cat(scales).float()


def quantized_tensors(tensors: dict[str, torch.Tensor], column_scales: bool = False) -> list[tuple[str, torch.Tensor]]:
    """Every int8 weight and its scale; `column_scales` stores the scales as Quark's own [out, 1]."""
    picked = []
    for name, tensor in tensors.items():
        if tensor.dtype == torch.int8 or name.endswith(".weight_scale"):
            if column_scales and name.endswith(".weight_scale"):
                tensor = tensor.unsqueeze(1)
            picked.append((name, tensor))
    return picked


def load(cfg, quark_config, tensors, fuse_shared: bool, column_scales: bool = False) -> nn.Module:
    root = quantized_modules(cfg, quark_config, fuse_shared)
    Qwen3_5MoeForConditionalGeneration.load_weights(root, quantized_tensors(tensors, column_scales))
    for module in root.modules():
        if hasattr(module, "scheme"):
            module.quant_method.process_weights_after_loading(module)
    return root


def loaded(root: nn.Module, target: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 [out, in], float32 [out]) of a linear or one expert slot of a fused MoE."""
    if target.endswith("]"):
        path, slot = target[:-1].split("[")
        moe_path, which = path.rsplit(".", 1)
        moe = root.get_submodule(moe_path)
        return getattr(moe, f"{which}_weight")[int(slot)], getattr(moe, f"{which}_weight_scale")[int(slot)].flatten()
    linear = root.get_submodule(target)
    return linear.weight, linear.weight_scale.flatten()


@pytest.mark.parametrize("fuse_shared", [False, True], ids=["shared-expert-mlp", "shared-expert-fused"])
@pytest.mark.parametrize("column_scales", [False, True], ids=["scales-[out]", "scales-[out,1]"])
@pytest.mark.parametrize(("tp_rank", "tp_size"), [(0, 1), (1, 2)], ids=["tp1", "tp2-rank1"])
def test_loader_fills_every_parameter_from_the_checkpoint(
    text_config, quark_config, tensors, fuse_shared: bool, column_scales: bool, tp_rank: int, tp_size: int
) -> None:
    with get_parallel().override(**tp_ranks(tp_rank, tp_size)):
        root = load(text_config, quark_config, tensors, fuse_shared, column_scales)
    used = set()
    for target, source in expected_sources(text_config, fuse_shared).items():
        weight, scale = loaded(root, target)
        want_weight, want_scale = expected(tensors, source, tp_rank, tp_size)
        assert torch.equal(weight, want_weight), target
        assert torch.equal(scale, want_scale), target
        used.update(f"{module}.{suffix}" for module, _ in source[1] for suffix in ("weight", "weight_scale"))
    # Every quantized tensor of the checkpoint has a parameter.
    assert {name for name, _ in quantized_tensors(tensors)} == used


def test_unloaded_scales_are_reported_by_layer(text_config, quark_config, tensors) -> None:
    root = quantized_modules(text_config, quark_config, fuse_shared=False)
    partial = [(n, t) for n, t in quantized_tensors(tensors) if n != f"{HF}.0.linear_attn.in_proj_z.weight_scale"]
    Qwen3_5MoeForConditionalGeneration.load_weights(root, partial)
    qkvz = root.get_submodule(f"{PARAMS}.0.linear_attn.in_proj_qkvz")
    missing_z = rf"{HF}\.0\.linear_attn\.in_proj_qkvz\.weight_scale: 128 output channels \(first: \[256, 257,"
    with pytest.raises(ValueError, match=missing_z):
        qkvz.quant_method.process_weights_after_loading(qkvz)


def test_fused_shared_slot_without_shared_expert_tensors_is_reported(text_config, quark_config, tensors) -> None:
    # Fusing the shared expert needs its INT8 tensors in the checkpoint (the NVFP4 / ct-MXFP4 cards lack them).
    root = quantized_modules(text_config, quark_config, fuse_shared=True)
    routed_only = [(n, t) for n, t in quantized_tensors(tensors) if "shared_expert" not in n]
    Qwen3_5MoeForConditionalGeneration.load_weights(root, routed_only)
    moe = root.get_submodule(f"{PARAMS}.1.mlp.experts")
    with pytest.raises(ValueError, match=rf"{HF}\.1\.mlp\.experts\.w13_weight_scale: 1 local experts \(first: \[8\]\)"):
        moe.quant_method.process_weights_after_loading(moe)


# --- forward on CPU through the fallback -----------------------------------------------------------------


def dequantized(tensors: dict[str, torch.Tensor], source: Source) -> torch.Tensor:
    codes, scale = expected(tensors, source)
    return codes.double() * scale.double().unsqueeze(1)


def reference_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    codes, scale = int8.quantize_activations_per_token(x)
    return (codes.double() * scale.double()) @ weight.t()


def test_linear_forward_matches_float_reference(text_config, quark_config, tensors) -> None:
    root = load(text_config, quark_config, tensors, fuse_shared=False)
    x = torch.randn(5, text_config.hidden_size, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    for target, source in expected_sources(text_config, fuse_shared=False).items():
        if "experts" in target or source[0] == "row":
            continue  # those take wider inputs; the column-parallel ones cover the scheme
        out, _ = root.get_submodule(target)(x)
        ref = reference_linear(x, dequantized(tensors, source))
        assert out.dtype == torch.bfloat16
        # Exact products and float32 sums; the bf16 output rounds once.
        assert ((out.double() - ref).abs() <= (BF16_EPS + 1e-6) * ref.abs()).all(), target


@pytest.mark.parametrize("fuse_shared", [False, True], ids=["routed", "routed+fused-shared"])
def test_moe_forward_matches_float_reference(text_config, quark_config, tensors, fuse_shared: bool) -> None:
    root = load(text_config, quark_config, tensors, fuse_shared)
    moe = root.get_submodule(f"{PARAMS}.3.mlp.experts")
    g = torch.Generator().manual_seed(1)
    tokens, experts = 6, text_config.num_experts + int(fuse_shared)
    x = torch.randn(tokens, text_config.hidden_size, generator=g).to(torch.bfloat16)
    topk_ids = torch.stack([torch.randperm(experts, generator=g)[:3] for _ in range(tokens)])
    if fuse_shared:
        topk_ids[:, 2] = text_config.num_experts  # the shared expert rides along as the last slot
    topk_weights = torch.rand(tokens, 3, generator=g)
    topk = StandardTopKOutput(topk_weights, topk_ids, torch.zeros(tokens, experts))
    out = moe.scheme.apply_weights(moe, StandardDispatchOutput(x, None, topk)).hidden_states

    sources = expected_sources(text_config, fuse_shared)
    ref = torch.zeros(tokens, text_config.hidden_size, dtype=torch.float64)
    for t in range(tokens):
        for slot in range(3):
            e = int(topk_ids[t, slot])
            gate_up = reference_linear(x[t : t + 1], dequantized(tensors, sources[f"{PARAMS}.3.mlp.experts.w13[{e}]"]))
            gate, up = gate_up.to(torch.bfloat16).double().chunk(2, dim=-1)
            act = (torch.nn.functional.silu(gate) * up).to(torch.bfloat16)
            down = reference_linear(act, dequantized(tensors, sources[f"{PARAMS}.3.mlp.experts.w2[{e}]"]))
            ref[t] += down[0] * float(topk_weights[t, slot])
    # bf16 output rounding, plus at most a one-step activation code flip where float32 and float64 round an
    # intermediate to bf16 differently.
    excess = (out.double() - ref).abs() - BF16_EPS * ref.abs()
    assert excess.max() <= 1e-3 * ref.abs().max(), f"max excess {excess.max():.2e}, max |ref| {ref.abs().max():.2e}"

"""GPU check of the Quark MXFP4 W4A4 CUDA path (sglang_ext/quantization/quark/w4a4_mxfp4_cuda.py), one GPU.

    PYTHONPATH=<repo>:<sglang bundle> python tests/gpu/check_mxfp4_moe_kernels.py [--rel-tol 0.01]

1. activation qdq: the Triton kernel equals the codec bit for bit (BF16/FP16/FP32, subnormals, ties, Inf/NaN);
2. weight layout: one-hot activations through SGLang's Marlin repack + MXFP4 GEMM give back exactly the
   codec's decode of every expert's gate, up and down weights (the repack round-trips bit for bit);
3. MoE error: marlin_mxfp4_w4a4_moe on random MXFP4 experts (routed top-k plus a fused shared slot) against
   the float32 reference (dequantized weights, MXFP4 qdq activations), per shape and batch size, printing
   max-abs error, max-abs relative to max|ref|, and ||out - ref|| / ||ref|| next to the BF16 rounding floor;
4. the scheme inside SGLang's FusedMoE: the tiny quark-mxfp4-fse fixture's layer 0 loaded through SGLang's
   loader (shared expert in slot E), prepared, dispatched and run, against the same reference.

Exits 1 if any check fails; each check reports on its own.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from sglang_ext.codecs import mxfp4  # noqa: E402
from sglang_ext.codecs.mxfp4 import Producer  # noqa: E402
from sglang_ext.quantization.mxfp4_moe_reference import dequantize_experts, reference_w4a4_moe  # noqa: E402

CUDA = torch.device("cuda")
# (name, hidden, intermediate per rank, routed experts, top-k): the tiny fixture, Qwen3.5-35B-A3B at TP1,
# one TP4 rank of Qwen3.5-397B-A17B.
SHAPES = [("tiny", 128, 64, 8, 2), ("35B-A3B tp1", 2048, 512, 256, 8), ("397B-A17B tp4", 4096, 256, 512, 10)]
BATCHES = [1, 2, 8, 32, 128, 512, 2048]


# --------------------------------------------------------------------------- 1. activation qdq
def check_activation_qdq() -> None:
    from sglang_ext.kernels.mxfp4_act_quant import fake_quantize_mxfp4_triton

    g = torch.Generator().manual_seed(0)
    rows = [torch.randn(64, 96, generator=g) * torch.logspace(-38, 30, 64).unsqueeze(1)]
    ties = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 0.1, 0.0])
    rows.append(torch.cat([ties, -ties, ties * 2**-20, -ties * 2**-20, ties * 1.74 / 6, ties * 1.75 / 6]).view(1, 96))
    rows.append(torch.full((1, 96), -0.0))
    special = torch.randn(3, 96, generator=g)
    special[0, 3], special[1, 40], special[2, 70] = float("inf"), float("-inf"), float("nan")
    rows += [special, torch.randn(4, 96, generator=g) * 1e-39, torch.randn(1001, 96, generator=g)]
    x = torch.cat(rows)
    bits = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}
    for dtype, view in bits.items():
        data = x.clamp(-6e4, 6e4) if dtype == torch.float16 else x
        data = data.to(dtype)
        got = fake_quantize_mxfp4_triton(data.to(CUDA)).cpu()
        want = mxfp4.fake_quantize_activations(data)
        differ = (got.view(view) != want.view(view)) & ~(got.isnan() & want.isnan())
        print(f"  {str(dtype):15s} {data.numel():7d} elements, {int(differ.sum())} differ")
        assert not differ.any(), f"{dtype}: {data[differ][:8].tolist()} -> {got[differ][:8].tolist()} vs {want[differ][:8].tolist()}"


# --------------------------------------------------------------------------- shared helpers
def random_experts(num_experts: int, hidden: int, intermediate: int, seed: int):
    """Stacked Quark-exported MXFP4 experts as FusedMoE holds them after loading (uint8, on the GPU)."""
    g = torch.Generator(device=CUDA).manual_seed(seed)
    parts: dict[str, list[torch.Tensor]] = {"w13": [], "w13_scale": [], "w2": [], "w2_scale": []}
    for start in range(0, num_experts, 64):  # chunks keep the codec's float32 temporaries small
        n = min(64, num_experts - start)
        w13 = torch.randn(n, 2 * intermediate, hidden, generator=g, device=CUDA) * 0.02
        w2 = torch.randn(n, hidden, intermediate, generator=g, device=CUDA) * 0.02
        for name, w in (("w13", w13), ("w2", w2)):
            packed, scales = mxfp4.quantize(w.bfloat16(), Producer.QUARK)
            parts[name].append(packed)
            parts[f"{name}_scale"].append(scales)
    return {name: torch.cat(chunks) for name, chunks in parts.items()}


def marlin_layer(experts: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A module with the parameters the Quark scheme creates, prepared by SGLang's Marlin repack."""
    from sglang.srt.layers.quantization.marlin_utils_fp4 import prepare_moe_mxfp4_layer_for_marlin

    layer = torch.nn.Module()
    for name, tensor in (("w13_weight", experts["w13"]), ("w2_weight", experts["w2"]),
                         ("w13_weight_scale", experts["w13_scale"]), ("w2_weight_scale", experts["w2_scale"])):
        layer.register_parameter(name, torch.nn.Parameter(tensor.clone(), requires_grad=False))
    prepare_moe_mxfp4_layer_for_marlin(layer)
    return layer


def fse_routing(tokens: int, routed: int, top_k: int, seed: int):
    """Softmax-renormalised top-k over the routed experts plus the shared slot `routed` with a sigmoid gate."""
    g = torch.Generator(device=CUDA).manual_seed(seed)
    top = torch.randn(tokens, routed, generator=g, device=CUDA).softmax(-1).topk(top_k, dim=-1)
    ids = torch.cat([top.indices, torch.full((tokens, 1), routed, device=CUDA)], 1).to(torch.int32)
    shared = torch.randn(tokens, 1, generator=g, device=CUDA).sigmoid()
    return torch.cat([top.values / top.values.sum(-1, keepdim=True), shared], 1).float(), ids


def error_row(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float, float, float]:
    diff = out.float() - ref
    floor = (ref.bfloat16().float() - ref).norm() / ref.norm()
    return (diff.abs().max().item(), (diff.abs().max() / ref.abs().max()).item(),
            (diff.norm() / ref.norm()).item(), floor.item())


# --------------------------------------------------------------------------- 2. weight layout
def check_weight_layout() -> None:
    from sglang_ext.quantization.quark.w4a4_mxfp4_marlin_moe import marlin_mxfp4_gemm, marlin_routing

    for name, hidden, intermediate, _, _ in SHAPES[:2]:
        num_experts = 3
        experts = random_experts(num_experts, hidden, intermediate, seed=1)
        w13, w2 = (w.bfloat16() for w in dequantize_experts(experts["w13"], experts["w13_scale"],
                                                            experts["w2"], experts["w2_scale"]))
        layer = marlin_layer(experts)
        padded = layer.w2_weight.shape[1] * 16  # intermediate after Marlin's padding

        def probe(weight, scale, k: int, n: int) -> torch.Tensor:
            """Row (e, j) = expert e's weight column j: one-hot rows times each expert."""
            eye = torch.eye(k, dtype=torch.bfloat16, device=CUDA).repeat(num_experts, 1)
            ids = torch.arange(num_experts, device=CUDA, dtype=torch.int32).repeat_interleave(k)[:, None]
            routing = marlin_routing(torch.ones(ids.shape, device=CUDA), ids, num_experts)
            return marlin_mxfp4_gemm(eye, weight, scale, routing, 1, False, n).view(num_experts, k, n)

        gate_up = probe(layer.w13_weight, layer.w13_weight_scale, hidden, 2 * padded)
        down = probe(layer.w2_weight, layer.w2_weight_scale, padded, hidden)
        gate, up = w13.transpose(1, 2).split(intermediate, dim=-1)
        ok = {
            "gate": torch.equal(gate_up[..., :intermediate], gate),
            "up": torch.equal(gate_up[..., padded : padded + intermediate], up),
            "padding": not gate_up[..., intermediate:padded].any() and not gate_up[..., padded + intermediate :].any(),
            "down": torch.equal(down[:, :intermediate], w2.transpose(1, 2)),
        }
        print(f"  {name:14s} H={hidden} I={intermediate} (Marlin I={padded}): "
              + ", ".join(f"{k} {'bit-exact' if v else 'DIFFERS'}" for k, v in ok.items()))
        assert all(ok.values()), name


# --------------------------------------------------------------------------- 3. MoE error per batch size
def check_moe_error(rel_tol: float) -> None:
    from sglang_ext.quantization.quark.w4a4_mxfp4_marlin_moe import marlin_mxfp4_w4a4_moe

    print(f"  {'shape':14s} {'M':>5s} {'max-abs':>10s} {'max-abs/max|ref|':>17s} {'rel-fro':>9s} {'bf16 floor':>10s}")
    worst = 0.0
    for name, hidden, intermediate, routed, top_k in SHAPES:
        experts = random_experts(routed + 1, hidden, intermediate, seed=2)  # slot `routed` = shared expert
        w13, w2 = dequantize_experts(experts["w13"], experts["w13_scale"], experts["w2"], experts["w2_scale"])
        layer = marlin_layer(experts)
        for tokens in BATCHES:
            g = torch.Generator(device=CUDA).manual_seed(tokens)
            x = torch.randn(tokens, hidden, generator=g, device=CUDA).bfloat16()
            weights, ids = fse_routing(tokens, routed, top_k, seed=tokens)
            out = marlin_mxfp4_w4a4_moe(x, layer.w13_weight, layer.w2_weight, layer.w13_weight_scale,
                                        layer.w2_weight_scale, weights, ids)
            ref = reference_w4a4_moe(x, w13, w2, weights, ids)
            max_abs, max_rel, rel, floor = error_row(out, ref)
            worst = max(worst, rel)
            print(f"  {name:14s} {tokens:5d} {max_abs:10.3e} {max_rel:17.3e} {rel:9.3e} {floor:10.3e}")
        del layer, w13, w2, experts
        torch.cuda.empty_cache()
    assert worst < rel_tol, f"relative error {worst:.3e} >= {rel_tol}"


# --------------------------------------------------------------------------- 4. the scheme inside FusedMoE
def check_scheme_in_fused_moe(rel_tol: float) -> None:
    from sglang.srt.layers.moe.topk import StandardTopKOutput

    from sglang_ext.fixtures import write_fixture
    from sglang_ext.quantization.quark.w4a4_mxfp4_cuda import QuarkW4A4MXFp4MoECuda
    from tests.test_quark_mxfp4_cuda_sglang import (
        LAYER, ROUTED, _fused_moe, _load_experts, _quant_config, _quark_with_cuda_mxfp4, _tensors, sglang_layers,
    )

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "quark-mxfp4-fse"
        write_fixture(path, fmt="quark-mxfp4-fse", seed=0)
        config = _quark_with_cuda_mxfp4(_quant_config(path))
        tensors = {k: v for k, v in _tensors(path, f"{LAYER}.mlp.").items()
                   if ".experts." in k or ".shared_expert." in k}
    with sglang_layers(), torch.device(CUDA):
        moe = _fused_moe(config, shared=1)
        assert isinstance(moe.scheme, QuarkW4A4MXFp4MoECuda), type(moe.scheme)
        _load_experts(moe, tensors, ROUTED + 1)
        moe.quant_method.process_weights_after_loading(moe)
        hidden = moe.hidden_size
        modules = [f"experts.{e}" for e in range(ROUTED)] + ["shared_expert"]  # the shared expert is slot E

        def stacked(projections: tuple[str, ...], suffix: str) -> torch.Tensor:
            return torch.stack([
                torch.cat([tensors[f"{LAYER}.mlp.{m}.{p}.{suffix}"] for p in projections]) for m in modules
            ]).to(CUDA)

        w13, w2 = dequantize_experts(
            stacked(("gate_proj", "up_proj"), "weight"), stacked(("gate_proj", "up_proj"), "weight_scale"),
            stacked(("down_proj",), "weight"), stacked(("down_proj",), "weight_scale"),
        )
        for tokens in (1, 7, 64):
            x = torch.randn(tokens, hidden, device=CUDA).bfloat16()
            weights, ids = fse_routing(tokens, ROUTED, 2, seed=tokens)
            topk = StandardTopKOutput(topk_weights=weights, topk_ids=ids, router_logits=torch.zeros(tokens, ROUTED))
            out = moe.quant_method.apply(moe, moe.dispatcher.dispatch(hidden_states=x, topk_output=topk)).hidden_states
            max_abs, max_rel, rel, floor = error_row(out, reference_w4a4_moe(x, w13, w2, weights, ids))
            print(f"  tiny fixture layer 0, M={tokens:3d}: max-abs {max_abs:.3e}, rel-fro {rel:.3e} (bf16 floor {floor:.3e})")
            assert rel < rel_tol, rel


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rel-tol", type=float, default=1e-2, help="max ||out - ref|| / ||ref|| (default 1e-2)")
    args = parser.parse_args()
    print(torch.cuda.get_device_name(), "capability", torch.cuda.get_device_capability())
    checks = [
        ("1. activation qdq: Triton == codec", check_activation_qdq),
        ("2. weight layout: Marlin repack round trip", check_weight_layout),
        ("3. MoE vs float32 reference", lambda: check_moe_error(args.rel_tol)),
        ("4. scheme inside SGLang's FusedMoE", lambda: check_scheme_in_fused_moe(args.rel_tol)),
    ]
    failed = []
    for title, check in checks:
        print(title)
        try:
            check()
            print("  PASS")
        except Exception:  # report every check, then fail the run
            traceback.print_exc()
            print("  FAIL")
            failed.append(title)
    print("FAILED: " + "; ".join(failed) if failed else "all checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

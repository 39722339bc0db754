"""Quark INT8 W8A8 on CUDA: SGLang's int8 kernels against the torch fallback, on random data.

    python -m tests.gpu.check_quark_int8_kernels     # repo root, CUDA GPU, SGLang 0.5.17 importable

Prints one row per check with the max abs error and that error relative to max |reference|, and exits 1
if any check exceeds its bound. The checks:

* ``int8_scaled_mm`` and the scheme's kernel path vs float64 on the same SGLang-quantized activation
  codes: int32 accumulation, then scales and one bf16 output rounding (the rows show the error beyond it).
* the scheme's kernel path vs ``int8_linear`` (bf16 matmul, as the scheme runs it on GPUs without the
  kernel). Their activation rules differ (SGLang ``amax/127`` half away from zero, Quark ``amax/127.5``
  half to even), so the bound is the size of that difference.
* ``int8_linear`` on the GPU (float32 and bf16 matmul) vs float64 with Quark's rule.
* QuarkW8A8Int8MoE through SGLang's Triton fused MoE (INT8 W8A8 per-channel) vs ``int8_moe``, with a
  fused shared-expert slot; bounded by the rule difference as above.
The linear kernel covers sm80-sm90; on other GPUs the scheme runs the fallback and the rows say so.
"""

import sys

import torch

from sgl_kernel import int8_scaled_mm
from sglang.kernels.ops.quantization.int8_kernel import per_token_quant_int8
from sglang.srt.layers.linear import ColumnParallelLinear
from sglang.srt.layers.moe.fused_moe_triton.layer import FusedMoE
from sglang.srt.layers.moe.token_dispatcher import StandardDispatchOutput
from sglang.srt.layers.moe.topk import StandardTopKOutput
from sglang.srt.runtime_context import get_context, get_parallel

from sglang_ext.codecs import int8
from sglang_ext.fixtures import quant_configs
from sglang_ext.quantization.int8_fallback import int8_linear, int8_moe
from sglang_ext.quantization.quark.config import register_quark_int8

BF16_EPS = 2.0**-8
# SGLang's and Quark's per-token INT8 rules on one tensor: on CPU with these shapes the outputs differ by
# <= 0.8% (linear) and 2% (MoE, quantizing twice) of max |output|.
RULE_DIFFERENCE = 3e-2
MOE_RULE_DIFFERENCE = 6e-2
# A bf16 GEMM rounds its output, and cuBLAS may also reduce split-K partial sums in bf16
# (torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction).
BF16_MATMUL = 4 * BF16_EPS

rows: list[tuple[str, str, float, float, float]] = []


def report(check: str, shape: str, out: torch.Tensor, ref: torch.Tensor, bound: float) -> None:
    """Record max |out - ref| and its ratio to max |ref|; the check passes while the ratio <= bound."""
    err = (out.double() - ref.double()).abs().max().item()
    rows.append((check, shape, err, err / ref.double().abs().max().item(), bound))


def report_excess(check: str, shape: str, out: torch.Tensor, ref: torch.Tensor, roundings: int) -> None:
    """As `report`, after allowing `roundings` bf16 roundings relative to each element."""
    allowed = ((1 + BF16_EPS) ** roundings - 1) * ref.double().abs()
    excess = ((out.double() - ref.double()).abs() - allowed).clamp_min(0).max().item()
    err = (out.double() - ref.double()).abs().max().item()
    rows.append((check, shape, err, excess / ref.double().abs().max().item(), 1e-6))


def quantized_weight(n: int, k: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    weight = torch.randn(n, k, generator=g, device="cuda") * torch.logspace(-3, -1, n, device="cuda").unsqueeze(1)
    return int8.quantize(weight.to(torch.bfloat16))


def exact(x_codes, x_scale, codes, scale) -> torch.Tensor:
    return (x_codes.double() * x_scale.double()) @ (codes.double() * scale.double().reshape(-1, 1)).t()


def check_linear(quark_config, g: torch.Generator) -> None:
    for m, k, n in [(1, 2048, 4096), (7, 2048, 512), (128, 512, 2048), (1000, 2048, 1024)]:
        shape = f"M{m} K{k} N{n}"
        x = torch.randn(m, k, generator=g, device="cuda").to(torch.bfloat16)
        codes, scale = quantized_weight(n, k, g)
        x_q, x_s = per_token_quant_int8(x)  # SGLang's rule, what the kernel path runs
        sglang_ref = exact(x_q, x_s, codes, scale)
        quark_codes, quark_scale = int8.quantize_activations_per_token(x)
        quark_ref = exact(quark_codes, quark_scale, codes, scale)

        with torch.device("cuda"):
            layer = ColumnParallelLinear(
                k, n, bias=False, params_dtype=torch.bfloat16, quant_config=quark_config, prefix="check.linear",
                tp_rank=0, tp_size=1,
            )
        layer.weight.weight_loader(layer.weight, codes)
        layer.weight_scale.weight_loader(layer.weight_scale, scale)
        layer.quant_method.process_weights_after_loading(layer)
        scheme_out, _ = layer(x)
        fallback_bf16 = int8_linear(x, codes, scale, matmul_dtype=torch.bfloat16)
        fallback_f32 = int8_linear(x, codes, scale, matmul_dtype=torch.float32)

        if layer.scheme.use_kernel:
            raw = int8_scaled_mm(x_q, codes.t(), x_s, scale.float().view(-1, 1), out_dtype=torch.bfloat16)
            report_excess("int8_scaled_mm vs exact (same codes)", shape, raw, sglang_ref, roundings=1)
            report_excess("scheme kernel path vs exact (same codes)", shape, scheme_out, sglang_ref, roundings=1)
            report("scheme kernel path vs fallback bf16 (rules differ)", shape, scheme_out, fallback_bf16,
                   RULE_DIFFERENCE)
        else:
            report("scheme fallback path (no kernel) vs exact", shape, scheme_out, quark_ref, BF16_MATMUL)
        report_excess("fallback float32 vs exact (Quark rule)", shape, fallback_f32, quark_ref, roundings=1)
        report("fallback bf16 vs exact (Quark rule)", shape, fallback_bf16, quark_ref, BF16_MATMUL)


def check_moe(quark_config, g: torch.Generator) -> None:
    routed, hidden, inter, top_k = 16, 2048, 512, 4
    experts = routed + 1  # with the shared expert fused in as expert `routed`
    with torch.device("cuda"):
        moe = FusedMoE(
            experts, hidden, inter, layer_id=0, top_k=top_k + 1, num_fused_shared_experts=1,
            params_dtype=torch.bfloat16, quant_config=quark_config, prefix="check.mlp.experts",
        )
    for expert in range(experts):  # per-expert tensors, as SGLang's Qwen3.5 loader hands them over
        for shard, rows_out, cols in (("w1", inter, hidden), ("w3", inter, hidden), ("w2", hidden, inter)):
            codes, scale = quantized_weight(rows_out, cols, g)
            which = "w2" if shard == "w2" else "w13"
            for suffix, tensor in (("weight", codes), ("weight_scale", scale)):
                param = getattr(moe, f"{which}_{suffix}")
                param.weight_loader(param, tensor, f"check.mlp.experts.{which}_{suffix}", shard, expert)
    moe.quant_method.process_weights_after_loading(moe)

    for tokens in (1, 64, 512):
        x = torch.randn(tokens, hidden, generator=g, device="cuda").to(torch.bfloat16)
        logits = torch.randn(tokens, routed, generator=g, device="cuda")  # float32, as SGLang's router
        weights, ids = torch.softmax(logits, -1).topk(top_k)
        shared = torch.full((tokens, 1), routed, dtype=ids.dtype, device="cuda")
        topk_ids = torch.cat([ids, shared], dim=1).to(torch.int32)
        shared_weight = torch.sigmoid(torch.randn(tokens, 1, generator=g, device="cuda"))  # the shared-expert gate
        topk_weights = torch.cat([weights, shared_weight], dim=1)
        topk = StandardTopKOutput(topk_weights, topk_ids, logits)
        # The Triton MoE may write its output over the input: give it a copy.
        triton = moe.scheme.apply_weights(moe, StandardDispatchOutput(x.clone(), None, topk)).hidden_states
        fallback = int8_moe(
            x, moe.w13_weight, moe.w13_weight_scale, moe.w2_weight, moe.w2_weight_scale, topk_weights, topk_ids
        )
        shape = f"T{tokens} E{routed}+1 k{top_k}+1"
        report("moe triton vs fallback float32 (rules differ)", shape, triton, fallback, MOE_RULE_DIFFERENCE)


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA GPU")
        return 1
    block = quant_configs.quark_w8a8_int8(exclude=[])
    quark_config = register_quark_int8().from_config({**block, "packed_modules_mapping": {}})
    g = torch.Generator(device="cuda").manual_seed(0)
    single_rank = {
        f"{group}tp_{field}": value for group in ("", "attn_", "moe_") for field, value in (("rank", 0), ("size", 1))
    }
    with get_context().override_server_args(), get_parallel().override(moe_ep_size=1, moe_ep_rank=0, **single_rank):
        check_linear(quark_config, g)
        check_moe(quark_config, g)

    print(f"device: {torch.cuda.get_device_name()} (sm{''.join(map(str, torch.cuda.get_device_capability()))})")
    print(f"{'check':<58} {'shape':<20} {'max abs err':>12} {'rel to max|ref|':>16} {'bound':>8}  ok")
    failed = 0
    for check, shape, err, rel, bound in rows:
        ok = rel <= bound
        failed += not ok
        print(f"{check:<58} {shape:<20} {err:>12.3e} {rel:>16.3e} {bound:>8.0e}  {'yes' if ok else 'NO'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

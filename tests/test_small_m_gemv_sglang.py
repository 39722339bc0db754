"""sglang_ext.small_m_gemv inside SGLang 0.5.17 on a CPU: with SGLANG_EXT_SMALL_M_GEMV=all, SGLang's own linear,
lm_head and this repository's Quark INT8 layers send 1-8 BF16 tokens to the GEMV and keep their path above
that; with =1 only the points gemv_wins lists for the GPU model (none on one it does not list, said once);
nothing changes while the variable is unset or holds a value it does not know.

The CPU stands in for an sm90 GPU (`_on_sm90`), and the GEMV runs in Triton's interpreter on one config,
since the interpreter cannot time configs to autotune. On the INT8 path, SGLang's `per_token_quant_int8` (a
Triton kernel the interpreter cannot run: it calls CUDA's libdevice) and sgl_kernel's `int8_scaled_mm` are
CUDA-only, so torch versions of their math stand in for them.
"""

import functools

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("sglang", reason="SGLang is not installed")

from sglang.srt.layers.linear import ReplicatedLinear  # noqa: E402
from sglang.srt.layers.logits_processor import LogitsProcessor  # noqa: E402
from sglang.srt.layers.quantization import QUANTIZATION_METHODS  # noqa: E402
from sglang.srt.layers.quantization.unquant import UnquantizedLinearMethod  # noqa: E402
from sglang.srt.layers.vocab_parallel_embedding import ParallelLMHead  # noqa: E402
from sglang.srt.runtime_context import get_context, get_parallel  # noqa: E402

from sglang_ext import small_m_gemv  # noqa: E402
from sglang_ext.fixtures import quant_configs  # noqa: E402
from sglang_ext.kernels.gemv import CONFIGS, MAX_M, gemv, int8_gemv, int8_scaled_gemv  # noqa: E402
from sglang_ext.quantization.quark import w8a8_int8  # noqa: E402
from sglang_ext.quantization.quark.config import register_quark_int8  # noqa: E402
from tests.gemv_numerics import per_token_quant_int8_reference as per_token_quant_int8  # noqa: E402
from tests.gemv_numerics import within_rounding  # noqa: E402
from tests.triton_cpu import BF16_ROUNDING, bf16_dot  # noqa: E402,F401 (fixture)

HIDDEN = 2048  # the 35B's: a K the kernel's tiles divide
ONE_CONFIG = next(c for c in CONFIGS if c.kwargs == {"BLOCK_N": 32, "BLOCK_K": 256, "SPLIT_K": 2})


@pytest.fixture(autouse=True)
def single_rank():
    fields = {f"{group}tp_{field}": value for group in ("", "attn_") for field, value in (("rank", 0), ("size", 1))}
    with get_context().override_server_args(), get_parallel().override(**fields):
        yield


@pytest.fixture
def stock(monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """SGLang's methods as they were; the hook's replacements are undone after the test."""
    for owner, name, _ in small_m_gemv.ROUTES:
        monkeypatch.setattr(owner, name, getattr(owner, name))
    return {name: getattr(owner, name) for owner, name, _ in small_m_gemv.ROUTES}


@pytest.fixture
def routed(monkeypatch: pytest.MonkeyPatch, stock, bf16_dot) -> list[str]:
    """The hook installed as SGLANG_EXT_SMALL_M_GEMV=1 installs it, on a CPU standing in for sm90; returns the
    GEMV calls made, by entry point."""
    calls: list[str] = []

    def recorded(entry):
        @functools.wraps(entry)
        def call(*args, **kwargs):
            calls.append(entry.__name__)
            return entry(*args, **kwargs, config=ONE_CONFIG)

        return call

    monkeypatch.setenv(small_m_gemv.ENV, "all")  # every point: the CPU is no GPU model gemv_wins lists
    monkeypatch.setattr(small_m_gemv, "_on_sm90", lambda device: True)
    monkeypatch.setattr(small_m_gemv, "_measured_wins", lambda device: None)
    monkeypatch.setattr(small_m_gemv, "gemv", recorded(gemv))
    monkeypatch.setattr(small_m_gemv, "int8_scaled_gemv", recorded(int8_scaled_gemv))
    monkeypatch.setattr(small_m_gemv, "int8_gemv", recorded(int8_gemv))
    assert small_m_gemv.install()
    return calls


def test_off_unless_the_variable_is_set(monkeypatch: pytest.MonkeyPatch, stock) -> None:
    monkeypatch.delenv(small_m_gemv.ENV, raising=False)
    assert not small_m_gemv.install()
    assert {name: getattr(owner, name) for owner, name, _ in small_m_gemv.ROUTES} == stock


def test_install_is_idempotent(routed, stock) -> None:
    installed = UnquantizedLinearMethod.apply
    assert installed is not stock["apply"] and installed.__wrapped__ is stock["apply"]
    assert small_m_gemv.install() and UnquantizedLinearMethod.apply is installed


def test_only_sm90_cuda_counts_as_sm90() -> None:
    assert not small_m_gemv._on_sm90(torch.device("cpu"))


def bf16_linear(n: int, k: int, bias: bool) -> ReplicatedLinear:
    layer = ReplicatedLinear(k, n, bias=bias, params_dtype=torch.bfloat16, prefix="model.layers.0.mlp.gate")
    assert isinstance(layer.quant_method, UnquantizedLinearMethod)
    generator = torch.Generator().manual_seed(n)
    layer.weight.data.copy_(torch.randn(n, k, generator=generator) * k**-0.5)
    if bias:
        layer.bias.data.copy_(torch.randn(n, generator=generator))
    return layer


@pytest.mark.parametrize("bias", [False, True])
def test_bf16_linear_routes_up_to_max_m_tokens(routed, bias: bool) -> None:
    layer = bf16_linear(64, HIDDEN, bias)
    for tokens in (1, MAX_M):
        x = torch.randn(tokens, HIDDEN).bfloat16()
        out, _ = layer(x)
        assert routed.pop() == "gemv" and not routed
        assert within_rounding(out, x, layer.weight, layer.bias, BF16_ROUNDING)
    x = torch.randn(MAX_M + 1, HIDDEN).bfloat16()
    out, _ = layer(x)
    assert not routed and torch.equal(out, F.linear(x, layer.weight, layer.bias))


def measured(monkeypatch: pytest.MonkeyPatch, wins: frozenset | None) -> None:
    """SGLANG_EXT_SMALL_M_GEMV=1 on a GPU model whose measured wins are `wins` (None: not listed)."""
    monkeypatch.setenv(small_m_gemv.ENV, "1")
    monkeypatch.setattr(small_m_gemv, "_measured_wins", lambda device: wins)
    assert small_m_gemv.install()


def test_a_measured_gpu_routes_only_the_points_where_the_gemv_won(routed, monkeypatch: pytest.MonkeyPatch) -> None:
    measured(monkeypatch, frozenset({("bf16", 64, HIDDEN, 1)}))
    layer = bf16_linear(64, HIDDEN, bias=False)
    out, _ = layer(torch.randn(1, HIDDEN).bfloat16())
    assert routed.pop() == "gemv" and not routed
    x = torch.randn(2, HIDDEN).bfloat16()  # measured slower (or not at all) at M = 2: SGLang's path
    out, _ = layer(x)
    assert not routed and torch.equal(out, F.linear(x, layer.weight))
    out, _ = bf16_linear(128, HIDDEN, bias=False)(torch.randn(1, HIDDEN).bfloat16())  # another shape
    assert not routed


def test_a_gpu_never_measured_keeps_sglangs_path_and_says_how_to_measure_it(routed, monkeypatch: pytest.MonkeyPatch,
                                                                          caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    measured(monkeypatch, None)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    small_m_gemv._unmeasured.cache_clear()
    layer = bf16_linear(64, HIDDEN, bias=False)
    x = torch.randn(1, HIDDEN).bfloat16()
    with caplog.at_level("WARNING", logger=small_m_gemv.__name__):
        out, _ = layer(x)
        layer(x)
    assert not routed and torch.equal(out, F.linear(x, layer.weight))
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "NVIDIA H100 80GB HBM3" in warnings[0] and "bench_gemv --wins" in warnings[0]
    assert "SGLANG_EXT_SMALL_M_GEMV=all" in warnings[0]


def test_a_value_it_does_not_know_is_off_and_named(monkeypatch: pytest.MonkeyPatch, stock,
                                                   caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    monkeypatch.setenv(small_m_gemv.ENV, "yes")
    with caplog.at_level("WARNING", logger=small_m_gemv.__name__):
        assert not small_m_gemv.install()
    assert {name: getattr(owner, name) for owner, name, _ in small_m_gemv.ROUTES} == stock
    assert "SGLANG_EXT_SMALL_M_GEMV=yes: expected 1" in caplog.text


@pytest.mark.parametrize(
    "x,n,k",
    [
        (torch.randn(2, HIDDEN), 64, HIDDEN),  # float32 activations
        (torch.randn(2, 200).bfloat16(), 64, 200),  # K no tile divides
        (torch.randn(0, HIDDEN).bfloat16(), 64, HIDDEN),  # no tokens
    ],
    ids=["float32", "odd-k", "empty"],
)
def test_bf16_linear_keeps_sglangs_path_otherwise(routed, x: torch.Tensor, n: int, k: int) -> None:
    layer = bf16_linear(n, k, bias=False)
    if x.dtype == torch.float32:
        layer.weight.data = layer.weight.data.float()
    out, _ = layer(x)
    assert not routed and torch.equal(out, F.linear(x, layer.weight))


def lm_head_and_logits(vocab: int) -> tuple[ParallelLMHead, LogitsProcessor]:
    lm_head = ParallelLMHead(vocab, HIDDEN, params_dtype=torch.bfloat16, prefix="lm_head")
    lm_head.weight.data.copy_(torch.randn(lm_head.weight.shape) * HIDDEN**-0.5)
    return lm_head, LogitsProcessor(type("Config", (), {"vocab_size": vocab})())


def test_lm_head_routes_up_to_max_m_tokens(routed) -> None:
    lm_head, logits = lm_head_and_logits(vocab=1000)
    hidden = torch.randn(3, HIDDEN).bfloat16()
    out = logits._compute_lm_head(hidden, lm_head)
    assert routed == ["gemv"] and out.shape == (3, lm_head.weight.shape[0])
    assert within_rounding(out, hidden, lm_head.weight, None, BF16_ROUNDING)
    hidden = torch.randn(MAX_M + 1, HIDDEN).bfloat16()
    assert torch.equal(logits._compute_lm_head(hidden, lm_head), hidden @ lm_head.weight.T) and routed == ["gemv"]


def test_lm_head_keeps_float32_logits_on_sglangs_path(routed) -> None:
    lm_head, logits = lm_head_and_logits(vocab=1000)
    logits.use_fp32_lm_head = True  # --enable-fp32-lm-head
    hidden = torch.randn(2, HIDDEN).bfloat16()
    out = logits._compute_lm_head(hidden, lm_head)
    assert not routed and out.dtype == torch.float32


# --- Quark INT8 W8A8 --------------------------------------------------------------------------------------


@pytest.fixture
def int8_layer(monkeypatch: pytest.MonkeyPatch, stock) -> ReplicatedLinear:
    """A Quark INT8 out_proj (SGLang's RowParallel/Replicated layer, this repository's scheme) loaded and laid
    out for int8_scaled_mm, as on sm90; its activation quantization and int8_scaled_mm on the CPU stand-ins."""
    monkeypatch.setitem(QUANTIZATION_METHODS, "quark", QUANTIZATION_METHODS["quark"])
    quark = register_quark_int8().from_config({**quant_configs.quark_w8a8_int8(exclude=[]), "packed_modules_mapping": {}})
    layer = ReplicatedLinear(HIDDEN, 64, bias=False, quant_config=quark, params_dtype=torch.bfloat16,
                             prefix="model.language_model.layers.0.linear_attn.out_proj")  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    layer.weight.data.copy_(torch.randint(-127, 128, (64, HIDDEN), generator=generator, dtype=torch.int8))
    layer.weight_scale.data.copy_(torch.rand(64, generator=generator) / 100)
    monkeypatch.setattr(w8a8_int8, "_int8_scaled_mm_fits", lambda weight, out_dtype: True)
    layer.quant_method.process_weights_after_loading(layer)
    assert layer.scheme.use_kernel and layer.weight.shape == (HIDDEN, 64)  # the [K, N] view int8_scaled_mm reads

    def int8_scaled_mm(x_q, weight, x_scale, w_scale, out_dtype, bias=None):
        return (x_scale * (w_scale.view(1, -1) * (x_q.long() @ weight.long()).float())).to(out_dtype)

    for module in (w8a8_int8, small_m_gemv):
        monkeypatch.setattr(module, "per_token_quant_int8", per_token_quant_int8)
    monkeypatch.setattr(w8a8_int8, "int8_scaled_mm", int8_scaled_mm, raising=False)
    return layer


def test_quark_int8_routes_up_to_max_m_tokens(routed, int8_layer) -> None:
    """Every point (=all): the GEMV that quantizes its own rows, giving what SGLang's two steps give."""
    codes = int8_layer.weight.t()
    for tokens in (1, MAX_M):
        x = torch.randn(tokens, HIDDEN).bfloat16()
        out, _ = int8_layer(x)
        assert routed.pop() == "int8_gemv" and not routed
        x_q, x_scale = per_token_quant_int8(x)
        assert torch.equal(out, int8_scaled_gemv(x_q, x_scale, codes, int8_layer.weight_scale, x.dtype, config=ONE_CONFIG))
    x = torch.randn(MAX_M + 1, HIDDEN).bfloat16()
    out, _ = int8_layer(x)
    x_q, x_scale = per_token_quant_int8(x)
    assert not routed
    assert torch.equal(out, w8a8_int8.int8_scaled_mm(x_q, int8_layer.weight, x_scale, int8_layer.weight_scale, x.dtype))


def test_a_measured_gpu_routes_an_int8_linear_by_its_int8_points(routed, int8_layer,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    measured(monkeypatch, frozenset({("int8", 64, HIDDEN, 2)}))
    int8_layer(torch.randn(2, HIDDEN).bfloat16())
    assert routed.pop() == "int8_scaled_gemv" and not routed  # after SGLang's per_token_quant_int8
    monkeypatch.setattr(small_m_gemv, "_measured_wins", lambda device: frozenset({("bf16", 64, HIDDEN, 2)}))
    int8_layer(torch.randn(2, HIDDEN).bfloat16())  # the BF16 kernel's win says nothing of the INT8 one
    assert not routed
    both = frozenset({("int8", 64, HIDDEN, 2), ("int8+quant", 64, HIDDEN, 2)})
    monkeypatch.setattr(small_m_gemv, "_measured_wins", lambda device: both)
    int8_layer(torch.randn(2, HIDDEN).bfloat16())
    assert routed.pop() == "int8_gemv" and not routed  # one launch where that was measured faster too
    int8_layer(torch.randn(1, HIDDEN).bfloat16())
    assert not routed

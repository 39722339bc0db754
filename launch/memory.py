"""Where one GPU's memory goes when SGLang 0.5.17 serves a Qwen3.5-MoE checkpoint, planned before it starts.

SGLang sizes its pools after loading the weights: of `mem-fraction-static` × the GPU's memory, what the
weights leave is split between the DeltaNet state pool (`mamba-full-memory-ratio` : 1) and the KV pool of
the full-attention layers. A speculative draft that is the checkpoint's own MTP layer gets a KV pool of the
same token count on top, which SGLang budgets for (it scales the target's bytes per token by
`1 + draft layers / target attention layers`, `pool_configurator.py` DefaultPoolConfigurator) only when
`--speculative-draft-model-path` is set. For Qwen3.5 SGLang leaves it unset, so the draft pool lands
outside the fraction: at 4 real-shaped layers (1 attention layer, 1 MTP layer) it doubles the KV memory
and the server dies allocating it. The launcher therefore names the checkpoint as its own draft
(`draft_model_path_args`), and this module plans the same arithmetic from config.json so that a recipe
that cannot fit is refused with its numbers before anything starts. Replicas sharing a GPU (`SharedGpu`)
split what one server would take, and each is planned the same way at its share.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launch.checkpoint import drafts_with_its_mtp_head
from launch.errors import LaunchError

GIB = 1024**3
# SGLang 0.5.17 defaults (server_args.py) for what a recipe leaves unset.
MAMBA_FULL_MEMORY_RATIO = 0.9
DEFAULT_PAGE_SIZE = 1
DEFAULT_MAX_RUNNING_SPECULATIVE = 48  # arg_groups/speculative_hook.py, when speculative decoding is on
DEFAULT_MAX_RUNNING = 256
# Its choices for a GPU of 60 to 160 GiB (H100, H200) at TP below 4 (`_handle_gpu_memory_settings`).
DEFAULT_CHUNKED_PREFILL = 8192
DEFAULT_DECODE_GRAPH_MAX_BS = 256
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
KV_BYTES = {"auto": 2, "bfloat16": 2, "bf16": 2, "float16": 2, "fp8_e4m3": 1, "fp8_e5m2": 1, "fp8": 1}


@dataclass(frozen=True)
class ModelMemory:
    """What config.json says about the per-token and per-request state of the text model."""

    attention_layers: int
    linear_layers: int
    kv_heads: int
    head_dim: int
    mtp_layers: int
    linear_key_heads: int
    linear_value_heads: int
    linear_key_head_dim: int
    linear_value_head_dim: int
    conv_kernel: int
    ssm_bytes: int  # mamba_ssm_dtype's element size
    vocab_size: int
    hidden_size: int

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelMemory:
        text = config.get("text_config", config)
        types = text.get("layer_types") or []
        attention = sum(t == "full_attention" for t in types)
        return cls(
            attention_layers=attention,
            linear_layers=len(types) - attention,
            kv_heads=int(text["num_key_value_heads"]),
            head_dim=int(text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]),
            mtp_layers=int(text.get("mtp_num_hidden_layers", 0)),
            linear_key_heads=int(text.get("linear_num_key_heads", 0)),
            linear_value_heads=int(text.get("linear_num_value_heads", 0)),
            linear_key_head_dim=int(text.get("linear_key_head_dim", 0)),
            linear_value_head_dim=int(text.get("linear_value_head_dim", 0)),
            conv_kernel=int(text.get("linear_conv_kernel_dim", 4)),
            ssm_bytes=BYTES.get(str(text.get("mamba_ssm_dtype", "float32")), 4),
            vocab_size=int(text.get("vocab_size", 0)),
            hidden_size=int(text.get("hidden_size", 0)),
        )

    def draft_copies_bytes(self, tp: int) -> int:
        """What the draft loads beyond the checkpoint's mtp.* tensors: its own BF16 embedding and lm_head
        (SGLang 0.5.17 logs the MTP draft's weights as mtp.* plus these)."""
        return 2 * self.vocab_size // tp * self.hidden_size * 2

    def kv_bytes_per_token_per_layer(self, kv_dtype_bytes: int, tp: int) -> int:
        """K and V of one attention layer on one GPU (KV heads replicate when TP exceeds them)."""
        return 2 * max(1, self.kv_heads // tp) * self.head_dim * kv_dtype_bytes

    def state_bytes_per_request(self, tp: int) -> int:
        """One request's DeltaNet state on one GPU: the conv window (BF16) and the recurrent state."""
        key_dim = self.linear_key_heads * self.linear_key_head_dim // tp
        value_dim = self.linear_value_heads * self.linear_value_head_dim // tp
        conv = (2 * key_dim + value_dim) * (self.conv_kernel - 1) * 2
        ssm = self.linear_value_heads // tp * self.linear_key_head_dim * self.linear_value_head_dim * self.ssm_bytes
        return (conv + ssm) * self.linear_layers


@dataclass(frozen=True)
class MemoryPlan:
    """One GPU's share; every size in bytes."""

    gpu: int
    fraction: float
    fraction_source: str  # "the recipe" or how it was estimated
    weights: int
    state_pool: int
    state_per_request: int  # DeltaNet state slots of one running request, draft tokens' included
    running: int  # max-running-requests
    kv_pool: int
    target_bytes_per_token: int
    draft_bytes_per_token: int  # 0 without a draft that is the checkpoint's MTP layer
    tokens: int
    tokens_needed: int  # one chunked-prefill chunk

    FIXES = ("raise mem-fraction-static (--set mem-fraction-static=0.9), spread the model over more GPUs "
             "(--set tp-size=N), lower max-running-requests or chunked-prefill-size, serve the twin without "
             "speculative decoding, or --no-hardware-check to try anyway")  # fmt: skip

    @property
    def static(self) -> int:
        return int(self.gpu * self.fraction)

    @property
    def requests_held(self) -> int:
        """Running requests whose DeltaNet states fit (SGLang caps max-running-requests to it)."""
        return self.state_pool // self.state_per_request if self.state_per_request else self.running

    def problems(self) -> list[str]:
        """Why SGLang would die at start with this plan (empty: it starts)."""
        if self.weights >= self.static:
            return [f"the weights ({self.weights / GIB:.1f} GiB) fill the static budget ({self.fraction:g} × "
                    f"{self.gpu / GIB:.0f} GiB = {self.static / GIB:.1f} GiB)"]  # fmt: skip
        if self.requests_held < 1:
            return [f"the DeltaNet states of one request ({self.state_per_request / GIB:.2f} GiB) do not fit the "
                    f"{self.state_pool / GIB:.2f} GiB the weights leave them"]  # fmt: skip
        if self.tokens < self.tokens_needed:
            return [f"the KV pool holds {self.tokens} tokens ({self.kv_pool / GIB:.2f} GiB at "
                    f"{self.target_bytes_per_token + self.draft_bytes_per_token} B/token), less than one prefill chunk "
                    f"of {self.tokens_needed}"]  # fmt: skip
        return []

    def pools(self) -> str:
        draft = f" + draft {self.draft_bytes_per_token} B" if self.draft_bytes_per_token else ""
        capped = f" (caps max-running-requests {self.running} to {self.requests_held})" if self.requests_held < self.running else ""
        return (f"weights {self.weights / GIB:.1f} GiB, then at most: DeltaNet states {self.state_pool / GIB:.1f} GiB{capped}, "
                f"KV {self.kv_pool / GIB:.1f} GiB = {self.tokens:,} tokens at {self.target_bytes_per_token} B/token{draft}")  # fmt: skip

    def summary(self) -> str:
        return f"per GPU of {self.gpu / GIB:.0f} GiB at mem-fraction-static {self.fraction:g} ({self.fraction_source}): {self.pools()}"


def _activation_reserve_mib(server_args: dict[str, Any]) -> float:
    """What SGLang 0.5.17 sets aside for one server's activations (server_args.py `_handle_gpu_memory_settings`):
    0.5 GiB, 1.5 MiB per prefill token (a chunk, at least 2048) and 1/8 GiB per GPU of parallelism."""
    chunk = int(server_args.get("chunked-prefill-size") or DEFAULT_CHUNKED_PREFILL)
    gpus = int(server_args.get("tp-size") or 1) * int(server_args.get("pp-size") or 1)
    return 512 + max(chunk, 2048) * 1.5 + gpus / 8 * 1024


def _estimated_fraction(gpu: int, server_args: dict[str, Any]) -> float:
    """SGLang 0.5.17's own choice when the recipe sets none: the GPU less the activation reserve, at least
    10 GiB on a GPU over 60 GiB. Its CUDA-graph reserve is left out, so this is the largest fraction it
    would pick and the fit check errs towards starting."""
    mib = gpu / 2**20
    reserved = _activation_reserve_mib(server_args)
    if mib > 60 * 1024:
        reserved = max(reserved, 10 * 1024)
    return round((mib - reserved) / mib, 3)


def runtime_reserve(server_args: dict[str, Any]) -> int:
    """Bytes one server uses beyond mem-fraction-static by SGLang 0.5.17's estimate: its activation reserve
    and 2 MiB per decode CUDA-graph batch size (`reserve_for_graph_mb`), without the 10 GiB floor it keeps
    on a large GPU when choosing its own fraction."""
    graphs_off = server_args.get("cuda-graph-backend-decode") == "disabled" or server_args.get("disable-decode-cuda-graph")
    graph_mib = 0 if graphs_off else 2 * int(server_args.get("cuda-graph-max-bs-decode") or DEFAULT_DECODE_GRAPH_MAX_BS)
    return int((_activation_reserve_mib(server_args) + graph_mib) * 2**20)


def plan(model: ModelMemory, weights: int, gpu: int, server_args: dict[str, Any]) -> MemoryPlan:
    """SGLang's split of one GPU for these server arguments, with the draft's KV budgeted as the launcher
    arranges it (`draft_model_path_args`)."""
    tp = int(server_args.get("tp-size", 1))
    if server_args.get("mem-fraction-static") is not None:
        fraction, source = float(server_args["mem-fraction-static"]), "the recipe"
    else:
        fraction, source = _estimated_fraction(gpu, server_args), "SGLang's default, estimated"
    kv_bytes = KV_BYTES.get(str(server_args.get("kv-cache-dtype", "auto")), 2)
    per_layer = model.kv_bytes_per_token_per_layer(kv_bytes, tp)
    drafting = drafts_with_its_mtp_head(server_args)
    target = per_layer * model.attention_layers
    draft = per_layer * model.mtp_layers if drafting else 0
    page = int(server_args.get("page-size") or DEFAULT_PAGE_SIZE)
    ratio = float(server_args.get("mamba-full-memory-ratio") or MAMBA_FULL_MEMORY_RATIO)

    running = int(server_args.get("max-running-requests")
                  or (DEFAULT_MAX_RUNNING_SPECULATIVE if drafting else DEFAULT_MAX_RUNNING))  # fmt: skip
    draft_tokens = int(server_args.get("speculative-num-draft-tokens") or 0)
    # State slots per request (kv_cache_configurator.py `_calculate_mamba_ratio`): 3, and 2 more for the
    # extra buffer under the overlap scheduler, or 1 without a radix cache; speculative decoding adds the
    # intermediate states of every draft token.
    no_radix = bool(server_args.get("disable-radix-cache"))
    extra_buffer = server_args.get("mamba-radix-cache-strategy") == "extra_buffer"
    slots = 1 if no_radix else 3 + 2 * extra_buffer
    per_request = model.state_bytes_per_request(tp) * (slots + draft_tokens)

    if drafting:
        weights += model.draft_copies_bytes(tp)
    static = int(gpu * fraction)
    rest = max(0, static - weights)
    if not model.linear_layers:
        state_pool = 0
    elif no_radix and (drafting or server_args.get("max-running-requests")):
        state_pool = min(rest, per_request * (running + 1))  # a fixed pool, one slot a request
    else:
        state_pool = int(rest * ratio / (1 + ratio))  # `_handle_max_mamba_cache`'s share
    kv_pool = rest - state_pool
    tokens = kv_pool // (target + draft) // page * page if target + draft else 0
    chunk = int(server_args.get("chunked-prefill-size") or DEFAULT_CHUNKED_PREFILL)
    return MemoryPlan(gpu, fraction, source, weights, state_pool, per_request, running, kv_pool, target, draft, tokens, chunk)


def checkpoint_weights(directory: Path) -> int | None:
    """Bytes of tensors the server loads from a local checkpoint (its safetensors files), split over TP by
    the caller; None where there is nothing local to measure."""
    files = list(directory.glob("*.safetensors")) if directory.is_dir() else []
    return sum(f.stat().st_size for f in files) or None


def checkpoint_memory(directory: Path, server_args: dict[str, Any]) -> tuple[ModelMemory, int] | None:
    """A local checkpoint's config numbers and the weight bytes one GPU of its TP group loads; None for a hub
    id or a directory the checkpoint check has not vouched for (its config.json is read here again, its
    errors are that check's)."""
    weights = checkpoint_weights(directory)
    config_file = directory / "config.json"
    if weights is None or not config_file.is_file():
        return None
    try:
        model = ModelMemory.from_config(json.loads(config_file.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return model, weights // int(server_args.get("tp-size", 1))


@dataclass(frozen=True)
class SharedGpu:
    """Replicas of one server sharing each GPU (each set of GPUs a replica's parallelism takes), started one
    after another, splitting what one server would take.

    SGLang 0.5.17 takes mem-fraction-static of the memory free when a server starts, not of the GPU's total:
    `pre_model_load_memory` is read once the process holds its CUDA context (distributed/bootstrap.py), and
    the weights and pools get that less `pre_model_load_memory × (1 − fraction)` (kv_cache_configurator.py
    `_profile_available_bytes`). So the replica started p-th on a GPU is given its share over what the ones
    before it leave (about share / (1 − p × share)): each of them holds at least its share, so it takes at
    most its own, and all of them together at most what one server would. What the earlier ones hold beyond
    their share (CUDA context and graphs, activations) leaves it less; `plans` are the pools each gets when
    those hold their whole runtime reserve."""

    replicas: int
    fraction: float  # of the GPU, what one server would take
    fraction_source: str
    budget: float  # of the GPU, what the replicas take together: `fraction`, less where it leaves them too little runtime
    fractions: tuple[float, ...]  # mem-fraction-static of the replica started 1st, 2nd, ... on a GPU
    gpu: int | None  # bytes, where known
    reserve: int  # one replica's memory beyond its share, by SGLang's estimate
    plans: tuple[MemoryPlan, ...] = ()  # with a local checkpoint and a known GPU

    SMALLER = ("fewer replicas (--replicas N), fewer on each GPU on a host with more of them (--set "
               "topology.replicas_per_gpu=K), or a lower chunked-prefill-size")  # fmt: skip
    FIXES = f"{SMALLER}; or --no-hardware-check to try anyway"

    @property
    def share(self) -> float:
        """Of the GPU, each replica's static memory."""
        return self.budget / self.replicas

    def problems(self) -> list[str]:
        return [f"replica {p} of a GPU: {problem}" for p, plan in enumerate(self.plans) for problem in plan.problems()]

    def summary(self) -> str:
        taken = self.fraction_source if self.budget == self.fraction else f"{self.fraction_source} {self.fraction:g}, less their runtime"
        if self.gpu is None:
            split = f"{self.budget:g} of it ({taken}), {self.share:.4g} each"
        else:
            split = (f"{self.budget:.4g} of its {self.gpu / GIB:.0f} GiB ({taken}), {self.share:.4g} = {self.share * self.gpu / GIB:.1f} "
                     f"GiB each, the other {(1 - self.budget) * self.gpu / GIB:.1f} GiB for their runtime ({self.reserve / GIB:.1f} "
                     f"GiB each by SGLang's estimate)")  # fmt: skip
        order = ", ".join(f"{f:g}" for f in self.fractions)
        return (f"{self.replicas} replicas share each GPU: {split}; started one after another, each is given "
                f"mem-fraction-static of the memory free at its start (SGLang's measure): {order}")

    def plan_lines(self) -> list[str]:
        """Each replica's pools on a GPU, at the least free memory it can meet at its start."""
        return [f"replica {p} of a GPU, {plan.fraction:g} of at least {plan.gpu / GIB:.1f} GiB free: {plan.pools()}"
                for p, plan in enumerate(self.plans)]  # fmt: skip


def share_gpu(replicas: int, server_args: dict[str, Any], gpu: int | None,
              checkpoint: tuple[ModelMemory, int] | None = None) -> SharedGpu:  # fmt: skip
    """`replicas` servers on one GPU of `gpu` bytes (None: not known here): what one server would take (the
    recipe's mem-fraction-static, else SGLang's default), less what keeps each its runtime reserve, split
    evenly. LaunchError where neither the fraction nor the GPU's size is known."""
    if server_args.get("mem-fraction-static") is not None:
        fraction, source = float(server_args["mem-fraction-static"]), "the recipe's mem-fraction-static"
    elif gpu:
        fraction, source = _estimated_fraction(gpu, server_args), "SGLang's default for one server, estimated"
    else:
        raise LaunchError(f"{replicas} replicas sharing a GPU split what one server would take, which needs the "
                          "recipe's mem-fraction-static or the GPU's size",
                          hint="--set mem-fraction-static=F, set hardware.min_memory_gib, or plan on the GPU host")  # fmt: skip
    reserve = runtime_reserve(server_args)
    budget = fraction if gpu is None else min(fraction, 1 - replicas * reserve / gpu)
    if budget <= 0:
        raise LaunchError(f"{replicas} replicas cannot share a GPU of {gpu / GIB:.0f} GiB: their runtime ({replicas} × "
                          f"{reserve / GIB:.1f} GiB by SGLang's estimate) leaves nothing for weights and caches",
                          hint=SharedGpu.SMALLER)  # fmt: skip
    share = budget / replicas
    fractions, free = [], 1.0  # free: of the GPU, what the replicas started before leave
    for _ in range(replicas):
        fractions.append(math.floor(round(share / free, 9) * 10**4) / 10**4)  # rounded down: none takes more than its share
        free -= fractions[-1] * free
    plans: tuple[MemoryPlan, ...] = ()
    if gpu and checkpoint:
        held = int(share * gpu) + reserve  # by each replica started before it, at most
        plans = tuple(plan(*checkpoint, gpu - p * held, {**server_args, "mem-fraction-static": f}) for p, f in enumerate(fractions))
    return SharedGpu(replicas, fraction, source, budget, tuple(fractions), gpu, reserve, plans)


def require_fit(memory: MemoryPlan | SharedGpu, recipe_name: str) -> None:
    """LaunchError naming the numbers and the settings that change them, where the plan cannot serve."""
    problems = memory.problems()
    if not problems:
        return
    subject = f"{memory.replicas} replicas of recipe {recipe_name} do" if isinstance(memory, SharedGpu) else f"recipe {recipe_name} does"
    raise LaunchError(f"{subject} not fit one GPU: {'; '.join(problems)}\n  plan: {memory.summary()}", hint=memory.FIXES)


def draft_model_path_args(server_args: dict[str, Any], model_path: str) -> tuple[str, ...]:
    """`--speculative-draft-model-path MODEL` where the draft is the checkpoint's own MTP layer, so that
    SGLang budgets the draft's KV pool inside mem-fraction-static (see the module docstring)."""
    if drafts_with_its_mtp_head(server_args) and not server_args.get("speculative-draft-model-path"):
        return ("--speculative-draft-model-path", model_path)
    return ()

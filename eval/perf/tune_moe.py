"""Fused-MoE Triton configs for the Qwen3.5 MoE shapes, tuned the way SGLang tunes them, and the speed-up
over SGLang's default config measured in the same run.

    python -m eval.perf.tune_moe [--shape qwen3.5-35b-a3b] [--dtypes bf16,int8_w8a8] [--fse on,off]
                            [--batch-sizes 1,2,4,...] [--jobs 16] [--out DIR]

SGLang's procedure (benchmark/kernels/fused_moe_triton/tuning_fused_moe_triton.py in its source tree, not
in the wheel): for each batch size, run SGLang's own fused MoE kernel (`fused_experts`) once per config of
a search space under `override_config`, time it as CUDA-graph replays, keep the fastest, and save the map
batch size -> config under SGLang's `get_config_file_name`. Written to `sglang_ext/moe_configs/configs/
triton_<version>/`, where the server picks them up (`sglang_ext.moe_configs`).

Where this differs, each to fit a GPU lease of minutes rather than hours:
- the search space is SGLang's CUDA one narrowed per batch size (`search_space`): a BLOCK_SIZE_M block
  holds rows of one expert, so blocks far larger than the tokens an expert receives only pad;
- Triton compiles every config first in `--jobs` worker processes (its on-disk cache), then one process
  times them, so timing never waits on the compiler;
- with the shared expert fused (E+1 slots) every token routes to the shared slot plus top-k of the routed
  ones, as `Qwen2MoeSparseMoeBlock` does when serving (SGLang's script routes top-k over all E+1).
Batch sizes beyond the tuned ones keep SGLang's default config in the file, so prefill is unchanged.

Prints per file and batch size the tuned and default kernel times and their ratio; tune_moe.json holds them
for every file finished so far.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from sglang_ext.fixtures.model_config import SHAPES
from sglang_ext.moe_configs import TUNED_ROOT

DTYPES = ("bf16", "int8_w8a8")  # the fused-MoE kernels of the BF16 and Quark W8A8 INT8 formats
DECODE_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)  # SGLang takes the nearest size in between
# SGLang's default grid above the tuned range: files keep its default config there.
PREFILL_BATCHES = (512, 1024, 1536, 2048, 3072, 4096)


@dataclass(frozen=True)
class MoeShape:
    experts: int  # kernel slots: routed, plus one with the shared expert fused
    intermediate: int  # N of SGLang's file names: w2's input size per GPU
    hidden: int
    top_k: int  # slots per token, the shared one included
    fused_shared: bool


def moe_shape(shape: str, fse: bool) -> MoeShape:
    text = SHAPES[shape].text
    if fse and text["shared_expert_intermediate_size"] != text["moe_intermediate_size"]:
        raise ValueError(f"{shape}: the shared expert's width differs from the routed experts'; it cannot be fused")
    return MoeShape(text["num_experts"] + fse, text["moe_intermediate_size"], text["hidden_size"],
                    text["num_experts_per_tok"] + fse, fse)  # fmt: skip


def search_space(batch: int, shape: MoeShape) -> list[dict[str, int]]:
    """SGLang's CUDA search space (BLOCK_SIZE_K 64-256, BLOCK_SIZE_N 32-256, warps 4/8), narrowed where it
    cannot matter at decode sizes: BLOCK_SIZE_M to the two smallest powers of two that hold the rows one
    expert gets on average; GROUP_SIZE_M (the order of M-blocks) to 1 until a batch has several blocks per
    expert, then also 16; num_stages to 2-4 (5 stages only pays on long K loops)."""
    rows_per_expert = max(1.0, batch * shape.top_k / shape.experts)
    smallest = next(m for m in (16, 32, 64, 128, 256) if m >= min(rows_per_expert, 256))
    block_m = [m for m in (16, 32, 64, 128, 256) if smallest <= m <= 2 * smallest]
    groups = (1,) if rows_per_expert <= 16 else (1, 16)
    return [
        {"BLOCK_SIZE_M": m, "BLOCK_SIZE_N": n, "BLOCK_SIZE_K": k, "GROUP_SIZE_M": group, "num_warps": warps,
         "num_stages": stages}
        for stages in (2, 3, 4) for m in block_m for k in (64, 128, 256) for n in (32, 64, 128, 256)
        for warps in (4, 8) for group in groups
    ]  # fmt: skip


def config_file(shape: MoeShape, dtype: str) -> str:
    """SGLang's name for the config file of this kernel (its lookup key)."""
    from sglang.srt.layers.moe.moe_runner.triton_utils.fused_moe_triton_config import get_config_file_name

    int8 = dtype == "int8_w8a8"
    return get_config_file_name(shape.experts, shape.intermediate, dtype if int8 else None, None, per_channel_quant=int8)


class Kernel:
    """SGLang's fused MoE for one shape and dtype on random weights with valid scales, and its timing."""

    def __init__(self, shape: MoeShape, dtype: str, seed: int = 0) -> None:
        self.shape, self.dtype = shape, dtype
        g = torch.Generator(device="cuda").manual_seed(seed)
        e, n, h = shape.experts, shape.intermediate, shape.hidden
        if dtype == "int8_w8a8":
            self.w1 = torch.randint(-127, 128, (e, 2 * n, h), generator=g, device="cuda", dtype=torch.int8)
            self.w2 = torch.randint(-127, 128, (e, h, n), generator=g, device="cuda", dtype=torch.int8)
            # per-channel float32 scales [E, out, 1], the layout the Quark INT8 MoE scheme hands the kernel
            self.w1_scale = torch.rand(e, 2 * n, 1, generator=g, device="cuda") * 1e-3 + 1e-4
            self.w2_scale = torch.rand(e, h, 1, generator=g, device="cuda") * 1e-3 + 1e-4
        else:
            self.w1 = (torch.randn(e, 2 * n, h, generator=g, device="cuda") * h**-0.5).to(torch.bfloat16)
            self.w2 = (torch.randn(e, h, n, generator=g, device="cuda") * n**-0.5).to(torch.bfloat16)
            self.w1_scale = self.w2_scale = None
        self.generator = g

    def inputs(self, batch: int):
        from sglang.srt.layers.moe.topk import StandardTopKOutput

        shape = self.shape
        routed = shape.experts - shape.fused_shared
        logits = torch.randn(batch, routed, generator=self.generator, device="cuda")
        weights, ids = logits.softmax(-1).topk(shape.top_k - shape.fused_shared)
        if shape.fused_shared:  # every token also takes the shared slot, with its sigmoid gate
            ids = torch.cat([ids, torch.full((batch, 1), routed, device="cuda", dtype=ids.dtype)], 1)
            weights = torch.cat([weights, torch.rand(batch, 1, generator=self.generator, device="cuda")], 1)
        x = torch.randn(batch, shape.hidden, generator=self.generator, device="cuda").to(torch.bfloat16)
        return x, StandardTopKOutput(weights, ids.to(torch.int32), logits)

    def run(self, x, topk, config: dict | None) -> None:
        from sglang.srt.layers.moe import MoeRunnerConfig
        from sglang.srt.layers.moe.moe_runner.triton_utils import fused_experts, override_config

        int8 = self.dtype == "int8_w8a8"
        # In place, as SGLang's tuner runs it: the out-of-place path allocates its output from the tensor-
        # parallel group's symmetric memory pool, which needs an initialised process group.
        with override_config(config):
            fused_experts(x, self.w1, self.w2, topk, MoeRunnerConfig(inplace=True), use_int8_w8a8=int8,
                          per_channel_quant=int8, w1_scale=self.w1_scale, w2_scale=self.w2_scale)  # fmt: skip

    def microseconds(self, batch: int, config: dict | None, replays: int = 20) -> float:
        """Mean time of one kernel call: a CUDA graph of 10 calls, warmed, replayed `replays` times (SGLang's
        scheme). `config` None: SGLang's own choice (its default where no file matches)."""
        x, topk = self.inputs(batch)
        self.run(x, topk, config)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(10):
                self.run(x, topk, config)
        for _ in range(3):
            graph.replay()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(replays):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
        graph.reset()
        return start.elapsed_time(end) * 1e3 / (replays * 10)


def default_config(shape: MoeShape, dtype: str, batch: int) -> dict[str, int]:
    from sglang.srt.layers.moe.moe_runner.triton_utils.fused_moe_triton_config import get_default_config

    return get_default_config(batch, shape.experts, shape.intermediate, shape.hidden, shape.top_k,
                              dtype if dtype == "int8_w8a8" else None, False, None)  # fmt: skip


def _compile_worker(shape: MoeShape, dtype: str, work: list[tuple[int, dict]], failed: list) -> None:
    """Runs each (batch, config) once so Triton's disk cache holds every kernel the timing will need."""
    from sglang.srt.runtime_context import get_context

    with get_context().override_server_args():
        kernel = Kernel(shape, dtype)
        for batch, config in work:
            try:
                kernel.run(*kernel.inputs(batch), config)
            except Exception:  # too much shared memory etc.: SGLang's tuner skips such configs too
                failed.append((batch, json.dumps(config, sort_keys=True)))


def compile_all(shape: MoeShape, dtype: str, work: list[tuple[int, dict]], jobs: int) -> set[tuple[int, str]]:
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        failed = manager.list()
        workers = [context.Process(target=_compile_worker, args=(shape, dtype, work[i::jobs], failed)) for i in range(jobs)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        return set(failed)


@dataclass
class Row:
    file: str
    batch: int
    tuned_us: float
    default_us: float
    speedup: float
    config: dict


def tune_file(shape: MoeShape, dtype: str, batches: list[int], jobs: int) -> tuple[dict[int, dict], list[Row]]:
    from rich.progress import track
    from sglang.srt.runtime_context import get_context

    work = [(batch, config) for batch in batches for config in search_space(batch, shape)]
    started = time.perf_counter()
    broken = compile_all(shape, dtype, work, jobs)
    name = config_file(shape, dtype)
    print(f"{name}: compiled {len(work)} (batch, config) pairs in {time.perf_counter() - started:.0f} s, "
          f"{len(broken)} unusable", flush=True)  # fmt: skip
    best: dict[int, dict] = {}
    rows = []
    with get_context().override_server_args():
        kernel = Kernel(shape, dtype)
        for batch in track(batches, description=f"timing {name[:40]}"):
            timed = []
            for config in search_space(batch, shape):
                if (batch, json.dumps(config, sort_keys=True)) in broken:
                    continue
                try:
                    timed.append((kernel.microseconds(batch, config), config))
                except Exception as error:  # as in the compile pass: an unusable config is skipped
                    print(f"batch {batch}: skipped {config}: {type(error).__name__}", flush=True)
            tuned_us, best[batch] = min(timed, key=lambda pair: pair[0])
            default_us = kernel.microseconds(batch, default_config(shape, dtype, batch))
            rows.append(Row(name, batch, tuned_us, default_us, default_us / tuned_us, best[batch]))
        for batch in PREFILL_BATCHES:  # SGLang's default above the tuned range (needs its server-args context)
            best.setdefault(batch, default_config(shape, dtype, batch))
    return best, rows


def write_config(best: dict[int, dict], shape: MoeShape, dtype: str, out: Path) -> Path:
    import triton

    configs = dict(sorted(best.items()))
    path = out / "configs" / f"triton_{triton.__version__.replace('.', '_')}" / config_file(shape, dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({str(batch): config for batch, config in configs.items()}, indent=4) + "\n")
    return path


def print_table(rows: list[Row]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="fused MoE kernel: tuned vs SGLang default config (µs per call, CUDA graph)")
    for column in ("file", "batch", "default µs", "tuned µs", "speed-up", "tuned config (M,N,K,G,warps,stages)"):
        table.add_column(column, justify="right")
    for r in rows:
        c = r.config
        table.add_row(r.file.split(",device_name")[0], str(r.batch), f"{r.default_us:.1f}", f"{r.tuned_us:.1f}",
                      f"{r.speedup:.2f}×", ",".join(str(c[k]) for k in ("BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K",
                      "GROUP_SIZE_M", "num_warps", "num_stages")))  # fmt: skip
    Console(width=150).print(table)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.perf.tune_moe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="qwen3.5-35b-a3b", choices=list(SHAPES))
    parser.add_argument("--dtypes", default=",".join(DTYPES), help=f"comma-separated, of {', '.join(DTYPES)}")
    parser.add_argument("--fse", default="on,off", help="on, off or on,off: with the shared expert fused (E+1)")
    parser.add_argument("--batch-sizes", default=",".join(map(str, DECODE_BATCHES)))
    parser.add_argument("--jobs", type=int, default=min(16, os.cpu_count() or 1), help="compile processes")
    parser.add_argument("--configs-out", type=Path, default=TUNED_ROOT, help="where configs/triton_*/ go")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "runs")) / "tune_moe")
    args = parser.parse_args()
    dtypes = args.dtypes.split(",")
    if bad := [d for d in dtypes if d not in DTYPES]:
        parser.error(f"--dtypes {bad[0]}: not one of {', '.join(DTYPES)}")
    fse = {"on": True, "off": False}
    if bad := [f for f in args.fse.split(",") if f not in fse]:
        parser.error(f"--fse {bad[0]}: expected on, off or on,off")
    batches = sorted({int(b) for b in args.batch_sizes.split(",")})
    if not torch.cuda.is_available():
        print("error: tuning needs a CUDA GPU (and SGLang 0.5.17 importable); nothing was tuned\n"
              "fix: run it on the GPU machine, e.g. bash tests/gpu/run_on_device.sh --run python -m eval.perf.tune_moe",
              file=sys.stderr)  # fmt: skip
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"device": torch.cuda.get_device_name(), "shape": args.shape, "files": [], "rows": []}
    for fused in (fse[f] for f in args.fse.split(",")):
        shape = moe_shape(args.shape, fused)
        for dtype in dtypes:
            best, file_rows = tune_file(shape, dtype, batches, args.jobs)
            report["files"].append(str(write_config(best, shape, dtype, args.configs_out)))
            report["rows"] += [asdict(r) for r in file_rows]
            # after every file: a run cut short (a GPU lease ending mid-file) keeps the timings of those it finished
            (args.out / "tune_moe.json").write_text(json.dumps(report, indent=2) + "\n")
            print(f"wrote {report['files'][-1]}", flush=True)
            print_table(file_rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())

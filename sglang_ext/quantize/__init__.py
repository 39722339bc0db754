"""Quantize a local BF16 Qwen3.5/3.6-MoE checkpoint into one of the formats of docs/formats.md.

    quantize(SRC, OUT, "quark-mxfp4-fse")      # or python -m sglang_ext.quantize SRC OUT --to quark-mxfp4-fse

The output has the layout, tensor names, quantization config and exclusion lists of `sglang_ext.formats`
(the same encoders the fixtures are written with), SRC's tokenizer, processor and chat template files, and
`sglang_ext_quantize.json` saying what was done from what. It streams: one Linear (or one expert) is in
memory at a time, whatever the model's size, and finished shards survive a crash: a rerun of the same job
into the same OUT checks them by size and sha256 and writes only the rest, byte for byte as a run without
the crash would have.
"""

import errno
import resource
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tqdm import tqdm

from sglang_ext.codecs.mxfp4 import ScaleRule
from sglang_ext.fixtures import STAMP_FILE
from sglang_ext.fixtures.model_config import write_json
from sglang_ext.formats import encoders
from sglang_ext.formats.check import CONFIG_FILE, side_files
from sglang_ext.formats.shards import DEFAULT_MAX_SHARD_BYTES, ShardPlan, Unit, file_sha256, plan_shards, write_index, write_shard
from sglang_ext.quantize.manifest import PROGRESS_FILE, RECORD_FILE, Job, Progress, Record, ShardRecord
from sglang_ext.quantize.manifest import make_job, read_progress, write_atomic
from sglang_ext.quantize.source import QuantizeError, Source

SCALE_RULES = {"max": ScaleRule.MINMAX, "mse": ScaleRule.MSE3}

__all__ = ["QuantizeError", "Record", "quantize"]


def _options_record(options: encoders.Options) -> dict[str, Any]:
    scales = next(name for name, rule in SCALE_RULES.items() if rule is options.scales)
    return {"scales": scales, "fuse_shared_expert": options.fuse_shared_expert, "input_amax": options.input_amax}


def peak_rss_bytes() -> int:
    """This process's peak resident set: VmHWM, which starts afresh at exec (ru_maxrss keeps the peak of the
    process that forked it, a whole pytest run for a subprocess)."""
    try:
        status = Path("/proc/self/status").read_text(encoding="ascii")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    kib = next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))
    return int(kib) * 1024


def _finished_shards(out: Path, job: Job) -> dict[str, ShardRecord]:
    """The shards of an earlier run of `job` in `out` that are still intact; {} for a new or empty `out`."""
    blocking = next((p for p in (out, *out.parents) if p.exists()), None)
    if blocking is not None and not blocking.is_dir():
        where = f"{out} is" if blocking == out else f"{out}: its parent {blocking} is"
        raise QuantizeError(f"{where} a file, not a directory", "give a new or empty directory as OUT")
    if not out.exists() or not any(out.iterdir()):
        out.mkdir(parents=True, exist_ok=True)
        return {}
    previous = read_progress(out / PROGRESS_FILE) or read_progress(out / RECORD_FILE)
    if previous is None:
        raise QuantizeError(f"{out} is not empty and holds no run of this tool to resume",
                            "give a new or empty directory as OUT, or the OUT of an unfinished run of the same command")  # fmt: skip
    differences = previous.job.differences(job)
    if differences:
        raise QuantizeError(f"{out} holds a run of another job ({', '.join(differences)} differ)",
                            "give a new or empty directory as OUT, or the same source and options to resume that run")  # fmt: skip
    return {
        record.name: record
        for record in previous.shards
        if (out / record.name).is_file()
        and (out / record.name).stat().st_size == record.size
        and file_sha256(out / record.name) == record.sha256
    }


def _check_free_space(out: Path, needed: int) -> None:
    free = shutil.disk_usage(out).free
    if needed > free:
        raise QuantizeError(f"{out}: {free / 1e9:.1f} GB free, the output needs {needed / 1e9:.1f} GB more",
                            "free space, or give an OUT on another disk")  # fmt: skip


def quantize(
    src: Path,
    out: Path,
    fmt: str,
    options: encoders.Options = encoders.Options(),
    *,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    show_progress: bool = True,
) -> Record:
    """Quantize BF16 checkpoint `src` into directory `out` (new, empty, or an unfinished run of the same job).
    Raises QuantizeError for anything the user can fix; the record is also written to `out`."""
    started = time.perf_counter()
    src, out = Path(src), Path(out)
    try:
        encoder = encoders.encoder(fmt, options)
    except ValueError as error:  # NeedsCalibration included
        raise QuantizeError(str(error), "python -m sglang_ext.quantize --help says which options each format takes") from None
    source = Source(src)
    plan = encoder.plan(source.config, source.mtp_fused_experts)
    shards = plan_shards(encoder.units(plan.tensors), max_shard_bytes)
    job = make_job(src, source.files, fmt, _options_record(options), max_shard_bytes)
    finished = _finished_shards(out, job)
    _check_free_space(out, sum(shard.nbytes for shard in shards if shard.name not in finished))
    with _no_space_is_one_line(out):
        return _write(src, out, source, encoder, plan, shards, job, finished, show_progress, started)


@contextmanager
def _no_space_is_one_line(out: Path) -> Iterator[None]:
    try:
        yield
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        free = shutil.disk_usage(out).free / 1e9
        raise QuantizeError(f"{out}: no space left on device ({free:.1f} GB free)",
                            "free space, then rerun the same command: finished shards are kept") from None  # fmt: skip


def _write(src: Path, out: Path, source: Source, encoder: encoders.Encoder, plan: encoders.Plan, shards: list[ShardPlan],
           job: Job, finished: dict[str, ShardRecord], show_progress: bool, started: float) -> Record:  # fmt: skip
    """Write the shards `finished` lacks, then the index, configs, side files and the record."""
    progress = Progress(job=job, shards=list(finished.values()))
    write_atomic(out / PROGRESS_FILE, progress)

    def read_bytes(unit: Unit) -> int:
        first = unit[0]
        return source.tensor_nbytes(f"{first.module}.weight" if encoder.is_quantized(first) else first.name)

    shard_bytes = {shard.name: sum(read_bytes(unit) for unit in shard.units) for shard in shards}
    bar = tqdm(total=sum(shard_bytes.values()), initial=sum(shard_bytes[name] for name in finished), unit="B",
               unit_scale=True, unit_divisor=1024, desc=f"BF16 -> {encoder.name}", disable=not show_progress)  # fmt: skip
    try:
        for shard in shards:
            if shard.name in finished:
                continue
            bar.set_postfix_str(shard.name)
            size, sha256 = write_shard(out / shard.name, shard, lambda unit: encoder.unit_tensors(unit, source.tensor),
                                       lambda unit: bar.update(read_bytes(unit)))  # fmt: skip
            progress.shards.append(ShardRecord(name=shard.name, size=size, sha256=sha256))
            write_atomic(out / PROGRESS_FILE, progress)
    finally:
        bar.close()
        source.close()

    write_index(out, shards)
    write_json(out / CONFIG_FILE, {**source.config, "quantization_config": plan.quantization_config})
    for name, content in plan.extra_files.items():
        write_json(out / name, content)
    for path in side_files(src, skip=(STAMP_FILE, PROGRESS_FILE, RECORD_FILE)):
        shutil.copyfile(path, out / path.name)
    order = {shard.name: index for index, shard in enumerate(shards)}
    record = Record(
        job=job,
        shards=sorted(progress.shards, key=lambda r: order[r.name]),
        tensors=len(plan.tensors),
        quantized_modules=sum(1 for unit in encoder.units(plan.tensors) if encoder.is_quantized(unit[0])),
        excluded_modules=len(plan.exclude),
        source_bytes=sum(shard_bytes.values()),
        output_bytes=sum(shard.nbytes for shard in shards),
        seconds=round(time.perf_counter() - started, 3),
        peak_rss_bytes=peak_rss_bytes(),
    )
    write_atomic(out / RECORD_FILE, record)
    (out / PROGRESS_FILE).unlink()
    return record

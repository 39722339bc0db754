"""Where the small-M GEMV beat SGLang's own path, per GPU model, as `python -m eval.perf.bench_gemv --wins`
measured it: `gemv_wins.json` beside this file maps a GPU name (``torch.cuda.get_device_name``) to, per
kind (``DTYPES``), the weight shapes ``"NxK"`` and the token counts M at which the GEMV was faster by at least
``MARGIN``: ``bf16``, ``int8`` (on activations SGLang quantized), ``int8+quant`` (SGLang's INT8 linear whole,
its activation quantization included, against the GEMV that quantizes its own rows). With SGLANG_EXT_SMALL_M_GEMV=1, `sglang_ext.small_m_gemv` routes a linear to the
GEMV only at those points, so a GPU the file does not list keeps SGLang's path (=all routes by M alone).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path

WINS_FILE = Path(__file__).with_name("gemv_wins.json")
MARGIN = 1.03  # below this the two paths are within run-to-run noise of the benchmark; keep SGLang's
DTYPES = ("bf16", "int8", "int8+quant")

Point = tuple[str, int, int, int]  # (dtype, N, K, M)


def measured_wins(table: dict, gpu: str) -> frozenset[Point] | None:
    """The points where the GEMV won on `gpu`, or None where `gpu` was never measured."""
    entry = table.get(gpu)
    if entry is None:
        return None
    return frozenset((dtype, *map(int, shape.split("x")), m)
                     for dtype in DTYPES for shape, ms in entry.get(dtype, {}).items() for m in ms)  # fmt: skip


def load(gpu: str, path: Path = WINS_FILE) -> frozenset[Point] | None:
    return measured_wins(json.loads(path.read_text()), gpu)


def record(gpu: str, rows: Iterable, source: str, path: Path = WINS_FILE) -> dict:
    """Replace `gpu`'s entry of the file at `path` with the measured `rows` (bench_gemv's: dtype, n, k, m and
    speedup = SGLang's time over the GEMV's); other GPUs' entries are kept. Returns the new entry."""
    table = json.loads(path.read_text()) if path.exists() else {}
    slowest: dict[tuple[str, str], dict[int, float]] = {}  # a point measured twice (two model shapes) wins only if both did
    for row in rows:
        point = slowest.setdefault((row.dtype, f"{row.n}x{row.k}"), {})
        point[row.m] = min(point.get(row.m, math.inf), row.speedup)
    entry: dict = {"measured": source, **{dtype: {} for dtype in DTYPES}}
    for (dtype, shape), speedups in sorted(slowest.items()):
        entry[dtype][shape] = sorted(m for m, speedup in speedups.items() if speedup >= MARGIN)
    table[gpu] = entry
    path.write_text(json.dumps(dict(sorted(table.items())), indent=1) + "\n")
    return entry

"""Which phase a starting SGLang 0.5.17 server is in, read from its log, so that a user waiting minutes knows
what for. On a host's first start the prefill CUDA-graph capture dominates (about 470 s at a 397B per-GPU
shape on an H200, 27 s on the next start): each captured token count compiles its Triton kernels on first
use, and the compiled kernels are cached on the host (~/.triton), so only a fresh host pays it."""

from __future__ import annotations

import re

# Log markers in the order a server passes them, with what a person should read.
_PHASES = [
    (re.compile(r"Load weight begin"), "loading weights"),
    (re.compile(r"Load weight end.*type=(\w+)"), "loaded {0}"),
    (re.compile(r"(KV|Mamba) Cache is allocated"), "allocating the KV and DeltaNet state pools"),
    (re.compile(r"Capture target prefill CUDA graph begin"),
     "capturing prefill CUDA graphs (a host's first start compiles their kernels: minutes)"),
    (re.compile(r"Capture (\w+ \w+) CUDA graph begin"), "capturing {0} CUDA graphs"),
    (re.compile(r"Capture cuda graph begin|Capture CUDA graph begin"), "capturing decode CUDA graphs"),
    (re.compile(r"The server is fired up"), "warming up"),
]
_PROGRESS = re.compile(r"Capturing (?:num tokens|batches) \((?:num_tokens|bs)=\d+[^)]*\):\s+\d+%\|[^|]*\|\s*(\d+/\d+)")
_TIMINGS = re.compile(r"Engine startup timings \(s\): (.*)$", re.MULTILINE)


def phase(log_text: str) -> str | None:
    """The phase the latest marker in `log_text` opened, with the capture's progress (k/n) where shown."""
    latest, name = -1, None
    for pattern, label in _PHASES:
        for match in pattern.finditer(log_text):
            if match.start() > latest:
                latest, name = match.start(), label.format(*match.groups())
    if name is None:
        return None
    progress = _PROGRESS.findall(log_text[latest:])
    return f"{name} {progress[-1]}" if progress and "capturing" in name else name


def timings(log_text: str) -> str | None:
    """SGLang's own account of where the start-up went (seconds per phase), once it is ready."""
    found = _TIMINGS.findall(log_text)
    return found[-1].strip() if found else None

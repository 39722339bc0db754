"""Combinations of server options that SGLang refuses only once a server is starting, with an assertion deep in
`ServerArgs` (a bare traceback in the server log, minutes in for a large checkpoint). Checked here from the
recipe alone, so `--dry-run` and the launcher refuse first and say which option to change.

Each rule cites the check it mirrors: sglang/srt/server_args.py in SGLang 0.5.17, which 0.5.23 moved to
sglang/srt/arg_groups/mamba_hook.py. `RULES` says which release enforces which.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# SGLang's defaults for the options the rules read (ServerArgs fields; the same in 0.5.17 and 0.5.23).
DEFAULTS: dict[str, Any] = {"page-size": 1, "mamba-track-interval": 256, "mamba-radix-cache-strategy": "auto"}

Rule = Callable[[dict[str, Any]], str | None]


def _get(args: dict[str, Any], key: str) -> Any:
    return args.get(key, DEFAULTS.get(key))


def _no_buffer_pages(args: dict[str, Any]) -> str | None:
    # 0.5.17 server_args.py:5576 `_validate_mamba_no_buffer`, 0.5.23 mamba_hook.py:157: "no_buffer only supports page_size=1."
    if _get(args, "mamba-radix-cache-strategy") == "no_buffer" and _get(args, "page-size") not in (1, None):
        return (f"mamba-radix-cache-strategy no_buffer keeps one DeltaNet state per request and takes page-size 1 only, "
                f"not {_get(args, 'page-size')}: use extra_buffer (the card 001 setting) or page-size 1")  # fmt: skip
    return None


def _no_buffer_overlap(args: dict[str, Any]) -> str | None:
    # 0.5.17 server_args.py:5577-5579, 0.5.23 mamba_hook.py:158-160: "no_buffer do not support overlap schedule."
    if _get(args, "mamba-radix-cache-strategy") == "no_buffer" and not args.get("disable-overlap-schedule", False):
        return "mamba-radix-cache-strategy no_buffer needs disable-overlap-schedule: true (or use extra_buffer)"
    return None


def _extra_buffer_tracks_every_draft(args: dict[str, Any]) -> str | None:
    # 0.5.17 server_args.py:5605-5606, 0.5.23 mamba_hook.py:132-133: mamba_track_interval >= speculative_num_draft_tokens
    # under extra_buffer.
    drafts = args.get("speculative-num-draft-tokens")
    interval = _get(args, "mamba-track-interval")
    if _get(args, "mamba-radix-cache-strategy") in ("extra_buffer", "extra_buffer_lazy") and drafts and interval < drafts:
        return (f"mamba-track-interval {interval} is below speculative-num-draft-tokens {drafts}: the extra_buffer "
                "cache cannot checkpoint a verify step; raise mamba-track-interval")  # fmt: skip
    return None


def _extra_buffer_pages(args: dict[str, Any]) -> str | None:
    # 0.5.17 server_args.py:5607-5608, 0.5.23 mamba_hook.py:134-135: mamba_track_interval % page_size == 0 under extra_buffer.
    page, interval = _get(args, "page-size"), _get(args, "mamba-track-interval")
    if _get(args, "mamba-radix-cache-strategy") in ("extra_buffer", "extra_buffer_lazy") and page and interval % page:
        return f"mamba-track-interval {interval} must be a multiple of page-size {page} under extra_buffer"
    return None


def _lazy_buffer_dflash(args: dict[str, Any]) -> str | None:
    # 0.5.17 server_args.py:5599-5602: extra_buffer_lazy is refused with DFLASH; 0.5.23 allows it (mamba_hook.py:128-130:
    # DFLASH verifies through prepare_mamba_track_for_verify there).
    if _get(args, "mamba-radix-cache-strategy") == "extra_buffer_lazy" and str(args.get("speculative-algorithm", "")).upper() == "DFLASH":
        return "mamba-radix-cache-strategy extra_buffer_lazy does not work with speculative-algorithm DFLASH; use extra_buffer"
    return None


_BOTH = (_no_buffer_pages, _no_buffer_overlap, _extra_buffer_tracks_every_draft, _extra_buffer_pages)
RULES: dict[str, tuple[Rule, ...]] = {"0.5.17": (*_BOTH, _lazy_buffer_dflash), "0.5.23": _BOTH}


def violations(server_args: dict[str, Any], version: str) -> list[str]:
    """What SGLang `version` would refuse in this `server_args` mapping (recipe keys), one line each."""
    return [message for rule in RULES[version] if (message := rule(server_args))]

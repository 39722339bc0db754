"""Hypothesis strategies that corrupt structured input the way a bad download, a hand edit or a buggy exporter
does: one node of a JSON/YAML document replaced by a value of another type or size, deleted, or the whole
document swapped for something else; and raw bytes flipped or cut off."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import strategies as st

# Values a field may wrongly hold: every JSON type, sizes from negative through absurd, near-miss strings.
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63),
    st.sampled_from([0, 1, -1, 3, 7, 10**9, 10**12, 2**40]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["re:[", "*", "", "bf16", "fp4", "int8", "NVFP4", "quark", "modelopt", "compressed-tensors",
                     "full_attention", "linear_attention", "U8", "F8_E4M3", "BF16", "../../etc", "a\x00b"]),
)
JSON_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=8,
)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every location in a document: the keys of mappings and the indices of lists, depth first."""
    found = [prefix]
    if isinstance(node, dict):
        for key, child in node.items():
            found += _paths(child, (*prefix, key))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            found += _paths(child, (*prefix, index))
    return found


@st.composite
def corrupted(draw: st.DrawFn, document: Any) -> tuple[Any, str]:
    """(a damaged deep copy of `document`, what was done to it) — one node replaced or deleted."""
    damaged = copy.deepcopy(document)
    path = draw(st.sampled_from(_paths(damaged)))
    if not path:
        return draw(JSON_VALUES), "whole document replaced"
    parent = damaged
    for step in path[:-1]:
        parent = parent[step]
    if draw(st.booleans()) and isinstance(parent, dict):
        del parent[path[-1]]
        return damaged, f"deleted {'.'.join(map(str, path))}"
    parent[path[-1]] = draw(JSON_VALUES)
    return damaged, f"replaced {'.'.join(map(str, path))} with {parent[path[-1]]!r:.60}"


@st.composite
def damaged_bytes(draw: st.DrawFn, data: bytes, within: int) -> tuple[bytes, str]:
    """`data` with a few bytes among its first `within` overwritten, or cut short."""
    if draw(st.booleans()):
        cut = draw(st.integers(0, len(data) - 1))
        return data[:cut], f"truncated to {cut} bytes"
    damaged = bytearray(data)
    positions = draw(st.lists(st.integers(0, min(within, len(data)) - 1), min_size=1, max_size=4))
    for position in positions:
        damaged[position] = draw(st.integers(0, 255))
    return bytes(damaged), f"bytes {positions} overwritten"

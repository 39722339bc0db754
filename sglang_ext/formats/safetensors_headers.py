"""Read a checkpoint directory's tensor table from safetensors headers only: no tensor data is touched,
so a 400B checkpoint (hundreds of thousands of tensors in ~100 shards) is read in seconds.

Header layout (safetensors spec): 8-byte little-endian header length N, then N bytes of JSON mapping
each tensor name to {dtype, shape, data_offsets}, offsets relative to the end of the header.
"""

import json
import struct
from dataclasses import dataclass, replace
from pathlib import Path

INDEX_FILE = "model.safetensors.index.json"
# Far above any real header (a 400B shard's is a few MB), far below what a corrupt length would claim.
MAX_HEADER_BYTES = 100 * 1024 * 1024


@dataclass(frozen=True)
class StoredEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    file: str
    offset: int = 0  # where the tensor's bytes start in the file


class HeaderError(ValueError):
    """A weight file or index that cannot be read; the message names the file."""


def _is_index(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def read_header(path: Path) -> list[StoredEntry]:
    size = path.stat().st_size
    with path.open("rb") as file:
        prefix = file.read(8)
        if len(prefix) < 8:
            raise HeaderError(f"{path.name}: {size} bytes, too short for a safetensors header")
        (length,) = struct.unpack("<Q", prefix)
        if length > min(size - 8, MAX_HEADER_BYTES):
            raise HeaderError(f"{path.name}: header length {length} exceeds the file ({size} bytes): truncated or not safetensors")
        try:
            header = json.loads(file.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise HeaderError(f"{path.name}: header is not valid JSON ({error}): corrupt or not safetensors") from None
    if not isinstance(header, dict):
        raise HeaderError(f"{path.name}: header is a JSON {type(header).__name__}, not a mapping: corrupt or not safetensors")
    header.pop("__metadata__", None)
    data_size = size - 8 - length
    entries = []
    for name, info in header.items():
        try:
            start, end = info["data_offsets"]
            entry = StoredEntry(name, info["dtype"], tuple(info["shape"]), end - start, path.name)
        except (KeyError, TypeError, ValueError):
            raise HeaderError(f"{path.name}: header entry {name!r} lacks dtype/shape/data_offsets") from None
        if not (_is_index(start) and _is_index(end) and isinstance(entry.dtype, str)
                and all(_is_index(dim) for dim in entry.shape)):  # fmt: skip
            raise HeaderError(
                f"{path.name}: header entry {name!r}: dtype must be a string, shape and data_offsets non-negative "
                f"integers (dtype {entry.dtype!r:.40}, shape {info['shape']!r:.60}, data_offsets {info['data_offsets']!r:.60})"
            )
        if not 0 <= start <= end <= data_size:
            raise HeaderError(
                f"{path.name}: tensor {name!r} ends at byte {end} of {data_size} data bytes: the file is truncated"
            )
        entries.append(replace(entry, offset=8 + length + start))
    return entries


def read_checkpoint(directory: Path) -> list[StoredEntry]:
    """Every tensor of the checkpoint: the shards named by the index if there is one, else every
    `*.safetensors` file. Raises HeaderError for an unreadable file, a shard the index names that is
    missing, or a tensor whose shard disagrees with the index."""
    index_path = directory / INDEX_FILE
    if index_path.exists():
        try:
            weight_map: dict[str, str] = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
            raise HeaderError(f"{INDEX_FILE}: no readable weight_map ({error})") from None
        if not isinstance(weight_map, dict) or not all(isinstance(f, str) and f for f in weight_map.values()):
            raise HeaderError(f"{INDEX_FILE}: weight_map must map each tensor name to a shard file name")
        files = sorted(set(weight_map.values()))
        missing = [name for name in files if "\0" in name or not (directory / name).is_file()]
        if missing:
            raise HeaderError(f"{INDEX_FILE} names shards that are not in {directory}: {', '.join(missing)}")
    else:
        weight_map = {}
        files = sorted(path.name for path in directory.glob("*.safetensors"))
        if not files:
            raise HeaderError(f"no *.safetensors files in {directory}")
    try:
        entries = [entry for name in files for entry in read_header(directory / name)]
    except (OSError, ValueError) as error:
        if isinstance(error, HeaderError):
            raise
        raise HeaderError(f"cannot read the weight files of {directory}: {error}") from None
    seen: dict[str, str] = {}
    for entry in entries:
        if entry.name in seen:
            raise HeaderError(f"tensor {entry.name!r} is stored twice: in {seen[entry.name]} and {entry.file}")
        seen[entry.name] = entry.file
        if weight_map and weight_map.get(entry.name) != entry.file:
            raise HeaderError(
                f"{INDEX_FILE} maps {entry.name!r} to {weight_map.get(entry.name)}, but it is stored in {entry.file}"
            )
    absent = sorted(set(weight_map) - set(seen))
    if absent:
        raise HeaderError(f"{INDEX_FILE} lists {len(absent)} tensors no shard holds, e.g. {absent[0]!r}")
    return entries

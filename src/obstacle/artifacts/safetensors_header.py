"""Read a safetensors header without torch (the service validates uploads with this).

The format: 8 bytes little-endian header length N, N bytes of JSON, then the raw data.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from obstacle.errors import CheckpointError

# A header larger than this is not a checkpoint we would ever write.
MAX_HEADER_BYTES = 100 * 1024 * 1024

DTYPE_SIZES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "U16": 2,
    "U32": 4,
    "U64": 8,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    tensors: dict[str, TensorEntry]
    metadata: dict[str, str] = field(default_factory=dict)
    data_bytes: int = 0


def read_header(path: str | Path) -> SafetensorsHeader:
    """Parse and check the header of the safetensors file at ``path``."""
    p = Path(path)
    with p.open("rb") as handle:
        return read_header_bytes(handle, total_size=p.stat().st_size, name=str(p))


def read_header_bytes(handle: BinaryIO, *, total_size: int, name: str) -> SafetensorsHeader:
    """Parse the header from an open binary stream of ``total_size`` bytes.

    Checks that every tensor's byte range matches its dtype and shape, that the ranges tile the
    data section exactly, and that the file is not truncated.
    """
    head = handle.read(8)
    if len(head) != 8:
        raise CheckpointError(
            f"{name}: a safetensors file starts with an 8-byte header length; got {len(head)} bytes. "
            "The file is truncated or not safetensors: save it with safetensors or obstacle.save_checkpoint."
        )
    (n,) = struct.unpack("<Q", head)
    if n > MAX_HEADER_BYTES or 8 + n > total_size:
        raise CheckpointError(
            f"{name}: safetensors header length {n} is impossible for a file of {total_size} bytes. "
            "The file is truncated or not safetensors; upload the complete file."
        )
    raw = handle.read(n)
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"{name}: the safetensors header is not valid UTF-8 JSON ({exc}). "
            "The file is corrupt or not safetensors; write it again with safetensors."
        ) from None
    if not isinstance(doc, dict):
        raise CheckpointError(
            f"{name}: the safetensors header must be a JSON object; got {type(doc).__name__}."
        )
    metadata_raw = doc.pop("__metadata__", {}) or {}
    if not isinstance(metadata_raw, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata_raw.items()
    ):
        raise CheckpointError(f"{name}: safetensors __metadata__ must map strings to strings.")
    data_bytes = total_size - 8 - n
    tensors: dict[str, TensorEntry] = {}
    for key, spec in doc.items():
        tensors[key] = _entry(name, key, spec, data_bytes)
    spans = sorted((t.begin, t.end) for t in tensors.values())
    position = 0
    for begin, end in spans:
        if begin != position:
            raise CheckpointError(
                f"{name}: safetensors data offsets overlap or leave a gap at byte {position}. "
                "The file is corrupt; write it again with safetensors."
            )
        position = end
    if position != data_bytes:
        raise CheckpointError(
            f"{name}: the header describes {position} data bytes but the file holds {data_bytes}. "
            "The file is truncated or has trailing bytes; upload the complete file."
        )
    return SafetensorsHeader(tensors=tensors, metadata=dict(metadata_raw), data_bytes=data_bytes)


def _entry(name: str, key: str, spec: Any, data_bytes: int) -> TensorEntry:
    if not isinstance(spec, dict):
        raise CheckpointError(f"{name}: tensor {key!r} has a malformed header entry.")
    dtype = spec.get("dtype")
    shape = spec.get("shape")
    offsets = spec.get("data_offsets")
    if dtype not in DTYPE_SIZES:
        raise CheckpointError(f"{name}: tensor {key!r} has unknown dtype {dtype!r}.")
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise CheckpointError(f"{name}: tensor {key!r} has a malformed shape {shape!r}.")
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(isinstance(o, int) for o in offsets)
        and 0 <= offsets[0] <= offsets[1] <= data_bytes
    ):
        raise CheckpointError(
            f"{name}: tensor {key!r} has data offsets {offsets!r} outside the {data_bytes}-byte data "
            "section. The file is truncated or corrupt; upload the complete file."
        )
    expected = math.prod(shape) * DTYPE_SIZES[dtype]
    if offsets[1] - offsets[0] != expected:
        raise CheckpointError(
            f"{name}: tensor {key!r} of dtype {dtype} and shape {shape} needs {expected} bytes; "
            f"its offsets span {offsets[1] - offsets[0]}. The file is corrupt."
        )
    return TensorEntry(key, dtype, tuple(shape), offsets[0], offsets[1])

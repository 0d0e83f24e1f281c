"""Read a safetensors header without torch (the service validates uploads with this).

The format: 8 bytes little-endian header length N, N bytes of JSON, then the raw data.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from obstacle.artifacts.untrusted_json import JsonLimits, parse_untrusted_json
from obstacle.errors import CheckpointError

# A header larger than this is not a checkpoint we would ever write (a few hundred bytes per
# tensor: 16 MiB is some 50,000 tensors). Refused from the 8-byte length, before reading it.
MAX_HEADER_BYTES = 16 * 2**20
# obstacle.save_checkpoint writes a few hundred characters of metadata (the optimizer's
# hyperparameters included); keys and values together.
MAX_METADATA_BYTES = 1 * 2**20
MAX_DIMS = 64
_MAX_ELEMENTS = 2**63 - 1
# The header's size is checked from its 8-byte length against the caller's limit first.
_HEADER_JSON = JsonLimits(max_bytes=2**63, max_depth=8, max_number_chars=20, max_int=2**64 - 1)

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


def read_header_bytes(
    handle: BinaryIO,
    *,
    total_size: int,
    name: str,
    max_header_bytes: int = MAX_HEADER_BYTES,
    max_metadata_bytes: int = MAX_METADATA_BYTES,
) -> SafetensorsHeader:
    """Parse the header from an open binary stream of ``total_size`` bytes.

    The 8-byte length is checked against ``max_header_bytes`` and the file size before a byte of
    the header is read; the JSON goes through ``parse_untrusted_json``; the metadata (keys and
    values together) is at most ``max_metadata_bytes``. Checks that every tensor's byte range
    matches its dtype and shape, that the ranges tile the data section exactly, and that the file
    is not truncated: what safetensors (the workers' reader) checks, so what passes here loads
    there.
    """
    head = handle.read(8)
    if len(head) != 8:
        raise CheckpointError(
            f"{name}: a safetensors file starts with an 8-byte header length; got {len(head)} bytes. "
            "The file is truncated or not safetensors: save it with safetensors or obstacle.save_checkpoint."
        )
    (n,) = struct.unpack("<Q", head)
    if n > max_header_bytes:
        raise CheckpointError(
            f"{name}: the safetensors header length is {n} bytes, over the limit of "
            f"{max_header_bytes} bytes (a checkpoint's header is a few kilobytes per tensor). "
            "Check that the file is a safetensors checkpoint written by obstacle.save_checkpoint."
        )
    if 8 + n > total_size:
        raise CheckpointError(
            f"{name}: safetensors header length {n} is impossible for a file of {total_size} bytes. "
            "The file is truncated or not safetensors; upload the complete file."
        )
    raw = handle.read(n)
    if len(raw) != n:
        raise CheckpointError(
            f"{name}: the safetensors header should be {n} bytes; only {len(raw)} could be read. "
            "The file is truncated; upload the complete file."
        )
    if raw[:1] != b"{":
        raise CheckpointError(
            f"{name}: a safetensors header is a JSON object starting with '{{'; it starts with "
            f"{raw[:8]!r}. The file is corrupt or not safetensors; write it again with safetensors."
        )
    doc = parse_untrusted_json(
        raw,
        what=f"{name}: the safetensors header",
        error=CheckpointError,
        fix="The file is corrupt or not safetensors; write it again with safetensors",
        limits=_HEADER_JSON,
    )
    if not isinstance(doc, dict):
        raise CheckpointError(
            f"{name}: the safetensors header must be a JSON object; got {type(doc).__name__}."
        )
    metadata_raw = doc.pop("__metadata__", {}) or {}
    if not isinstance(metadata_raw, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata_raw.items()
    ):
        raise CheckpointError(
            f"{name}: the safetensors __metadata__ must map strings to strings; got "
            f"{str(metadata_raw)[:80]}. Write the file again with safetensors."
        )
    metadata_bytes = sum(len(k) + len(v) for k, v in metadata_raw.items())
    if metadata_bytes > max_metadata_bytes:
        raise CheckpointError(
            f"{name}: the safetensors __metadata__ holds {metadata_bytes} characters, over the "
            f"limit of {max_metadata_bytes} (obstacle.save_checkpoint writes a few hundred). "
            "Save the checkpoint with obstacle.save_checkpoint without extra metadata."
        )
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
        raise CheckpointError(
            f"{name}: tensor {key[:80]!r} has the header entry {str(spec)[:80]}, not an object "
            "with dtype, shape and data_offsets. The file is corrupt; write it again with safetensors."
        )
    dtype = spec.get("dtype")
    shape = spec.get("shape")
    offsets = spec.get("data_offsets")
    if dtype not in DTYPE_SIZES:
        raise CheckpointError(
            f"{name}: tensor {key[:80]!r} has the dtype {str(dtype)[:40]!r}, not one of "
            f"{sorted(DTYPE_SIZES)}. Save the tensor in one of those dtypes."
        )
    if not (
        isinstance(shape, list)
        and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        and len(shape) <= MAX_DIMS
    ):
        raise CheckpointError(
            f"{name}: tensor {key[:80]!r} has the shape {str(shape)[:80]}; a shape is a list of "
            f"at most {MAX_DIMS} integers >= 0. The file is corrupt; write it again with safetensors."
        )
    elements = 1
    for size in shape:  # the product in the order safetensors computes it, overflow included
        elements *= size
        if elements > _MAX_ELEMENTS:
            raise CheckpointError(
                f"{name}: tensor {key[:80]!r} has the shape {shape}, whose element count "
                f"overflows a 64-bit integer. The file is corrupt; write it again with safetensors."
            )
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        and 0 <= offsets[0] <= offsets[1] <= data_bytes
    ):
        raise CheckpointError(
            f"{name}: tensor {key[:80]!r} has data offsets {str(offsets)[:80]} outside the "
            f"{data_bytes}-byte data section. The file is truncated or corrupt; upload the "
            "complete file."
        )
    expected = elements * DTYPE_SIZES[dtype]
    if offsets[1] - offsets[0] != expected:
        raise CheckpointError(
            f"{name}: tensor {key[:80]!r} of dtype {dtype} and shape {shape} needs {expected} "
            f"bytes; its offsets span {offsets[1] - offsets[0]}. The file is corrupt; write it "
            "again with safetensors."
        )
    return TensorEntry(key, dtype, tuple(shape), offsets[0], offsets[1])

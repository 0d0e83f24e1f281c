"""Build probe bundles and checkpoints that are wrong in one precise way (torch-free)."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
from safetensors.numpy import load, save

from obstacle.artifacts.layout import PROBE_DATA, PROBE_DIR, PROBE_MANIFEST, PROBE_PROGRAM


def probe_files(run_dir: Path) -> dict[str, bytes]:
    return {
        name: (run_dir / PROBE_DIR / name).read_bytes()
        for name in (PROBE_MANIFEST, PROBE_PROGRAM, PROBE_DATA)
    }


def rehash(files: dict[str, bytes]) -> dict[str, bytes]:
    """Set the manifest's content_hash to match the files, as an attacker can."""
    manifest = json.loads(files[PROBE_MANIFEST])
    manifest["content_hash"] = hashlib.sha256(files[PROBE_PROGRAM] + files[PROBE_DATA]).hexdigest()
    return {**files, PROBE_MANIFEST: json.dumps(manifest).encode()}


def zip_bundle(files: dict[str, bytes], *, names: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr((names or {}).get(name, name), data)
    return buffer.getvalue()


class WritesMarker:
    """Unpickling this would create the marker file: the test asserts it never appears."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def with_pickled_sample_inputs(program: bytes, marker: Path) -> bytes:
    """The program archive with a pickle that would run code in its sample-inputs entry."""
    source = zipfile.ZipFile(io.BytesIO(program))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as target:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith("data/sample_inputs/model.pt"):
                data = pickle.dumps(WritesMarker(marker))
            target.writestr(info, data)
    return buffer.getvalue()


def modified_safetensors(
    data: bytes, change: dict[str, np.ndarray] | None = None, **metadata: str | None
) -> bytes:
    """The safetensors file with tensors replaced and header metadata changed (None removes)."""
    tensors = load(data)
    tensors.update(change or {})
    header_len = int.from_bytes(data[:8], "little")
    meta = json.loads(data[8 : 8 + header_len]).get("__metadata__", {})
    for key, value in metadata.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    return save(tensors, metadata=meta)


def tensors(data: bytes) -> dict[str, np.ndarray]:
    return load(data)

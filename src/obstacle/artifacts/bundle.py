"""The probe bundle: how a run's ``probe/`` directory travels over HTTP.

A zip archive holding exactly ``manifest.json``, ``program.pt2`` and ``data.safetensors`` at its
top level, stored uncompressed with fixed timestamps, so that the same probe always packs to the
same bytes (uploading it again is recognised by its SHA-256 and is a no-op).

Everything in a bundle is untrusted: ``unpack_probe_bundle`` checks the zip itself (member names,
sizes, no links, no encryption), the manifest, the probe data's safetensors header and values, the
program archive (``validate_program_archive``: no pickle, no unsafe operator) and that the
manifest's ``content_hash`` matches the files. A client can forge the hash, the manifest and the
program together, so nothing downstream trusts a name the client chose: the service keys files and
caches by the hash it computed itself. Torch-free, like the rest of ``obstacle.artifacts``.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import struct
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, overload

import numpy as np

from obstacle.artifacts.archive import MAX_PROGRAM_BYTES, ArchiveSummary, validate_program_archive
from obstacle.artifacts.layout import PROBE_DATA, PROBE_MANIFEST, PROBE_PROGRAM
from obstacle.artifacts.manifest import (
    MAX_MANIFEST_BYTES,
    SAFETENSORS_DTYPES,
    ProbeManifest,
    parse_manifest,
)
from obstacle.artifacts.safetensors_header import SafetensorsHeader, read_header_bytes
from obstacle.errors import CheckpointError, ProbeError

__all__ = [
    "BUNDLE_MEMBERS",
    "ProbeBundle",
    "nonfinite_tensors",
    "pack_probe",
    "probe_content_hash",
    "unpack_probe_bundle",
]

BUNDLE_MEMBERS = (PROBE_MANIFEST, PROBE_PROGRAM, PROBE_DATA)
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)
_CHUNK = 1 << 20
_MODEL_PREFIX = "model."  # the program's placeholders for the model's own tensors
_MAX_DIMS = 64
_MAX_BATCHES = 100_000
_MAX_DIRECTORY_BYTES = 4096  # three central-directory records with zip64 extras

# safetensors float dtype -> (unsigned view, exponent mask): all exponent bits set is NaN or Inf.
_FLOAT_EXPONENTS: dict[str, tuple[type[np.unsignedinteger], int]] = {
    "F64": (np.uint64, 0x7FF0000000000000),
    "F32": (np.uint32, 0x7F800000),
    "F16": (np.uint16, 0x7C00),
    "BF16": (np.uint16, 0x7F80),
    "F8_E5M2": (np.uint8, 0x7C),
}


@dataclass(frozen=True)
class ProbeBundle:
    """A validated, unpacked probe."""

    directory: Path
    manifest: ProbeManifest
    content_hash: str
    data_header: SafetensorsHeader
    program: ArchiveSummary


@overload
def pack_probe(probe_dir: str | Path, dest: None = None) -> bytes: ...
@overload
def pack_probe(probe_dir: str | Path, dest: str | Path) -> Path: ...
def pack_probe(probe_dir: str | Path, dest: str | Path | None = None) -> bytes | Path:
    """Zip ``probe_dir`` (a run's ``probe/``) into a bundle: bytes, or a file at ``dest``.

    The same files always give the same bytes.
    """
    source = Path(probe_dir)
    missing = [name for name in BUNDLE_MEMBERS if not (source / name).is_file()]
    if missing:
        raise ProbeError(
            f"{source}: not a probe directory (missing {', '.join(missing)}). Capture the probe "
            "with obstacle.Probe.capture(...).save(run_dir) and pack RUN_DIR/probe."
        )
    if dest is None:
        buffer = io.BytesIO()
        _write_bundle(source, buffer)
        return buffer.getvalue()
    target = Path(dest)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            _write_bundle(source, handle)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _write_bundle(source: Path, handle: BinaryIO) -> None:
    with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_STORED) as archive:
        for name in sorted(BUNDLE_MEMBERS):
            path = source / name
            info = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
            info.create_system = 3
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            info.file_size = path.stat().st_size
            with path.open("rb") as src, archive.open(info, "w", force_zip64=True) as dst:
                while chunk := src.read(_CHUNK):
                    dst.write(chunk)


def unpack_probe_bundle(
    bundle_path: str | Path, dest_dir: str | Path, *, max_bytes: int | None = None
) -> ProbeBundle:
    """Check the bundle at ``bundle_path`` and unpack it into the empty directory ``dest_dir``.

    ``max_bytes`` bounds the unpacked size, which is never more than the bundle's own size:
    members are stored uncompressed, and the member count, names, sizes and methods are checked
    from the central directory before a byte is written to ``dest_dir``. Raises ProbeError (UnsafeArchiveError for the program) naming what is
    wrong; nothing in the bundle is executed or unpickled.
    """
    source = Path(bundle_path)
    dest = Path(dest_dir)
    size = source.stat().st_size
    limit = size if max_bytes is None else min(max_bytes, size)
    _extract(source, dest, limit)

    manifest = _read_manifest(dest / PROBE_MANIFEST)
    digest = probe_content_hash(dest)
    if digest != manifest.content_hash:
        raise ProbeError(
            f"probe bundle: program.pt2 and data.safetensors hash to {digest[:16]}… but the manifest's "
            f"content_hash is {manifest.content_hash[:16]}…: a file was changed after capture. "
            "Capture the probe again and upload the bundle from pack_probe unchanged."
        )
    data_path = dest / PROBE_DATA
    try:
        with data_path.open("rb") as handle:
            data_header = read_header_bytes(
                handle, total_size=data_path.stat().st_size, name=PROBE_DATA
            )
    except CheckpointError as exc:
        raise ProbeError(f"probe bundle: {exc}") from None
    _check_manifest(manifest)
    _check_data(manifest, data_header)
    bad = nonfinite_tensors(dest / PROBE_DATA, data_header)
    if bad:
        raise ProbeError(
            f"probe bundle: the probe data holds NaN or Inf in {', '.join(bad)}. Probe batches must be "
            "finite (every loss on them would be NaN); capture the probe from clean training batches."
        )
    with (dest / PROBE_PROGRAM).open("rb") as handle:
        handle.raw.name = f"probe bundle: {PROBE_PROGRAM}"  # type: ignore[attr-defined]  # messages name the entry, not a temp path
        # No larger than a worker loads, whatever the bundle limit: refused now, not at analysis.
        program = validate_program_archive(handle, max_bytes=max(min(limit, MAX_PROGRAM_BYTES), 1))
    _check_program_parameters(manifest, program)
    return ProbeBundle(dest, manifest, digest, data_header, program)


def _check_directory_size(source: Path) -> None:
    """Bound the central directory from the end record, before zipfile reads the directory."""
    size = source.stat().st_size
    with source.open("rb") as handle:
        tail_len = min(size, 22 + 0xFFFF)
        handle.seek(size - tail_len)
        tail = handle.read(tail_len)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < 22:
        raise ProbeError(
            "probe bundle: not a readable zip archive (it has no end-of-central-directory record: "
            "the upload is truncated or another format). Upload the bytes of "
            "obstacle.artifacts.bundle.pack_probe(RUN_DIR/probe)."
        )
    entries, directory_bytes = struct.unpack("<HL", tail[at + 10 : at + 16])
    if entries > len(BUNDLE_MEMBERS) or directory_bytes > _MAX_DIRECTORY_BYTES:
        raise ProbeError(
            f"probe bundle: its zip directory declares {entries} members in {directory_bytes} "
            f"bytes; a bundle holds exactly {len(BUNDLE_MEMBERS)} members ({', '.join(BUNDLE_MEMBERS)}) "
            f"in at most {_MAX_DIRECTORY_BYTES} bytes. Pack the probe directory with pack_probe."
        )


def _extract(source: Path, dest: Path, limit: int) -> None:
    _check_directory_size(source)
    try:
        archive = zipfile.ZipFile(source)
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        OSError,
        EOFError,
        ValueError,
        struct.error,
    ) as exc:
        raise ProbeError(
            f"probe bundle: not a readable zip archive ({exc}). Upload the bytes of "
            "obstacle.artifacts.bundle.pack_probe(RUN_DIR/probe)."
        ) from None
    with archive:
        infos = archive.infolist()
        names = [info.filename for info in infos]
        if sorted(names) != sorted(BUNDLE_MEMBERS):
            raise ProbeError(
                f"probe bundle: must hold exactly {', '.join(BUNDLE_MEMBERS)} at its top level; "
                f"got {names!r}. Pack the probe directory with pack_probe."
            )
        total = 0
        for info in infos:
            total += _check_member(info, limit)
            if total > limit:
                raise ProbeError(
                    f"probe bundle: its members unpack to more than {limit} bytes. Bundles are stored "
                    "uncompressed; pack the probe with pack_probe."
                )
        dest.mkdir(parents=True, exist_ok=True)
        for info in infos:
            try:
                with archive.open(info) as src, (dest / info.filename).open("wb") as dst:
                    while chunk := src.read(_CHUNK):
                        dst.write(chunk)
            except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
                raise ProbeError(
                    f"probe bundle: member {info.filename} is corrupt ({exc}). Upload the bundle again."
                ) from None


def _check_member(info: zipfile.ZipInfo, limit: int) -> int:
    name = info.filename
    mode = info.external_attr >> 16
    # Zip writers that set no file type leave the type bits 0: only a stated non-file is refused.
    if info.is_dir() or stat.S_IFMT(mode) not in (0, stat.S_IFREG):
        raise ProbeError(
            f"probe bundle: member {name} is not a regular file; links and folders are refused."
        )
    if info.flag_bits & 0x1:
        raise ProbeError(f"probe bundle: member {name} is encrypted; upload it unencrypted.")
    if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
        raise ProbeError(
            f"probe bundle: member {name} is compressed (zip method {info.compress_type}, "
            f"{info.compress_size} bytes that expand to {info.file_size}); members must be stored "
            "uncompressed, so that nothing expands beyond the upload. Pack the probe with "
            "obstacle.artifacts.bundle.pack_probe instead of re-zipping it."
        )
    if info.file_size > limit:
        raise ProbeError(
            f"probe bundle: member {name} unpacks to {info.file_size} bytes, over the {limit}-byte limit."
        )
    if name == PROBE_MANIFEST and info.file_size > MAX_MANIFEST_BYTES:
        raise ProbeError(
            f"probe bundle: {name} is {info.file_size} bytes; a manifest is at most {MAX_MANIFEST_BYTES}."
        )
    return info.file_size


def _read_manifest(path: Path) -> ProbeManifest:
    return parse_manifest(path.read_bytes(), name=f"probe bundle: {PROBE_MANIFEST}")


def _check_manifest(manifest: ProbeManifest) -> None:
    """What the workers rely on beyond the schema: known dtypes, sizes, one spec per name."""
    problems: list[str] = []
    specs = [("parameters", s.name, s.shape, s.dtype) for s in manifest.parameters]
    specs += [("buffers", s.name, s.shape, s.dtype) for s in manifest.buffers]
    names = [name for _, name, _, _ in specs]
    if len(set(names)) != len(names):
        problems.append("a parameter or buffer name appears twice")
    for kind, name, shape, dtype in specs:
        if not name or len(name) > 1024:
            problems.append(f"{kind} {name[:40]!r}: a name has 1 to 1024 characters")
        if any(size < 0 for size in shape) or len(shape) > _MAX_DIMS:
            problems.append(f"{kind} {name[:40]!r}: shape {shape[:8]} is not sizes >= 0")
        if dtype not in SAFETENSORS_DTYPES:
            problems.append(f"{kind} {name[:40]!r}: dtype {dtype[:20]!r} is not a known dtype")
    if sorted(spec.index for spec in manifest.inputs) != list(range(len(manifest.inputs))):
        problems.append("the inputs' indices must be 0, 1, ... once each")
    for spec in manifest.inputs:
        if not spec.shape or spec.shape[0] != -1 or any(size < 0 for size in spec.shape[1:]):
            problems.append(f"input {spec.index}: shape {spec.shape[:8]} is not [-1, sizes >= 0]")
        if spec.dtype not in SAFETENSORS_DTYPES:
            problems.append(f"input {spec.index}: dtype {spec.dtype[:20]!r} is not a known dtype")
    if not 1 <= manifest.num_batches <= _MAX_BATCHES:
        problems.append(f"num_batches is {manifest.num_batches}, not in [1, {_MAX_BATCHES}]")
    if manifest.batch_size < 1 or (manifest.validation_size or 1) < 1:
        problems.append("batch_size and validation_size must be >= 1")
    if problems:
        raise ProbeError(
            f"probe bundle: {PROBE_MANIFEST} is not what Probe.capture writes ({'; '.join(problems[:10])}; "
            f"known dtypes: {sorted(SAFETENSORS_DTYPES)}). Capture the probe again with "
            "obstacle.Probe.capture(...).save(run_dir)."
        )


def _check_program_parameters(manifest: ProbeManifest, program: ArchiveSummary) -> None:
    """The manifest's parameters are the program's model parameters, shape for shape.

    The workers feed θ, cut into the manifest's shapes, to the program's ``model.*`` parameter
    placeholders: a mismatch would fail in the worker, after the upload was accepted.
    """
    in_program = {
        fqn[len(_MODEL_PREFIX) :]: list(sizes)
        for fqn, sizes in program.parameters
        if fqn.startswith(_MODEL_PREFIX)
    }
    declared = {spec.name: spec.shape for spec in manifest.parameters}
    if in_program != declared:
        missing = sorted(set(declared) - set(in_program))[:5]
        extra = sorted(set(in_program) - set(declared))[:5]
        wrong = [
            f"{name}: {declared[name]} vs {in_program[name]}"
            for name in sorted(set(declared) & set(in_program))
            if declared[name] != in_program[name]
        ][:5]
        raise ProbeError(
            f"probe bundle: {PROBE_MANIFEST}'s parameters do not match the program's model "
            f"parameters (only in the manifest: {missing or 'none'}; only in the program: "
            f"{extra or 'none'}; shapes manifest vs program: {wrong or 'none'}). The workers bind "
            "checkpoints to the program through the manifest; capture the probe again with "
            "obstacle.Probe.capture(...).save(run_dir)."
        )


def _check_data(manifest: ProbeManifest, header: SafetensorsHeader) -> None:
    """The probe data holds ``batch_<k>.<i>`` (and ``validation.<i>``) shaped like the inputs."""
    expected = {
        f"batch_{k}.{spec.index}": spec
        for k in range(manifest.num_batches)
        for spec in manifest.inputs
    }
    if manifest.validation_size is not None:
        expected |= {f"validation.{spec.index}": spec for spec in manifest.inputs}
    got = header.tensors
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    wrong = []
    for name in sorted(set(expected) & set(got)):
        spec, entry = expected[name], got[name]
        if list(entry.shape[1:]) != spec.shape[1:] or len(entry.shape) != len(spec.shape):
            wrong.append(
                f"{name}: shape {list(entry.shape)} (manifest: [batch, *{spec.shape[1:]}])"
            )
        elif SAFETENSORS_DTYPES.get(spec.dtype) != entry.dtype:
            wrong.append(f"{name}: dtype {entry.dtype} (manifest: {spec.dtype})")
    if missing or extra or wrong:
        raise ProbeError(
            f"probe bundle: {PROBE_DATA} does not match the manifest (missing: {missing or 'none'}; "
            f"unexpected: {extra or 'none'}; mismatched: {wrong or 'none'}). Capture the probe again."
        )


def probe_content_hash(probe_dir: str | Path) -> str:
    """SHA-256 over ``program.pt2`` then ``data.safetensors``: the manifest's ``content_hash``."""
    digest = hashlib.sha256()
    for name in (PROBE_PROGRAM, PROBE_DATA):
        with (Path(probe_dir) / name).open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def nonfinite_tensors(
    path: str | Path, header: SafetensorsHeader, *, names: Iterable[str] | None = None
) -> list[str]:
    """Names of the floating-point tensors in the safetensors file at ``path`` holding NaN or Inf.

    Reads the data in chunks (never the whole file) and tests the exponent bits, so it needs
    neither torch nor a float type numpy lacks (bfloat16).
    """
    wanted = set(header.tensors) if names is None else set(names)
    offset = Path(path).stat().st_size - header.data_bytes  # the data section starts here
    bad: list[str] = []
    with Path(path).open("rb") as handle:
        for entry in sorted(header.tensors.values(), key=lambda e: e.begin):
            kind = _FLOAT_EXPONENTS.get(entry.dtype)
            if kind is None or entry.name not in wanted or entry.end == entry.begin:
                continue
            view, mask = kind
            itemsize = np.dtype(view).itemsize
            step = max(itemsize, _CHUNK - _CHUNK % itemsize)
            handle.seek(offset + entry.begin)
            remaining = entry.end - entry.begin
            while remaining > 0:
                raw = handle.read(min(step, remaining))
                if not raw:
                    break
                remaining -= len(raw)
                bits = np.frombuffer(raw, dtype=np.dtype(view).newbyteorder("<"))
                if np.any((bits & view(mask)) == view(mask)):
                    bad.append(entry.name)
                    break
    return bad

"""The zip container of an uploaded ``.pt2`` archive, checked before any entry is parsed.

Bounds on size and entry count, the central directory (zip64 included), entry names, the single
top-level folder and the entry allow-list, layout (no prefix, no overlaps), stored entries only and
CRCs: rules 1, 4-7 and 17 of ``obstacle.artifacts.archive``. Torch-free.
"""

from __future__ import annotations

import io
import re
import struct
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NoReturn

from obstacle.errors import UnsafeArchiveError

_RECAPTURE = "Re-capture the probe with obstacle.Probe.capture"

_MODEL = "model"
_MODEL_JSON = f"models/{_MODEL}.json"
_WEIGHTS_CONFIG = f"data/weights/{_MODEL}_weights_config.json"
_CONSTANTS_CONFIG = f"data/constants/{_MODEL}_constants_config.json"
_SAMPLE_INPUTS = f"data/sample_inputs/{_MODEL}.pt"
_SMALL_ENTRIES = {
    "archive_format": re.compile(rb"pt2\Z"),
    "archive_version": re.compile(rb"0\Z"),
    ".data/version": re.compile(rb"[0-9]{1,3}\n?\Z"),
    "byteorder": re.compile(rb"little\Z"),
    ".data/serialization_id": re.compile(rb"[0-9]{1,64}\Z"),
}
_REQUIRED = (
    "archive_format",
    "archive_version",
    _MODEL_JSON,
    _WEIGHTS_CONFIG,
    _CONSTANTS_CONFIG,
    _SAMPLE_INPUTS,
)
_JSON_ENTRIES = (_WEIGHTS_CONFIG, _CONSTANTS_CONFIG, _MODEL_JSON)
_WEIGHT_FILE = re.compile(r"data/weights/(weight_[0-9]{1,9})\Z")
_CONSTANT_FILE = re.compile(r"data/constants/(tensor_[0-9]{1,9})\Z")

_ENTRY_NAME = re.compile(r"[A-Za-z0-9._/-]{1,255}\Z")
_ZIP_MAGIC = b"PK\x03\x04"
_EOCD_MAGIC = b"PK\x05\x06"
_ZIP64_LOCATOR_MAGIC = b"PK\x06\x07"
_ZIP64_EOCD_MAGIC = b"PK\x06\x06"
_MAX_CENTRAL_RECORD = 1024  # bytes per central-directory record we are willing to parse
_MAX_RATIO = 100  # uncompressed/compressed beyond this is a zip bomb, whatever the method
_CHUNK = 1 << 20
PROGRAM_SIZE_FIX = (
    "A probe program holds its model's graph and weights (4 bytes per float32 parameter); check "
    "that the right file was uploaded, or capture the probe from a smaller model"
)


@dataclass(frozen=True)
class _Limits:
    max_bytes: int
    max_entries: int
    max_json_bytes: int


@contextmanager
def _open_source(source: str | Path | BinaryIO) -> Iterator[tuple[BinaryIO, str]]:
    if isinstance(source, (str, Path)):
        label = str(source)
        try:
            handle = open(source, "rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise UnsafeArchiveError(
                f"{label}: the program archive cannot be opened ({exc.strerror or exc}). "
                "Upload the probe's program.pt2 again."
            ) from None
        with handle:
            yield handle, label
    else:
        yield source, str(getattr(source, "name", "<program archive>"))


class _ZipContainer:
    """The zip-container half of one validation: bounds, directory, names, entries, CRCs."""

    def __init__(self, handle: BinaryIO, label: str, limits: _Limits) -> None:
        self.handle = handle
        self.label = label
        self.limits = limits
        self.root = ""
        self.zip: zipfile.ZipFile

    def fail(self, entry: str | None, problem: str, fix: str = _RECAPTURE) -> NoReturn:
        where = f"{self.label}: entry '{entry}'" if entry is not None else f"{self.label}:"
        raise UnsafeArchiveError(f"{where} {problem}. {fix}", entry=entry)

    # -- the container ------------------------------------------------------------------------

    def _container_size(self) -> int:
        self.handle.seek(0, io.SEEK_END)
        size = self.handle.tell()
        if size > self.limits.max_bytes:
            self.fail(
                None,
                f"is {size} bytes, over the limit of {self.limits.max_bytes} bytes",
                PROGRAM_SIZE_FIX,
            )
        self.handle.seek(0)
        head = self.handle.read(4)
        if head != _ZIP_MAGIC:
            what = "a pickle" if head[:1] == b"\x80" else "not a zip file"
            self.fail(
                None,
                f"is {what} (it starts with {head!r}, a torch.export archive starts with {_ZIP_MAGIC!r})",
                f"{_RECAPTURE}, which writes the program with torch.export.save",
            )
        return size

    def _check_central_directory(self, size: int) -> None:
        """Bound the entry count from the end record before zipfile parses the directory."""
        tail_len = min(size, 22 + 0xFFFF)
        self.handle.seek(size - tail_len)
        tail = self.handle.read(tail_len)
        at = tail.rfind(_EOCD_MAGIC)
        if at < 0 or len(tail) - at < 22:
            self.fail(
                None,
                "has no zip end-of-central-directory record (the file is truncated)",
                "Upload the complete program.pt2 again",
            )
        fields = struct.unpack("<4s4H2LH", tail[at : at + 22])
        entries, directory_bytes = int(fields[4]), int(fields[5])
        if entries == 0xFFFF or directory_bytes == 0xFFFFFFFF:
            entries, directory_bytes = self._zip64_counts(size - tail_len + at)
        max_entries = self.limits.max_entries
        if entries > max_entries or directory_bytes > max_entries * _MAX_CENTRAL_RECORD:
            self.fail(
                None,
                f"declares {entries} entries in a {directory_bytes}-byte central directory, over "
                f"the limit of {max_entries} entries",
                "A probe program holds a few dozen entries; check that the right file was uploaded",
            )
        self.handle.seek(0)

    def _zip64_counts(self, eocd_offset: int) -> tuple[int, int]:
        self.handle.seek(max(eocd_offset - 20, 0))
        locator = self.handle.read(20)
        if len(locator) != 20 or locator[:4] != _ZIP64_LOCATOR_MAGIC:
            self.fail(
                None, "has a damaged zip64 end record", "Upload the complete program.pt2 again"
            )
        (record_offset,) = struct.unpack("<Q", locator[8:16])
        self.handle.seek(record_offset)
        record = self.handle.read(56)
        if len(record) != 56 or record[:4] != _ZIP64_EOCD_MAGIC:
            self.fail(
                None, "has a damaged zip64 end record", "Upload the complete program.pt2 again"
            )
        fields = struct.unpack("<4sQ2H2L4Q", record)
        return int(fields[7]), int(fields[8])

    def _entry(self, relative: str) -> str:
        return f"{self.root}/{relative}"

    def _check_names_and_sizes(self, infos: list[zipfile.ZipInfo]) -> int:
        seen: set[str] = set()
        roots: set[str] = set()
        total = 0
        for info in infos:
            name = info.orig_filename
            if not _ENTRY_NAME.match(name) or name != info.filename:
                self.fail(
                    name,
                    "has a name outside [A-Za-z0-9._/-] (at most 255 characters)",
                    f"{_RECAPTURE}; torch.export.save only writes such names",
                )
            parts = name.split("/")
            if name.startswith("/") or any(part in ("", ".", "..") for part in parts):
                self.fail(
                    name,
                    "has an absolute path, an empty segment or a '.'/'..' segment",
                    f"{_RECAPTURE}; a program archive never needs path traversal",
                )
            if name in seen:
                self.fail(
                    name,
                    "appears twice in the zip directory (readers disagree about which copy counts)",
                )
            seen.add(name)
            if len(parts) < 2:
                self.fail(
                    name,
                    "is not inside the archive's top-level folder",
                    f"{_RECAPTURE}; torch.export.save puts every entry under one folder",
                )
            roots.add(parts[0])
            if len(roots) > 1:
                self.fail(
                    name,
                    f"is under a second top-level folder (found {sorted(roots)})",
                    f"{_RECAPTURE}; torch.export.save puts every entry under one folder",
                )
            if info.flag_bits & 0x1:
                self.fail(name, "is encrypted")
            total += info.file_size
            if total > self.limits.max_bytes:
                self.fail(
                    name,
                    f"brings the uncompressed total to {total} bytes, over the limit of "
                    f"{self.limits.max_bytes} bytes (a zip bomb or a model too large for a probe)",
                    "Probe a smaller model or raise the service's limit",
                )
            if info.file_size > _MAX_RATIO * max(info.compress_size, 1):
                self.fail(
                    name,
                    f"expands from {info.compress_size} to {info.file_size} bytes, a ratio over "
                    f"{_MAX_RATIO} (a zip bomb)",
                    f"{_RECAPTURE}; torch.export.save stores entries uncompressed",
                )
            if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
                self.fail(
                    name,
                    f"is compressed (method {info.compress_type}); torch.export.save stores every "
                    "entry uncompressed",
                    f"{_RECAPTURE} instead of re-zipping the archive",
                )
        self.root = next(iter(roots)) if roots else ""
        return total

    def _check_layout(self, infos: list[zipfile.ZipInfo], directory_start: int) -> None:
        """No bytes before the first entry, and no two entries sharing bytes."""
        if not infos:
            self.fail(None, "is an empty zip file")
        ordered = sorted(infos, key=lambda info: info.header_offset)
        if ordered[0].header_offset != 0:
            self.fail(
                None,
                f"has {ordered[0].header_offset} bytes before its first entry",
                f"{_RECAPTURE}; a program archive never carries a prefix",
            )
        bounds = [info.header_offset for info in ordered[1:]] + [directory_start]
        for info, bound in zip(ordered, bounds, strict=True):
            self.handle.seek(info.header_offset)
            header = self.handle.read(30)
            if len(header) != 30 or header[:4] != _ZIP_MAGIC:
                self.fail(
                    info.filename, "has no local zip header", "Upload the complete file again"
                )
            name_len, extra_len = struct.unpack("<HH", header[26:30])
            end = info.header_offset + 30 + name_len + extra_len + info.compress_size
            if end > bound:
                self.fail(
                    info.filename,
                    f"overlaps the next zip record (its data ends at byte {end}, the next record "
                    f"starts at byte {bound})",
                    f"{_RECAPTURE}; overlapping entries are a zip-bomb technique",
                )

    def _check_entry_names(self, infos: list[zipfile.ZipInfo]) -> dict[str, zipfile.ZipInfo]:
        """Map each entry's name inside the root folder to its info; reject unknown names."""
        entries: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            relative = info.filename.split("/", 1)[1]
            known = (
                relative in _SMALL_ENTRIES
                or relative in _JSON_ENTRIES
                or relative == _SAMPLE_INPUTS
                or _WEIGHT_FILE.match(relative)
                or _CONSTANT_FILE.match(relative)
            )
            if not known:
                self.fail(info.filename, *_why_unknown(relative))
            entries[relative] = info
        for relative in _REQUIRED:
            if relative not in entries:
                self.fail(self._entry(relative), "is missing; torch.export.save always writes it")
        return entries

    def _read_entries(
        self, archive: zipfile.ZipFile, entries: dict[str, zipfile.ZipInfo]
    ) -> dict[str, bytes]:
        """Read every entry (verifying CRCs); keep the small and JSON ones."""
        kept: dict[str, bytes] = {}
        for relative, info in entries.items():
            if relative == _SAMPLE_INPUTS and info.file_size:
                head = self._read(archive, info, limit=16)
                self.fail(
                    info.filename,
                    f"{_describe_payload(head, info.file_size)}; obstacle never loads pickles "
                    "from uploads (torch would unpickle it with weights_only=False)",
                    f"{_RECAPTURE}, which saves no sample inputs",
                )
            if relative in _SMALL_ENTRIES:
                data = self._read(archive, info, limit=128)
                if not _SMALL_ENTRIES[relative].match(data):
                    self.fail(
                        info.filename,
                        f"holds {data[:64]!r}, not what torch.export.save writes there "
                        f"(expected {_SMALL_ENTRIES[relative].pattern!r}, a little-endian archive)",
                    )
                kept[relative] = data
            elif relative in _JSON_ENTRIES:
                if info.file_size > self.limits.max_json_bytes:
                    self.fail(
                        info.filename,
                        f"is {info.file_size} bytes of JSON, over the limit of "
                        f"{self.limits.max_json_bytes} bytes",
                        "Probe a smaller program or raise the service's JSON limit",
                    )
                kept[relative] = self._read(archive, info, limit=info.file_size)
            else:
                self._read(archive, info, limit=0)
        return kept

    def _read(self, archive: zipfile.ZipFile, info: zipfile.ZipInfo, *, limit: int) -> bytes:
        """Read the whole entry (so zipfile checks its CRC), returning its first ``limit`` bytes."""
        kept = bytearray()
        try:
            with archive.open(info) as stream:
                while chunk := stream.read(_CHUNK):
                    if len(kept) < limit:
                        kept += chunk[: limit - len(kept)]
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            self.fail(
                info.filename,
                f"cannot be read ({exc})",
                "The upload is truncated or corrupt; upload the probe's program.pt2 again",
            )
        return bytes(kept)


def _why_unknown(relative: str) -> tuple[str, str]:
    """The problem and the fix for an entry name outside the allow-list."""
    if relative.startswith("data/aotinductor/"):
        problem = "holds AOTInductor output, a compiled shared library torch would dlopen"
    elif relative.startswith(("data/constants/custom_obj_", "data/constants/opaque_obj_")):
        problem = "holds a custom (script or opaque) object, which torch unpickles"
    elif relative.endswith((".pkl", ".pt", ".pth", ".bin")) or "/data.pkl" in relative:
        problem = "holds a pickle (or a torch.save archive with a data.pkl inside)"
    elif relative.startswith("models/"):
        problem = (
            "is a second exported program; torch deserializes every models/*.json and a "
            "probe holds exactly one (models/model.json)"
        )
    elif relative.startswith("extra/"):
        problem = "is an extra file, which a probe never carries"
    else:
        problem = "is not an entry torch.export.save writes for a probe program"
    return (
        f"{problem}; only the entries of a single torch.export program are allowed",
        f"{_RECAPTURE}, which writes nothing else",
    )


def _describe_payload(head: bytes, size: int) -> str:
    if len(head) >= 2 and head[0] == 0x80 and head[1] <= 5:
        return f"holds a pickle payload (starts with {head[:2]!r})"
    if head.startswith(_ZIP_MAGIC):
        return (
            f"holds a torch.save zip archive, a data.pkl pickle inside (starts with {head[:4]!r})"
        )
    return f"is not empty ({size} bytes, starting with {head[:8]!r})"

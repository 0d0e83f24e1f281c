"""Validate an uploaded ``torch.export`` archive (``.pt2``) before any byte of it reaches torch.

Torch-free on purpose: the service runs this without torch installed, and the workers run it
again (through ``obstacle.battery._safe_load.load_program_safely``) right before
``torch.export.load``. Nothing here unpickles, imports, evaluates or parses an expression with
anything but the small grammars below.

Every place where torch 2.13's loader (``torch.export.load`` → ``pt2_archive._package.load_pt2``
→ ``_export.serde.serialize.ExportedProgramDeserializer``, then ``ExportedProgram.module()``)
executes, unpickles, imports, ``eval``s or ``sympify``s something taken from the file, and the
rule here that covers it:

1. ``data/sample_inputs/<model>.pt`` → ``deserialize_torch_artifact``: ``torch.load(weights_only=
   True)`` and, on *any* failure, ``torch.load(weights_only=False)``, i.e. a plain pickle.
   Rule: the entry must exist and be empty (obstacle saves no sample inputs).
2. ``data/weights/<model>_weights_config.json`` and ``data/constants/<model>_constants_config.json``
   entries with ``use_pickle: true`` → ``torch.load(..., weights_only=False)``.
   Rule: ``use_pickle`` must be false; every payload is raw tensor bytes whose size is exactly what
   the entry's dtype, shape, strides and offset need.
3. Constants whose ``path_name`` starts ``custom_obj_`` → ``torch._C._pickle_load_obj`` (TorchScript
   unpickler instantiating torchbind classes); ``opaque_obj_`` → ``pickle.loads``.
   Rule: constant payloads are ``tensor_<n>`` only; ``custom_obj`` and ``token`` signature specs,
   ``custom_obj_values`` and ``as_custom_obj`` arguments are rejected.
4. Legacy ``data/weights/<model>.pt`` / ``data/constants/<model>.pt`` → handed as bytes to
   ``deserialize_torch_artifact`` (the same pickle fallback as 1). Rule: entry-name allow-list.
5. ``data/aotinductor/<model>/…`` → ``AOTIModelPackageLoader`` ``dlopen``s a shared library; with
   ``load_weights_from_disk`` every ``data/weights/*`` is ``torch.load``ed. Rule: entry allow-list.
6. Every ``models/*.json`` is deserialized, not only ``models/model.json``, each with its own
   weights, constants and sample inputs. Rule: only ``models/model.json``.
7. If ``load_pt2`` raises ``RuntimeError``, ``torch.export.load`` falls back to the pre-2.8 layout:
   a root-level ``version`` and ``serialized_*.pt`` pickles. Rule: one top-level folder, allow-list.
8. ``SymExpr.expr_str`` (tensor sizes, strides and storage offsets in ``tensor_values``,
   ``sym_int_values``, ``sym_float_values``, ``sym_bool_values``) → ``sympy.sympify``, which
   ``eval``s the string with builtins such as ``__import__``, ``open`` and ``eval`` in scope.
   Rule: a strict expression grammar (see ``_SymExprParser``); hints are typed numbers.
9. ``range_constraints`` bounds are integers (no parsing), but keys that start with ``u``/``zuf``
   are ``int()``-parsed and drive a loop of that many iterations. Rule: symbol-name grammar with
   at most six digits.
10. ``guards_code`` → ``torch.export._unlift._convert_guards_code_to_fn`` pastes each string into
    Python source that ``ExportedProgram.module()`` ``exec``s (when the program carries example
    inputs) and calls on every forward.
    torch 2.13 *does* write benign guards for a dynamic batch (``L['x'].size()[0] ==
    L['y'].size()[0]``), so each string must match a strict guard grammar (``_GuardParser``).
11. ``Node.target`` → ``deserialize_operator`` walks attributes from ``torch``, ``operator`` or
    ``math`` (``torch.serialization.os.system`` resolves to ``os.system``), ``#ns:op`` goes to an
    extension registry, and ``OpOverload``s include side-effecting ops (``aten.from_file`` reads a
    server file into the graph's output). Rule: the operator allow-list in ``allowed_ops``;
    ``as_operator`` and ``as_graph`` (subgraph) arguments are rejected.
12. Names torch pastes into generated Python source: the FX code of the deserialized graph is
    ``exec``uted during ``torch.export.load`` and uses placeholder and node names raw
    (``def forward(self, <name>)``, ``<name> = …``), so ``y=__import__('os').system(…)`` runs at
    load; parameter, buffer and constant FQNs become ``get_attr`` targets pasted as
    ``getattr(self, "<segment>")`` by ``ExportedProgram.module()``. Rule: every value name is a
    Python identifier (no keyword, no leading ``__``); FQNs are dotted ``[A-Za-z0-9_]`` segments.
13. ``module_call_graph[*].signature.in_spec``/``out_spec`` → ``treespec_loads``: a ``defaultdict``
    node ``importlib.import_module``s the module named in the file, and ``enum_object_hook``
    imports ``{"__enum__": …, "fqn": "module:Class"}`` objects in any context; ``module()`` then
    pastes dict keys (``'{key}': …``) and ``forward_arg_names`` into generated source. Rule:
    treespecs use only tuple, list, dict and OrderedDict nodes, dict contexts list identifier
    keys, argument names are identifiers, and ``treespec_namedtuple_fields`` is empty.
14. Node metadata: ``source_fn_stack`` targets are resolved by ``getattr`` walks like node
    targets; ``custom`` and ``from_node`` are ``json.loads``ed; ``nn_module_stack`` module paths
    become submodule names in ``torch.export.unflatten``; ``torch_fn`` and ``stack_trace`` are
    only stored. Rule: allow-listed keys, strict ``source_fn_stack`` and ``nn_module_stack``
    grammars, bounded JSON, and text without control characters.
15. ``verifiers`` → ``load_verifier`` (a registry lookup); ``graph_module.metadata["custom"]`` →
    ``json.loads``. Rule: verifiers are ``"ATEN"``; the metadata holds at most bounded JSON.
16. The JSON documents: ``json.loads`` (unbounded depth, last duplicate key wins) then
    ``_dict_to_dataclass`` (silently ignores unknown keys). Rule: bounded size and depth, no
    duplicate keys, no ``NaN``/``Infinity`` literals, and no key outside torch 2.13's schema, so
    that a newer torch on a worker cannot act on a field this validator never looked at.
17. The zip container, read by miniz in C++ (``PyTorchFileReader``). Rule: bounded size and entry
    count, stored (uncompressed) entries only, no bytes before the first entry, no overlapping
    entries, names from ``[A-Za-z0-9._/-]`` without ``..`` or duplicates, CRCs verified.

Resource use by a valid program (a huge ``full``, a long graph) is left to the workers' time and
memory limits; this module only guarantees that loading runs no code from the upload.
"""

from __future__ import annotations

import builtins
import io
import json
import keyword
import re
import struct
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

from obstacle.artifacts.allowed_ops import ALLOWED_OPERATORS
from obstacle.errors import ParameterError, UnsafeArchiveError

__all__ = ["ArchiveSummary", "validate_program_archive"]

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

_MAX_JSON_DEPTH = 64
_MAX_EXPR_CHARS = 4096
_MAX_EXPR_DEPTH = 32
_MAX_GUARDS = 1000
_MAX_TEXT_CHARS = 1 << 16
_MAX_NAME_CHARS = 256
_INT64 = 1 << 63
_SCHEMA_MAJOR = 8

# ScalarType code (torch/_export/serde/schema.py) -> element size in bytes. UNKNOWN (0) is absent.
_DTYPE_SIZES = {
    1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 2, 7: 4, 8: 8, 9: 4, 10: 8, 11: 16, 12: 1, 13: 2,
    28: 2, 29: 1, 30: 1, 31: 1, 32: 1, 33: 1, 34: 4, 35: 8,
}  # fmt: skip
_STRIDED = 7  # Layout.Strided; sparse and mkldnn layouts are never needed
_MEMORY_FORMATS = {1, 2, 3, 4}
_DEVICE_TYPES = {"cpu", "cuda"}


@dataclass(frozen=True)
class ArchiveSummary:
    """What a valid program archive holds.

    ``operators`` are the sorted, distinct node targets as torch serializes them
    (``torch.ops.aten.addmm.default``, ``_operator.mul``), all in ``ALLOWED_OPERATORS``.
    """

    entry_count: int
    uncompressed_bytes: int
    operators: tuple[str, ...]
    node_count: int


def validate_program_archive(
    path: str | Path | BinaryIO,
    *,
    max_bytes: int = 512 * 2**20,
    max_entries: int = 10_000,
    max_json_bytes: int = 64 * 2**20,
) -> ArchiveSummary:
    """Check that the ``.pt2`` archive at ``path`` is safe to hand to ``torch.export.load``.

    ``path`` may also be an open binary file (its ``name`` attribute, if any, names it in
    messages). Raises ``UnsafeArchiveError`` (with ``entry`` set to the offending zip entry, or
    ``None`` for the container itself) on anything outside what torch 2.13 writes for a probe.
    """
    for name, value in (
        ("max_bytes", max_bytes),
        ("max_entries", max_entries),
        ("max_json_bytes", max_json_bytes),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ParameterError(
                f"The '{name}' parameter must be an int in the range [1, inf). Got {value!r} instead."
            )
    limits = _Limits(max_bytes=max_bytes, max_entries=max_entries, max_json_bytes=max_json_bytes)
    with _open_source(path) as (handle, label):
        return _ArchiveValidator(handle, label, limits).run()


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


class _ArchiveValidator:
    """One validation of one archive: the zip container, then its entries, then their contents."""

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

    def run(self) -> ArchiveSummary:
        size = self._container_size()
        self._check_central_directory(size)
        try:
            archive = zipfile.ZipFile(self.handle)
        except (
            zipfile.BadZipFile,
            zipfile.LargeZipFile,
            OSError,
            EOFError,
            ValueError,
            struct.error,
        ) as exc:
            self.fail(
                None,
                f"is not a readable zip file ({exc})",
                "The upload is truncated or corrupt; upload the probe's program.pt2 again",
            )
        with archive:
            self.zip = archive
            return self._check_archive(archive)

    def _container_size(self) -> int:
        self.handle.seek(0, io.SEEK_END)
        size = self.handle.tell()
        if size > self.limits.max_bytes:
            self.fail(
                None,
                f"is {size} bytes, over the limit of {self.limits.max_bytes} bytes",
                "A probe program is far smaller; check that the right file was uploaded",
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

    def _check_archive(self, archive: zipfile.ZipFile) -> ArchiveSummary:
        infos = archive.infolist()
        if len(infos) > self.limits.max_entries:
            self.fail(
                None,
                f"holds {len(infos)} entries, over the limit of {self.limits.max_entries}",
                "A probe program holds a few dozen entries; check that the right file was uploaded",
            )
        if archive.comment:
            self.fail(
                None,
                f"carries a {len(archive.comment)}-byte zip comment; torch.export.save writes none",
            )
        total = self._check_names_and_sizes(infos)
        self._check_layout(infos, archive.start_dir)
        entries = self._check_entry_names(infos)
        contents = self._read_entries(archive, entries)
        weights = self._check_payload_config(
            _WEIGHTS_CONFIG, contents[_WEIGHTS_CONFIG], "weight", _WEIGHT_FILE, entries
        )
        constants = self._check_payload_config(
            _CONSTANTS_CONFIG, contents[_CONSTANTS_CONFIG], "constant", _CONSTANT_FILE, entries
        )
        program = _ProgramChecker(self, self._entry(_MODEL_JSON))
        program.check(contents[_MODEL_JSON], payload_names=weights | constants)
        return ArchiveSummary(
            entry_count=len(infos),
            uncompressed_bytes=total,
            operators=tuple(sorted(program.operators)),
            node_count=program.node_count,
        )

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

    # -- payload configs (weights and constants) ----------------------------------------------

    def _check_payload_config(
        self,
        relative: str,
        raw: bytes,
        kind: str,
        pattern: re.Pattern[str],
        entries: dict[str, zipfile.ZipInfo],
    ) -> set[str]:
        """Check a ``*_config.json``; return the FQNs it defines."""
        checker = _JsonChecker(self, self._entry(relative))
        document = checker.load(raw)
        config = checker.mapping(checker.record(document, "", {"config"})["config"], "config")
        directory = relative.rsplit("/", 1)[0]
        kind_prefix = "weight_" if kind == "weight" else "tensor_"
        files = {
            match.group(1): info for name, info in entries.items() if (match := pattern.match(name))
        }
        needs: dict[str, tuple[int, int]] = {}  # file -> (dtype, bytes needed)
        for fqn, meta in config.items():
            where = f"config[{fqn!r}]"
            checker.fqn(fqn, where)
            fields = checker.record(
                meta, where, {"path_name", "is_param", "use_pickle", "tensor_meta"}
            )
            path_name = checker.string(fields["path_name"], f"{where}.path_name")
            checker.boolean(fields["is_param"], f"{where}.is_param")
            use_pickle = checker.boolean(fields["use_pickle"], f"{where}.use_pickle")
            payload = f"{self.root}/{directory}/{path_name}"
            if path_name.startswith(("custom_obj_", "opaque_obj_")):
                checker.fail(
                    where,
                    f"stores {kind} {fqn!r} as a custom (script or opaque) object in '{payload}', "
                    "which torch unpickles; a probe holds plain tensors only",
                    f"{_RECAPTURE} with tensor constants and parameters only",
                )
            if use_pickle is not False:
                stored = entries.get(f"{directory}/{path_name}")
                what = (
                    _describe_payload(self._read(self.zip, stored, limit=16), stored.file_size)
                    if stored is not None
                    else "is absent"
                )
                checker.fail(
                    f"{where}.use_pickle",
                    f"sets use_pickle: true for {kind} {fqn!r} ('{payload}' {what}); torch would "
                    "torch.load it with weights_only=False and obstacle never loads pickles from "
                    "uploads",
                    f"{_RECAPTURE}; plain tensors are saved as raw bytes",
                )
            if not pattern.match(f"{directory}/{path_name}") or path_name not in files:
                checker.fail(
                    f"{where}.path_name",
                    f"names {kind} payload {path_name!r}, which is not a "
                    f"'{directory}/{kind_prefix}<n>' entry of this archive",
                )
            if fields["tensor_meta"] is None:
                checker.fail(f"{where}.tensor_meta", "is null for a raw tensor")
            dtype, needed = checker.payload_tensor_meta(
                fields["tensor_meta"], f"{where}.tensor_meta"
            )
            previous = needs.get(path_name)
            if previous is not None and previous[0] != dtype:
                checker.fail(
                    f"{where}.tensor_meta.dtype",
                    f"views '{payload}' with dtype code {dtype} while another entry uses "
                    f"{previous[0]}",
                )
            needs[path_name] = (dtype, max(needed, previous[1] if previous else 0))
        for path_name, info in files.items():
            if path_name not in needs:
                self.fail(
                    info.filename,
                    f"is not referenced by {self._entry(relative)}",
                    f"{_RECAPTURE}; torch.export.save writes no orphan payloads",
                )
            needed = needs[path_name][1]
            if info.file_size != needed:
                self.fail(
                    info.filename,
                    f"holds {info.file_size} bytes, but the dtype and shape in "
                    f"{self._entry(relative)} need exactly {needed} raw bytes",
                    f"{_RECAPTURE}; the payload does not match its config",
                )
        return set(config)


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


# -- JSON -------------------------------------------------------------------------------------

_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_BRACKET_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key[:80]!r}")
        result[key] = value
    return result


def _reject_constant(token: str) -> Any:
    raise ValueError(f"the non-standard constant {token} (torch writes floats as strings)")


def _parse_json(text: str, *, max_depth: int) -> Any:
    """``json.loads`` with a nesting bound, unique keys and no NaN/Infinity literals."""
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    depth = max(accumulate(_BRACKET_STEP[c] for c in brackets), default=0)
    if depth > max_depth:
        raise ValueError(f"nesting depth {depth} is over the limit of {max_depth}")
    try:
        return json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_reject_constant)
    except RecursionError:
        raise ValueError("nesting too deep") from None


class _JsonChecker:
    """Typed access to one JSON document, failing with the entry and the JSON path."""

    def __init__(self, archive: _ArchiveValidator, entry: str) -> None:
        self.archive = archive
        self.entry = entry

    def fail(self, where: str, problem: str, fix: str = _RECAPTURE) -> NoReturn:
        self.archive.fail(self.entry, f"at {where}: {problem}" if where else problem, fix)

    def load(self, raw: bytes) -> Any:
        try:
            return _parse_json(raw.decode("utf-8"), max_depth=_MAX_JSON_DEPTH)
        except (UnicodeDecodeError, ValueError) as exc:
            self.fail("", f"is not valid, bounded JSON ({exc})")

    def embedded_json(self, text: str, where: str) -> Any:
        try:
            return _parse_json(text, max_depth=_MAX_JSON_DEPTH)
        except ValueError as exc:
            self.fail(where, f"is not valid, bounded JSON ({exc})")

    def record(
        self, value: Any, where: str, required: set[str], optional: frozenset[str] = frozenset()
    ) -> dict[str, Any]:
        """A JSON object with exactly the ``required`` keys and some of the ``optional`` ones."""
        if not isinstance(value, dict):
            self.fail(where, f"must be an object, got {_kind(value)}")
        unknown = set(value) - required - optional
        if unknown:
            self.fail(
                where,
                f"has keys {sorted(unknown)[:5]} outside torch 2.13's export schema",
                f"{_RECAPTURE} with torch 2.13",
            )
        missing = required - set(value)
        if missing:
            self.fail(where, f"lacks the keys {sorted(missing)}")
        return value

    def union(self, value: Any, where: str, allowed: frozenset[str]) -> tuple[str, Any]:
        """A one-key object (torch's tagged union); the key must be in ``allowed``."""
        if not isinstance(value, dict) or len(value) != 1:
            self.fail(where, f"must be a one-key object, got {_kind(value)}")
        ((key, inner),) = value.items()
        if key not in allowed:
            self.fail(
                where,
                f"is a {key!r} value, which a probe program never needs (allowed: {sorted(allowed)})",
            )
        return key, inner

    def mapping(self, value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(where, f"must be an object, got {_kind(value)}")
        return value

    def sequence(self, value: Any, where: str) -> list[Any]:
        if not isinstance(value, list):
            self.fail(where, f"must be a list, got {_kind(value)}")
        return value

    def string(self, value: Any, where: str, *, max_chars: int = _MAX_NAME_CHARS) -> str:
        if not isinstance(value, str):
            self.fail(where, f"must be a string, got {_kind(value)}")
        if len(value) > max_chars:
            self.fail(where, f"is {len(value)} characters, over the limit of {max_chars}")
        return value

    def text(self, value: Any, where: str) -> str:
        """Free text torch only stores (stack traces, module paths): no control characters."""
        text = self.string(value, where, max_chars=_MAX_TEXT_CHARS)
        bad = _CONTROL.search(text)
        if bad:
            self.fail(
                where,
                f"contains the control character {bad.group()!r}",
                f"{_RECAPTURE}; torch writes no control characters in metadata",
            )
        return text

    def integer(self, value: Any, where: str, *, low: int = -_INT64, high: int = _INT64 - 1) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(where, f"must be an integer, got {_kind(value)}")
        if not low <= value <= high:
            self.fail(where, f"is {value}, outside [{low}, {high}]")
        return value

    def choice(self, value: Any, where: str, allowed: set[int], what: str) -> int:
        number = self.integer(value, where)
        if number not in allowed:
            self.fail(where, f"is {what} code {number}, not one of {sorted(allowed)}")
        return number

    def number(self, value: Any, where: str) -> None:
        """A float as torch writes it: a JSON number or "Infinity", "-Infinity", "NaN"."""
        if isinstance(value, str) and value in ("Infinity", "-Infinity", "NaN"):
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(where, f"must be a number, got {_kind(value)}")

    def boolean(self, value: Any, where: str) -> bool:
        if not isinstance(value, bool):
            self.fail(where, f"must be true or false, got {_kind(value)}")
        return value

    def identifier(self, value: Any, where: str) -> str:
        name = self.string(value, where)
        if not _is_identifier(name):
            self.fail(
                where,
                f"is the name {name[:80]!r}, which is not a plain Python identifier (torch pastes "
                "names into the Python source it generates and executes)",
            )
        return name

    def fqn(self, value: Any, where: str, *, allow_empty: bool = False) -> str:
        name = self.string(value, where, max_chars=1024)
        if (name or not allow_empty) and not _is_fqn(name):
            self.fail(
                where,
                f"is the qualified name {name[:80]!r}, which is not dotted [A-Za-z0-9_] segments "
                "(torch pastes these names into generated Python source)",
            )
        return name

    def device(self, value: Any, where: str) -> None:
        fields = self.record(value, where, {"type"}, frozenset({"index"}))
        kind = self.string(fields["type"], f"{where}.type")
        if kind not in _DEVICE_TYPES:
            self.fail(f"{where}.type", f"is device {kind!r}, not one of {sorted(_DEVICE_TYPES)}")
        if fields.get("index") is not None:
            self.integer(fields["index"], f"{where}.index", low=0, high=1023)

    def payload_tensor_meta(self, value: Any, where: str) -> tuple[int, int]:
        """A concrete tensor layout; returns (dtype code, bytes of storage it spans)."""
        fields = self.record(value, where, _TENSOR_META_KEYS)
        dtype = self.choice(fields["dtype"], f"{where}.dtype", set(_DTYPE_SIZES), "dtype")
        self.boolean(fields["requires_grad"], f"{where}.requires_grad")
        self.device(fields["device"], f"{where}.device")
        self.choice(fields["layout"], f"{where}.layout", {_STRIDED}, "layout")
        sizes = [
            self._concrete(item, f"{where}.sizes[{i}]")
            for i, item in enumerate(self.sequence(fields["sizes"], f"{where}.sizes"))
        ]
        strides = [
            self._concrete(item, f"{where}.strides[{i}]")
            for i, item in enumerate(self.sequence(fields["strides"], f"{where}.strides"))
        ]
        offset = self._concrete(fields["storage_offset"], f"{where}.storage_offset")
        if len(sizes) != len(strides):
            self.fail(where, f"has {len(sizes)} sizes but {len(strides)} strides")
        if any(size == 0 for size in sizes):
            return dtype, 0
        elements = (
            offset
            + 1
            + sum((size - 1) * stride for size, stride in zip(sizes, strides, strict=True))
        )
        return dtype, elements * _DTYPE_SIZES[dtype]

    def _concrete(self, value: Any, where: str) -> int:
        kind, inner = self.union(value, where, frozenset({"as_int"}))
        return self.integer(inner, f"{where}.{kind}", low=0, high=1 << 48)


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u2028\u2029]")
_TENSOR_META_KEYS = {
    "dtype", "sizes", "requires_grad", "device", "strides", "storage_offset", "layout",
}  # fmt: skip


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_FQN = re.compile(r"[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*\Z")
_BUILTIN_NAMES = frozenset(dir(builtins))


def _is_identifier(name: str) -> bool:
    return (
        len(name) <= _MAX_NAME_CHARS
        and _IDENTIFIER.match(name) is not None
        and not keyword.iskeyword(name)
        and not name.startswith("__")
    )


def _is_fqn(name: str) -> bool:
    return (
        len(name) <= 1024
        and _FQN.match(name) is not None
        and not any(part.startswith("__") for part in name.split("."))
    )


# -- the exported program (models/model.json) -------------------------------------------------

_ARGUMENT_KINDS = frozenset(
    {
        "as_none", "as_tensor", "as_tensors", "as_int", "as_ints", "as_float", "as_floats",
        "as_string", "as_strings", "as_bool", "as_bools", "as_sym_int", "as_sym_ints",
        "as_sym_float", "as_sym_floats", "as_sym_bool", "as_sym_bools", "as_scalar_type",
        "as_memory_format", "as_layout", "as_device", "as_optional_tensors",
        "as_optional_tensor", "as_complex",
    }
)  # fmt: skip
# Not allowed: as_graph (subgraphs of higher-order ops), as_custom_obj, as_operator (a callable
# resolved like a node target), as_string_to_argument, as_int_lists, as_float_lists and
# as_nested_tensors (triton and HOP plumbing).
_GRAPH_INPUT_KINDS = frozenset(
    {"as_tensor", "as_sym_int", "as_int", "as_float", "as_bool", "as_none", "as_string"}
)
_INPUT_SPECS = frozenset({"user_input", "parameter", "buffer", "tensor_constant", "constant_input"})
_OUTPUT_SPECS = frozenset(
    {
        "user_output", "loss_output", "buffer_mutation", "parameter_mutation",
        "gradient_to_parameter", "gradient_to_user_input", "user_input_mutation",
    }
)  # fmt: skip
_METADATA_KEYS = frozenset(
    {"stack_trace", "nn_module_stack", "torch_fn", "from_node", "custom", "source_fn_stack"}
)
_MODULE_KEY = re.compile(r"[A-Za-z0-9_.]{1,1024}\Z")
_SOURCE_FN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*,[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*\Z")
_TREESPEC_TYPES = frozenset(
    {None, "builtins.tuple", "builtins.list", "builtins.dict", "collections.OrderedDict"}
)
_OUTPUT_NAME_KEYS: dict[str, str | None] = {
    "loss_output": None,
    "buffer_mutation": "buffer_name",
    "parameter_mutation": "parameter_name",
    "gradient_to_parameter": "parameter_name",
    "gradient_to_user_input": "user_input_name",
    "user_input_mutation": "user_input_name",
}
_HINT_KINDS = frozenset({"as_int", "as_bool", "as_float"})
_CONSTANT_KINDS = frozenset({"as_none", "as_int", "as_float", "as_string", "as_bool"})


class _ProgramChecker(_JsonChecker):
    """Walks ``models/model.json`` against torch 2.13's schema (torch/_export/serde/schema.py)."""

    def __init__(self, archive: _ArchiveValidator, entry: str) -> None:
        super().__init__(archive, entry)
        self.operators: set[str] = set()
        self.node_count = 0

    def check(self, raw: bytes, *, payload_names: set[str]) -> None:
        program = self.record(
            self.load(raw),
            "",
            {"graph_module", "opset_version", "range_constraints", "schema_version"},
            frozenset({"verifiers", "torch_version", "guards_code"}),
        )
        self._schema_version(program["schema_version"])
        self._opset(program["opset_version"])
        for symbol, bounds in self.mapping(
            program["range_constraints"], "range_constraints"
        ).items():
            self._range_constraint(symbol, bounds)
        verifiers = self.sequence(program.get("verifiers", []), "verifiers")
        for i, verifier in enumerate(verifiers):
            if verifier not in ("ATEN", ""):
                self.fail(f"verifiers[{i}]", f"is {verifier!r}; a decomposed probe uses 'ATEN'")
        self.string(program.get("torch_version", ""), "torch_version", max_chars=64)
        guards = self.sequence(program.get("guards_code", []), "guards_code")
        if len(guards) > _MAX_GUARDS:
            self.fail("guards_code", f"holds {len(guards)} guards, over {_MAX_GUARDS}")
        for i, guard in enumerate(guards):
            self._guard(guard, f"guards_code[{i}]")
        self._graph_module(program["graph_module"], payload_names)

    def _schema_version(self, value: Any) -> None:
        fields = self.record(value, "schema_version", {"major", "minor"})
        major = self.integer(fields["major"], "schema_version.major")
        self.integer(fields["minor"], "schema_version.minor", low=0)
        if major != _SCHEMA_MAJOR:
            self.fail(
                "schema_version.major",
                f"is {major}; this validator knows torch.export schema {_SCHEMA_MAJOR}.x (torch 2.13)",
                f"{_RECAPTURE} with the torch version the service supports",
            )

    def _opset(self, value: Any) -> None:
        for namespace, version in self.mapping(value, "opset_version").items():
            if namespace != "aten":
                self.fail(
                    "opset_version",
                    f"names the operator namespace {namespace[:80]!r}; a probe uses only 'aten'",
                )
            self.integer(version, "opset_version.aten", low=0, high=1 << 20)

    def _range_constraint(self, symbol: str, bounds: Any) -> None:
        where = f"range_constraints[{symbol[:80]!r}]"
        if not _is_symbol_name(symbol) or (
            symbol.startswith(("u", "zuf")) and not _UNBACKED.match(symbol)
        ):
            self.fail(
                where,
                "is keyed by a name that is not a shape symbol (like 's0'; unbacked 'u<n>'/"
                "'zuf<n>' take at most six digits, torch loops over them)",
            )
        fields = self.record(bounds, where, {"min_val", "max_val"})
        for key in ("min_val", "max_val"):
            if fields[key] is not None:
                self.integer(fields[key], f"{where}.{key}")

    def _guard(self, value: Any, where: str) -> None:
        guard = self.string(value, where, max_chars=_MAX_EXPR_CHARS)
        problem = _GuardParser(guard).problem()
        if problem:
            self.fail(
                where,
                f"is the guard {guard[:120]!r}, which torch would paste into Python source and "
                f"exec; it is outside the shape-guard grammar ({problem})",
                f"{_RECAPTURE}; torch writes guards like \"L['x'].size()[0] == L['y'].size()[0]\"",
            )

    def _graph_module(self, value: Any, payload_names: set[str]) -> None:
        fields = self.record(
            value,
            "graph_module",
            {"graph", "signature", "module_call_graph"},
            frozenset({"metadata", "treespec_namedtuple_fields"}),
        )
        self._graph(fields["graph"], "graph_module.graph")
        self._signature(fields["signature"], payload_names)
        calls = self.sequence(fields["module_call_graph"], "graph_module.module_call_graph")
        for i, call in enumerate(calls):
            self._module_call(call, f"graph_module.module_call_graph[{i}]")
        metadata = self.mapping(fields.get("metadata", {}), "graph_module.metadata")
        for key, text in metadata.items():
            if key != "custom":
                self.fail(
                    "graph_module.metadata", f"has the key {key[:80]!r}; only 'custom' is known"
                )
            custom = self.string(text, "graph_module.metadata.custom", max_chars=_MAX_TEXT_CHARS)
            self.embedded_json(custom, "graph_module.metadata.custom")
        namedtuples = "graph_module.treespec_namedtuple_fields"
        if self.mapping(fields.get("treespec_namedtuple_fields", {}), namedtuples):
            self.fail(
                "graph_module.treespec_namedtuple_fields",
                "declares namedtuple types; probe inputs and outputs are plain tuples of tensors",
            )

    # -- the graph --

    def _graph(self, value: Any, where: str) -> None:
        fields = self.record(
            value,
            where,
            {"inputs", "outputs", "nodes", "tensor_values", "sym_int_values", "sym_bool_values"},
            frozenset({"is_single_tensor_return", "custom_obj_values", "sym_float_values"}),
        )
        if self.mapping(fields.get("custom_obj_values", {}), f"{where}.custom_obj_values"):
            self.fail(
                f"{where}.custom_obj_values",
                "declares custom (script/torchbind) objects; a probe holds plain tensors only",
            )
        self.boolean(
            fields.get("is_single_tensor_return", False), f"{where}.is_single_tensor_return"
        )
        for name, meta in self.mapping(fields["tensor_values"], f"{where}.tensor_values").items():
            here = f"{where}.tensor_values[{name[:80]!r}]"
            self.identifier(name, here)
            self._tensor_meta(meta, here)
        for key, unions in (
            ("sym_int_values", frozenset({"as_expr", "as_int"})),
            ("sym_float_values", frozenset({"as_expr", "as_float"})),
            ("sym_bool_values", frozenset({"as_expr", "as_bool"})),
        ):
            for name, sym in self.mapping(fields.get(key, {}), f"{where}.{key}").items():
                here = f"{where}.{key}[{name[:80]!r}]"
                self.identifier(name, here)
                self._sym(sym, here, unions)
        for i, item in enumerate(self.sequence(fields["inputs"], f"{where}.inputs")):
            self._argument(item, f"{where}.inputs[{i}]", _GRAPH_INPUT_KINDS)
        for i, item in enumerate(self.sequence(fields["outputs"], f"{where}.outputs")):
            self._argument(item, f"{where}.outputs[{i}]", _ARGUMENT_KINDS)
        for i, node in enumerate(self.sequence(fields["nodes"], f"{where}.nodes")):
            self._node(node, f"{where}.nodes[{i}]")

    def _node(self, value: Any, where: str) -> None:
        fields = self.record(
            value,
            where,
            {"target", "inputs", "outputs", "metadata"},
            frozenset({"is_hop_single_tensor_return", "name"}),
        )
        target = self.string(fields["target"], f"{where}.target")
        if target not in ALLOWED_OPERATORS:
            self.fail(f"{where}.target", _why_operator(target), _OPERATOR_FIX)
        self.operators.add(target)
        self.node_count += 1
        if fields.get("name") is not None:
            self.identifier(fields["name"], f"{where}.name")
        if fields.get("is_hop_single_tensor_return") is not None:
            self.boolean(
                fields["is_hop_single_tensor_return"], f"{where}.is_hop_single_tensor_return"
            )
        for i, item in enumerate(self.sequence(fields["inputs"], f"{where}.inputs")):
            here = f"{where}.inputs[{i}]"
            named = self.record(item, here, {"name", "arg"}, frozenset({"kind"}))
            self.identifier(named["name"], f"{here}.name")
            if named.get("kind") is not None:
                self.choice(named["kind"], f"{here}.kind", {1, 2}, "argument kind")
            self._argument(named["arg"], f"{here}.arg", _ARGUMENT_KINDS)
        for i, item in enumerate(self.sequence(fields["outputs"], f"{where}.outputs")):
            self._argument(item, f"{where}.outputs[{i}]", _ARGUMENT_KINDS)
        self._metadata(self.mapping(fields["metadata"], f"{where}.metadata"), f"{where}.metadata")

    def _metadata(self, metadata: dict[str, Any], where: str) -> None:
        for key, value in metadata.items():
            here = f"{where}.{key}"
            if key not in _METADATA_KEYS:
                self.fail(
                    where, f"has the key {key[:80]!r}; known keys are {sorted(_METADATA_KEYS)}"
                )
            text = self.text(value, here)
            if key in ("from_node", "custom"):
                self.embedded_json(text, here)
            elif key == "nn_module_stack":
                for item in text.split(";"):
                    parts = item.split(",")
                    if (
                        len(parts) != 3
                        or not _MODULE_KEY.match(parts[0])
                        or (parts[1] and not _is_fqn(parts[1]))
                    ):
                        self.fail(
                            here,
                            f"holds {item[:80]!r}, not 'key,module.path,type' with a dotted "
                            "module path (torch.export.unflatten pastes these paths into code)",
                        )
            elif key == "source_fn_stack":
                for item in text.split(";"):
                    if not _SOURCE_FN.match(item) or "__" in item:
                        self.fail(
                            here,
                            f"holds {item[:80]!r}; torch resolves it by attribute lookup and it is "
                            "not 'name,dotted.target'",
                        )

    def _tensor_meta(self, value: Any, where: str) -> None:
        fields = self.record(value, where, _TENSOR_META_KEYS)
        self.choice(fields["dtype"], f"{where}.dtype", set(_DTYPE_SIZES), "dtype")
        self.boolean(fields["requires_grad"], f"{where}.requires_grad")
        self.device(fields["device"], f"{where}.device")
        self.choice(fields["layout"], f"{where}.layout", {_STRIDED}, "layout")
        for key in ("sizes", "strides"):
            for i, item in enumerate(self.sequence(fields[key], f"{where}.{key}")):
                self._sym(item, f"{where}.{key}[{i}]", frozenset({"as_expr", "as_int"}))
        self._sym(
            fields["storage_offset"], f"{where}.storage_offset", frozenset({"as_expr", "as_int"})
        )

    def _sym(self, value: Any, where: str, allowed: frozenset[str]) -> None:
        """A SymInt/SymFloat/SymBool: a literal, or an expression torch hands to sympify."""
        kind, inner = self.union(value, where, allowed)
        here = f"{where}.{kind}"
        if kind == "as_int":
            self.integer(inner, here)
        elif kind == "as_float":
            self.number(inner, here)
        elif kind == "as_bool":
            self.boolean(inner, here)
        else:
            fields = self.record(inner, here, {"expr_str"}, frozenset({"hint"}))
            self._expression(fields["expr_str"], f"{here}.expr_str")
            if fields.get("hint") is not None:
                hint_kind, hint = self.union(fields["hint"], f"{here}.hint", _HINT_KINDS)
                if hint_kind == "as_int":
                    self.integer(hint, f"{here}.hint.as_int")
                elif hint_kind == "as_bool":
                    self.boolean(hint, f"{here}.hint.as_bool")
                else:
                    self.number(hint, f"{here}.hint.as_float")

    def _expression(self, value: Any, where: str) -> None:
        expression = self.string(value, where, max_chars=_MAX_EXPR_CHARS)
        problem = _SymExprParser(expression).problem()
        if problem:
            self.fail(
                where,
                f"is the symbolic expression {expression[:120]!r}, which torch would hand to "
                f"sympy.sympify (an eval); it is outside the shape-expression grammar ({problem})",
                f"{_RECAPTURE}; torch writes expressions like \"Mul(Integer(4), Symbol('s0', "
                'positive=True, integer=True))"',
            )

    def _argument(self, value: Any, where: str, allowed: frozenset[str]) -> None:
        if isinstance(value, dict) and len(value) == 1:
            (kind,) = value
            if kind in _FORBIDDEN_ARGUMENTS and kind not in allowed:
                self.fail(where, _FORBIDDEN_ARGUMENTS[kind])
        kind, inner = self.union(value, where, allowed)
        here = f"{where}.{kind}"
        check = _ARGUMENT_CHECKS[kind]
        if kind in _LIST_KINDS:
            for i, item in enumerate(self.sequence(inner, here)):
                check(self, item, f"{here}[{i}]")
        else:
            check(self, inner, here)

    def _tensor_argument(self, value: Any, where: str) -> None:
        self.identifier(self.record(value, where, {"name"})["name"], f"{where}.name")

    def _sym_argument(self, value: Any, where: str, literal: str) -> None:
        kind, inner = self.union(value, where, frozenset({"as_name", literal}))
        if kind == "as_name":
            self.identifier(inner, f"{where}.as_name")
        elif literal == "as_int":
            self.integer(inner, f"{where}.as_int")
        elif literal == "as_float":
            self.number(inner, f"{where}.as_float")
        else:
            self.boolean(inner, f"{where}.as_bool")

    def _optional_tensor(self, value: Any, where: str) -> None:
        kind, inner = self.union(value, where, frozenset({"as_tensor", "as_none"}))
        if kind == "as_tensor":
            self._tensor_argument(inner, f"{where}.as_tensor")
        else:
            self.boolean(inner, f"{where}.as_none")

    # -- signature and module call graph --

    def _signature(self, value: Any, payload_names: set[str]) -> None:
        where = "graph_module.signature"
        fields = self.record(value, where, {"input_specs", "output_specs"})
        for i, spec in enumerate(self.sequence(fields["input_specs"], f"{where}.input_specs")):
            self._input_spec(spec, f"{where}.input_specs[{i}]", payload_names)
        for i, spec in enumerate(self.sequence(fields["output_specs"], f"{where}.output_specs")):
            self._output_spec(spec, f"{where}.output_specs[{i}]")

    def _input_spec(self, spec: Any, where: str, payload_names: set[str]) -> None:
        if isinstance(spec, dict) and set(spec) & {"custom_obj", "token"}:
            self.fail(
                where,
                f"is a {next(iter(spec))!r} input: a custom (script) object or an effect token, "
                "which a probe never takes",
            )
        kind, inner = self.union(spec, where, _INPUT_SPECS)
        here = f"{where}.{kind}"
        if kind == "user_input":
            arg = self.record(inner, here, {"arg"})["arg"]
            self._argument(arg, f"{here}.arg", _GRAPH_INPUT_KINDS)
            return
        if kind == "constant_input":
            fields = self.record(inner, here, {"name", "value"})
            self.identifier(fields["name"], f"{here}.name")
            self._constant_value(fields["value"], f"{here}.value")
            return
        key = f"{kind}_name"  # parameter_name, buffer_name, tensor_constant_name
        optional = frozenset({"persistent"}) if kind == "buffer" else frozenset()
        fields = self.record(inner, here, {"arg", key}, optional)
        self._tensor_argument(fields["arg"], f"{here}.arg")
        if "persistent" in fields:
            self.boolean(fields["persistent"], f"{here}.persistent")
        target = self.fqn(fields[key], f"{here}.{key}")
        if target not in payload_names:
            self.fail(
                f"{here}.{key}",
                f"names {target!r}, which neither the weights nor the constants config holds",
            )

    def _output_spec(self, spec: Any, where: str) -> None:
        if isinstance(spec, dict) and "token" in spec:
            self.fail(where, "is an effect-token output, which a probe never returns")
        kind, inner = self.union(spec, where, _OUTPUT_SPECS)
        here = f"{where}.{kind}"
        if kind == "user_output":
            arg = self.record(inner, here, {"arg"})["arg"]
            self._argument(arg, f"{here}.arg", _ARGUMENT_KINDS)
            return
        key = _OUTPUT_NAME_KEYS[kind]
        fields = self.record(inner, here, {"arg", key} if key else {"arg"})
        self._tensor_argument(fields["arg"], f"{here}.arg")
        if key == "user_input_name":
            self.identifier(fields[key], f"{here}.{key}")
        elif key:
            self.fqn(fields[key], f"{here}.{key}")

    def _constant_value(self, value: Any, where: str) -> None:
        kind, inner = self.union(value, where, _CONSTANT_KINDS)
        _ARGUMENT_CHECKS[kind](self, inner, f"{where}.{kind}")

    def _module_call(self, value: Any, where: str) -> None:
        fields = self.record(value, where, {"fqn"}, frozenset({"signature"}))
        self.fqn(fields["fqn"], f"{where}.fqn", allow_empty=True)
        if fields.get("signature") is None:
            return
        here = f"{where}.signature"
        signature = self.record(
            fields["signature"],
            here,
            {"inputs", "outputs", "in_spec", "out_spec"},
            frozenset({"forward_arg_names"}),
        )
        for key in ("inputs", "outputs"):
            for i, item in enumerate(self.sequence(signature[key], f"{here}.{key}")):
                self._argument(item, f"{here}.{key}[{i}]", _ARGUMENT_KINDS)
        for key in ("in_spec", "out_spec"):
            text = self.string(signature[key], f"{here}.{key}", max_chars=_MAX_TEXT_CHARS)
            spec = self.embedded_json(text, f"{here}.{key}")
            if not isinstance(spec, list) or len(spec) != 2 or spec[0] != 1:
                self.fail(f"{here}.{key}", "is not a protocol-1 treespec [1, {...}]")
            self._treespec(spec[1], f"{here}.{key}", 0)
        names = signature.get("forward_arg_names")
        if names is not None:
            for i, name in enumerate(self.sequence(names, f"{here}.forward_arg_names")):
                self.identifier(name, f"{here}.forward_arg_names[{i}]")

    def _treespec(self, value: Any, where: str, depth: int) -> None:
        """A pytree spec node: a leaf, a tuple/list, or a dict whose keys are identifiers."""
        if depth > _MAX_JSON_DEPTH:
            self.fail(where, "nests treespecs too deeply")
        node = self.record(value, where, {"type", "context", "children_spec"})
        kind, context = node["type"], node["context"]
        children = self.sequence(node["children_spec"], f"{where}.children_spec")
        if kind not in _TREESPEC_TYPES:
            self.fail(
                where,
                f"has a {str(kind)[:80]!r} treespec node; torch imports or looks up such types "
                "(only tuple, list, dict and OrderedDict are allowed)",
            )
        if kind is None:
            if context is not None or children:
                self.fail(where, "is a leaf treespec with a context or children")
            return
        text = self.string(context, f"{where}.context", max_chars=_MAX_TEXT_CHARS)
        keys = self.embedded_json(text, f"{where}.context")
        if kind in ("builtins.tuple", "builtins.list"):
            keys_ok = keys is None
        else:
            keys_ok = (
                isinstance(keys, list)
                and len(keys) == len(children)
                and all(isinstance(key, str) and _is_identifier(key) for key in keys)
            )
        if not keys_ok:
            self.fail(
                f"{where}.context",
                f"is {text[:80]!r}; a tuple or list context is null and a dict context lists "
                "identifier keys (objects reach torch's enum hook, which imports modules, and "
                "ExportedProgram.module() pastes dict keys into generated code)",
            )
        for i, child in enumerate(children):
            self._treespec(child, f"{where}.children_spec[{i}]", depth + 1)


_OPERATOR_FIX = (
    "Probes may only call the core ATen operators listed in obstacle.artifacts.allowed_ops; "
    f"{_RECAPTURE} (it runs run_decompositions()), and if a model genuinely needs another pure "
    "operator, ask for it to be added to the allow-list"
)


def _why_operator(target: str) -> str:
    shown = repr(target[:120])
    if target.startswith("torch.ops.higher_order."):
        return (
            f"calls the higher-order operator {shown}; higher-order operators carry subgraphs or "
            "wrap arbitrary operators and are not allowed"
        )
    if target.startswith("torch.ops.aten."):
        return (
            f"calls {shown}, which is not in the allow-list of pure ATen operators (operators with "
            "file, network, process, storage or uninitialised-memory effects are excluded)"
        )
    if target.startswith("torch.ops."):
        namespace = target.split(".")[2]
        return (
            f"calls {shown} from the operator namespace {namespace[:40]!r}; only torch.ops.aten "
            "(and Python shape arithmetic) is allowed"
        )
    return (
        f"calls {shown}, which is not an ATen operator; torch would resolve it by attribute "
        "lookup from torch, operator or math and call whatever it finds"
    )


_FORBIDDEN_ARGUMENTS = {
    "as_graph": "passes a subgraph, which only higher-order operators take",
    "as_custom_obj": "passes a custom (script/torchbind) object, which a probe never holds",
    "as_operator": "passes an operator as a value, which torch resolves by attribute lookup",
}

_ArgumentCheck = Callable[[_ProgramChecker, Any, str], None]


def _check_none(checker: _ProgramChecker, value: Any, where: str) -> None:
    if value is not None:
        checker.boolean(value, where)


def _check_int(checker: _ProgramChecker, value: Any, where: str) -> None:
    checker.integer(value, where)


def _check_bool(checker: _ProgramChecker, value: Any, where: str) -> None:
    checker.boolean(value, where)


def _check_string(checker: _ProgramChecker, value: Any, where: str) -> None:
    checker.string(value, where)
    checker.text(value, where)


def _check_sym_int(checker: _ProgramChecker, value: Any, where: str) -> None:
    checker._sym_argument(value, where, "as_int")


def _check_sym_float(checker: _ProgramChecker, value: Any, where: str) -> None:
    checker._sym_argument(value, where, "as_float")


def _check_sym_bool(checker: _ProgramChecker, value: Any, where: str) -> None:
    checker._sym_argument(value, where, "as_bool")


def _check_dtype(checker: _ProgramChecker, value: Any, where: str) -> None:
    checker.choice(value, where, set(_DTYPE_SIZES), "dtype")


def _check_memory_format(checker: _ProgramChecker, value: Any, where: str) -> None:
    checker.choice(value, where, _MEMORY_FORMATS, "memory format")


def _check_layout(checker: _ProgramChecker, value: Any, where: str) -> None:
    checker.choice(value, where, {_STRIDED}, "layout")


def _check_complex(checker: _ProgramChecker, value: Any, where: str) -> None:
    fields = checker.record(value, where, {"real", "imag"})
    checker.number(fields["real"], f"{where}.real")
    checker.number(fields["imag"], f"{where}.imag")


# One check per allowed argument kind; a list kind applies its check to every item.
_ARGUMENT_CHECKS: dict[str, _ArgumentCheck] = {
    "as_none": _check_none,
    "as_tensor": _ProgramChecker._tensor_argument,
    "as_tensors": _ProgramChecker._tensor_argument,
    "as_int": _check_int,
    "as_ints": _check_int,
    "as_float": _JsonChecker.number,
    "as_floats": _JsonChecker.number,
    "as_string": _check_string,
    "as_strings": _check_string,
    "as_bool": _check_bool,
    "as_bools": _check_bool,
    "as_sym_int": _check_sym_int,
    "as_sym_ints": _check_sym_int,
    "as_sym_float": _check_sym_float,
    "as_sym_floats": _check_sym_float,
    "as_sym_bool": _check_sym_bool,
    "as_sym_bools": _check_sym_bool,
    "as_scalar_type": _check_dtype,
    "as_memory_format": _check_memory_format,
    "as_layout": _check_layout,
    "as_device": _JsonChecker.device,
    "as_optional_tensors": _ProgramChecker._optional_tensor,
    "as_optional_tensor": _ProgramChecker._optional_tensor,
    "as_complex": _check_complex,
}
_LIST_KINDS = frozenset(
    {
        "as_tensors", "as_ints", "as_floats", "as_strings", "as_bools", "as_sym_ints",
        "as_sym_floats", "as_sym_bools", "as_optional_tensors",
    }
)  # fmt: skip


# -- the two expression grammars --------------------------------------------------------------

_SYM_TOKEN = re.compile(
    r" *(?:(?P<int>[0-9]+)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<str>'[A-Za-z0-9_]*'|\"[A-Za-z0-9_]*\")|(?P<op>//|==|!=|<=|>=|[-+*%(),=<>]))"
)
_GUARD_TOKEN = re.compile(
    r" *(?:(?P<int>[0-9]+)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<str>'[A-Za-z0-9_]*')|(?P<op>//|==|!=|<=|>=|[-+*%()<>\[\].]))"
)
_COMPARISONS = frozenset({"==", "!=", "<=", ">=", "<", ">"})
# sympy classes and torch.utils._sympy.functions that integer shape arithmetic needs.
_SYM_FUNCTIONS = frozenset(
    {
        "Add", "Mul", "Mod", "PythonMod", "FloorDiv", "CeilDiv", "CleanDiv", "CeilToInt",
        "Max", "Min", "Equality", "Unequality", "StrictLessThan", "LessThan",
        "StrictGreaterThan", "GreaterThan", "Eq", "Ne", "Lt", "Le", "Gt", "Ge",
        "And", "Or", "Not",
    }
)  # fmt: skip
_SYM_CONSTANTS = frozenset({"oo", "int_oo", "True", "False", "true", "false"})
_ASSUMPTIONS = frozenset(
    {
        "integer", "positive", "negative", "nonnegative", "nonpositive", "real", "finite",
        "zero", "nonzero", "even", "odd", "rational", "extended_real", "commutative",
    }
)  # fmt: skip
_UNBACKED = re.compile(r"(?:u|zuf)[0-9]{1,6}\Z")
_MAX_INT_DIGITS = 19


def _is_symbol_name(name: str) -> bool:
    return (
        len(name) <= 64
        and _is_identifier(name)
        and name not in _BUILTIN_NAMES
        and name not in _SYM_FUNCTIONS
        and name not in _SYM_CONSTANTS
        and name not in {"Symbol", "Integer"}
    )


class _GrammarError(Exception):
    pass


class _Grammar:
    """A recursive-descent recogniser over a token list; subclasses define the atoms."""

    token_pattern: re.Pattern[str] = _SYM_TOKEN

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[tuple[str, str, int]] = []
        self.i = 0

    def problem(self) -> str | None:
        """``None`` when ``text`` is in the grammar, else what is wrong and where."""
        try:
            if len(self.text) > _MAX_EXPR_CHARS:
                raise _GrammarError(f"longer than {_MAX_EXPR_CHARS} characters")
            self._tokenize()
            self.parse()
            if self.i != len(self.tokens):
                self.error("unexpected token")
        except _GrammarError as exc:
            return str(exc)
        return None

    def parse(self) -> None:
        raise NotImplementedError

    def _tokenize(self) -> None:
        at = 0
        end = len(self.text.rstrip(" "))
        while at < end:
            match = self.token_pattern.match(self.text, at)
            if match is None or match.end() == at:
                column = at + len(self.text[at:]) - len(self.text[at:].lstrip(" "))
                raise _GrammarError(f"{self.text[column]!r} at column {column} is not allowed")
            kind = match.lastgroup or ""
            self.tokens.append((kind, match.group(kind), match.start(kind)))
            at = match.end()
        if not self.tokens:
            raise _GrammarError("empty")

    def peek(self) -> str:
        return self.tokens[self.i][1] if self.i < len(self.tokens) else ""

    def take(self) -> tuple[str, str, int]:
        if self.i >= len(self.tokens):
            raise _GrammarError("ends too early")
        token = self.tokens[self.i]
        self.i += 1
        return token

    def expect(self, text: str) -> None:
        if self.peek() != text:
            self.error(f"expected {text!r}")
        self.i += 1

    def error(self, why: str) -> NoReturn:
        if self.i < len(self.tokens):
            _, text, column = self.tokens[self.i]
            raise _GrammarError(f"{why}, found {text!r} at column {column}")
        raise _GrammarError(f"{why} at the end")

    def integer(self, text: str) -> None:
        if len(text) > _MAX_INT_DIGITS:
            raise _GrammarError(f"the integer {text[:24]}… has more than {_MAX_INT_DIGITS} digits")

    def comparison(self, depth: int) -> None:
        self.arith(depth)
        while self.peek() in _COMPARISONS:
            self.i += 1
            self.arith(depth)

    def arith(self, depth: int) -> None:
        self.term(depth)
        while self.peek() in ("+", "-"):
            self.i += 1
            self.term(depth)

    def term(self, depth: int) -> None:
        self.unary(depth)
        while self.peek() in ("*", "//", "%"):
            self.i += 1
            self.unary(depth)

    def unary(self, depth: int) -> None:
        if depth > _MAX_EXPR_DEPTH:
            raise _GrammarError(f"nested deeper than {_MAX_EXPR_DEPTH}")
        if self.peek() in ("+", "-"):
            self.i += 1
            self.unary(depth + 1)
        else:
            self.atom(depth)

    def atom(self, depth: int) -> None:
        raise NotImplementedError


class _SymExprParser(_Grammar):
    """sympy ``srepr`` and infix forms of integer shape expressions.

    expr   := arith (CMP arith)*          arith := term (("+"|"-") term)*
    term   := unary (("*"|"//"|"%") unary)*   unary := ("+"|"-") unary | atom
    atom   := INT | SYMBOL | CONSTANT | "(" expr ")" | FUNC "(" expr ("," expr)* ")"
            | "Integer(" ["-"] INT ")" | "Symbol(" 'SYMBOL' ("," ASSUMPTION "=" BOOL)* ")"
    No attribute access, no other calls, no strings outside ``Symbol``, no floats, no powers.
    """

    def parse(self) -> None:
        self.comparison(0)

    def atom(self, depth: int) -> None:
        kind, text, _ = self.take()
        if kind == "int":
            self.integer(text)
        elif text == "(":
            self.comparison(depth + 1)
            self.expect(")")
        elif kind == "name" and self.peek() == "(":
            self.i += 1
            self.call(text, depth + 1)
        elif kind == "name" and (text in _SYM_CONSTANTS or _is_symbol_name(text)):
            return
        else:
            self.i -= 1
            self.error("expected a number, a shape symbol or an allowed function")

    def call(self, name: str, depth: int) -> None:
        if name == "Symbol":
            kind, text, _ = self.take()
            if kind != "str" or not _is_symbol_name(text[1:-1]):
                self.i -= 1
                self.error("Symbol() takes a quoted shape-symbol name")
            while self.peek() == ",":
                self.i += 1
                kind, text, _ = self.take()
                if kind != "name" or text not in _ASSUMPTIONS:
                    self.i -= 1
                    self.error("expected a sympy assumption such as integer=True")
                self.expect("=")
                if self.take()[1] not in ("True", "False"):
                    self.i -= 1
                    self.error("assumptions are True or False")
        elif name == "Integer":
            if self.peek() == "-":
                self.i += 1
            kind, text, _ = self.take()
            if kind != "int":
                self.i -= 1
                self.error("Integer() takes an integer literal")
            self.integer(text)
        elif name in _SYM_FUNCTIONS:
            self.comparison(depth)
            while self.peek() == ",":
                self.i += 1
                self.comparison(depth)
        else:
            self.i -= 2
            self.error(f"calling {name[:40]!r} is not allowed")
        self.expect(")")


class _GuardParser(_Grammar):
    """Shape guards as torch 2.13 writes them into ``guards_code``.

    guard  := conj ("or" conj)*        conj := neg ("and" neg)*     neg := "not" neg | comparison
    atom   := INT | "(" guard ")" | "L" "[" 'NAME' "]" ("[" ('NAME'|INT) "]"
              | ".size()[" INT "]" | ".stride()[" INT "]" | ".storage_offset()")*
    Strings are single-quoted identifiers: no quotes or backslashes can reach the generated code.
    """

    token_pattern = _GUARD_TOKEN

    def parse(self) -> None:
        self.disjunction(0)

    def disjunction(self, depth: int) -> None:
        self.conjunction(depth)
        while self.peek() == "or":
            self.i += 1
            self.conjunction(depth)

    def conjunction(self, depth: int) -> None:
        self.negation(depth)
        while self.peek() == "and":
            self.i += 1
            self.negation(depth)

    def negation(self, depth: int) -> None:
        if depth > _MAX_EXPR_DEPTH:
            raise _GrammarError(f"nested deeper than {_MAX_EXPR_DEPTH}")
        if self.peek() == "not":
            self.i += 1
            self.negation(depth + 1)
        else:
            self.comparison(depth)

    def atom(self, depth: int) -> None:
        kind, text, _ = self.take()
        if kind == "int":
            self.integer(text)
        elif text == "(":
            self.disjunction(depth + 1)
            self.expect(")")
        elif kind == "name" and text == "L":
            self.source()
        else:
            self.i -= 1
            self.error("expected an integer or an input source L['name']")

    def source(self) -> None:
        self.expect("[")
        if self.take()[0] != "str":
            self.i -= 1
            self.error("expected a quoted input name")
        self.expect("]")
        while self.peek() in ("[", "."):
            if self.take()[1] == "[":
                if self.take()[0] not in ("str", "int"):
                    self.i -= 1
                    self.error("expected a quoted key or an index")
                self.expect("]")
                continue
            kind, method, _ = self.take()
            if kind != "name" or method not in ("size", "stride", "storage_offset"):
                self.i -= 1
                self.error("only .size()[i], .stride()[i] and .storage_offset() are allowed")
            self.expect("(")
            self.expect(")")
            if method != "storage_offset":
                self.expect("[")
                kind, text, _ = self.take()
                if kind != "int":
                    self.i -= 1
                    self.error("expected a dimension index")
                self.integer(text)
                self.expect("]")

"""Validate an uploaded ``torch.export`` archive (``.pt2``) before any byte of it reaches torch.

Torch-free on purpose: the service runs this without torch installed, and the workers run it
again (through ``obstacle.battery._safe_load.load_program_safely``) right before
``torch.export.load``. Nothing here unpickles, imports, evaluates or parses an expression with
anything but the small grammars in ``_grammar``.

This module is the public face (``validate_program_archive``, ``ArchiveSummary``) and runs one
validation: the container, then the weights and constants configs, then the program. The checks
live in package-private modules: ``_zip`` (the zip container and the entry allow-list), ``_json``
(bounded JSON, typed access and the name grammars), ``_grammar`` (the shape-expression and guard
grammars) and ``_program`` (the schema walk over ``models/model.json``).

Every place where torch 2.13's loader (``torch.export.load`` → ``pt2_archive._package.load_pt2``
→ ``_export.serde.serialize.ExportedProgramDeserializer``, then ``ExportedProgram.module()``)
executes, unpickles, imports, ``eval``s or ``sympify``s something taken from the file, and the
rule here that covers it:

1. ``data/sample_inputs/<model>.pt`` → ``deserialize_torch_artifact``: ``torch.load(weights_only=
   True)`` and, on *any* failure, ``torch.load(weights_only=False)``, i.e. a plain pickle.
   Rule (``_zip``): the entry must exist and be empty (obstacle saves no sample inputs).
2. ``data/weights/<model>_weights_config.json`` and ``data/constants/<model>_constants_config.json``
   entries with ``use_pickle: true`` → ``torch.load(..., weights_only=False)``.
   Rule (this module's ``_check_payload_config``, tensor layouts in ``_json``): ``use_pickle``
   must be false; every payload is raw tensor bytes whose size is exactly what the entry's dtype,
   shape, strides and offset need.
3. Constants whose ``path_name`` starts ``custom_obj_`` → ``torch._C._pickle_load_obj`` (TorchScript
   unpickler instantiating torchbind classes); ``opaque_obj_`` → ``pickle.loads``.
   Rule: constant payloads are ``tensor_<n>`` only (``_zip`` and this module's configs check);
   ``custom_obj`` and ``token`` signature specs, ``custom_obj_values`` and ``as_custom_obj``
   arguments are rejected (``_program``).
4. Legacy ``data/weights/<model>.pt`` / ``data/constants/<model>.pt`` → handed as bytes to
   ``deserialize_torch_artifact`` (the same pickle fallback as 1). Rule (``_zip``): entry-name
   allow-list.
5. ``data/aotinductor/<model>/…`` → ``AOTIModelPackageLoader`` ``dlopen``s a shared library; with
   ``load_weights_from_disk`` every ``data/weights/*`` is ``torch.load``ed. Rule (``_zip``): entry
   allow-list.
6. Every ``models/*.json`` is deserialized, not only ``models/model.json``, each with its own
   weights, constants and sample inputs. Rule (``_zip``): only ``models/model.json``.
7. If ``load_pt2`` raises ``RuntimeError``, ``torch.export.load`` falls back to the pre-2.8 layout:
   a root-level ``version`` and ``serialized_*.pt`` pickles. Rule (``_zip``): one top-level folder,
   allow-list.
8. ``SymExpr.expr_str`` (tensor sizes, strides and storage offsets in ``tensor_values``,
   ``sym_int_values``, ``sym_float_values``, ``sym_bool_values``) → ``sympy.sympify``, which
   ``eval``s the string with builtins such as ``__import__``, ``open`` and ``eval`` in scope.
   Rule: a strict expression grammar (``_grammar._SymExprParser``, applied by ``_program``);
   hints are typed numbers.
9. ``range_constraints`` bounds are integers (no parsing), but keys that start with ``u``/``zuf``
   are ``int()``-parsed and drive a loop of that many iterations. Rule: symbol-name grammar with
   at most six digits (``_grammar._is_symbol_name`` and ``_UNBACKED``, applied by ``_program``).
10. ``guards_code`` → ``torch.export._unlift._convert_guards_code_to_fn`` pastes each string into
    Python source that ``ExportedProgram.module()`` ``exec``s (when the program carries example
    inputs) and calls on every forward.
    torch 2.13 *does* write benign guards for a dynamic batch (``L['x'].size()[0] ==
    L['y'].size()[0]``), so each string must match a strict guard grammar
    (``_grammar._GuardParser``, applied by ``_program``).
11. ``Node.target`` → ``deserialize_operator`` walks attributes from ``torch``, ``operator`` or
    ``math`` (``torch.serialization.os.system`` resolves to ``os.system``), ``#ns:op`` goes to an
    extension registry, and ``OpOverload``s include side-effecting ops (``aten.from_file`` reads a
    server file into the graph's output). Rule (``_program``): the operator allow-list in
    ``allowed_ops``; ``as_operator`` and ``as_graph`` (subgraph) arguments are rejected.
12. Names torch pastes into generated Python source: the FX code of the deserialized graph is
    ``exec``uted during ``torch.export.load`` and uses placeholder and node names raw
    (``def forward(self, <name>)``, ``<name> = …``), so ``y=__import__('os').system(…)`` runs at
    load; parameter, buffer and constant FQNs become ``get_attr`` targets pasted as
    ``getattr(self, "<segment>")`` by ``ExportedProgram.module()``. Rule (``_json``'s
    ``identifier`` and ``fqn``, applied by ``_program`` and the configs): every value name is a
    Python identifier (no keyword, no leading ``__``); FQNs are dotted ``[A-Za-z0-9_]`` segments.
13. ``module_call_graph[*].signature.in_spec``/``out_spec`` → ``treespec_loads``: a ``defaultdict``
    node ``importlib.import_module``s the module named in the file, and ``enum_object_hook``
    imports ``{"__enum__": …, "fqn": "module:Class"}`` objects in any context; ``module()`` then
    pastes dict keys (``'{key}': …``) and ``forward_arg_names`` into generated source. Rule
    (``_program``): treespecs use only tuple, list, dict and OrderedDict nodes, dict contexts
    list identifier keys, argument names are identifiers, and ``treespec_namedtuple_fields`` is
    empty.
14. Node metadata: ``source_fn_stack`` targets are resolved by ``getattr`` walks like node
    targets; ``custom`` and ``from_node`` are ``json.loads``ed; ``nn_module_stack`` module paths
    become submodule names in ``torch.export.unflatten``; ``torch_fn`` and ``stack_trace`` are
    only stored. Rule (``_program``): allow-listed keys, strict ``source_fn_stack`` and
    ``nn_module_stack`` grammars, bounded JSON, and text without control characters.
15. ``verifiers`` → ``load_verifier`` (a registry lookup); ``graph_module.metadata["custom"]`` →
    ``json.loads``. Rule (``_program``): verifiers are ``"ATEN"``; the metadata holds at most
    bounded JSON.
16. The JSON documents: ``json.loads`` (unbounded depth, last duplicate key wins) then
    ``_dict_to_dataclass`` (silently ignores unknown keys). Rule (``_json``, with the size limit
    in ``_zip`` and the schema in ``_program``): bounded size and depth, no duplicate keys, no
    ``NaN``/``Infinity`` literals, and no key outside torch 2.13's schema, so that a newer torch on
    a worker cannot act on a field this validator never looked at.
17. The zip container, read by miniz in C++ (``PyTorchFileReader``). Rule (``_zip``): bounded
    size and entry count, stored (uncompressed) entries only, no bytes before the first entry, no
    overlapping entries, names from ``[A-Za-z0-9._/-]`` without ``..`` or duplicates, CRCs verified.

Resource use by a valid program (a huge ``full``, a long graph) is left to the workers' time and
memory limits; these modules only guarantee that loading runs no code from the upload.
"""

from __future__ import annotations

import re
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from obstacle.artifacts._grammar import _GuardParser as _GuardParser
from obstacle.artifacts._grammar import _SymExprParser as _SymExprParser
from obstacle.artifacts._json import _JsonChecker
from obstacle.artifacts._program import _ProgramChecker
from obstacle.artifacts._zip import (
    _CONSTANT_FILE,
    _CONSTANTS_CONFIG,
    _MODEL_JSON,
    _RECAPTURE,
    _WEIGHT_FILE,
    _WEIGHTS_CONFIG,
    PROGRAM_SIZE_FIX,
    _describe_payload,
    _Limits,
    _open_source,
    _ZipContainer,
)
from obstacle.errors import ParameterError

__all__ = [
    "MAX_PROGRAM_BYTES",
    "PROGRAM_SIZE_FIX",
    "ArchiveSummary",
    "validate_program_archive",
]


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
    parameters: tuple[tuple[str, tuple[int, ...]], ...] = ()
    """(FQN, sizes) of every weight the weights config marks ``is_param``, in file order."""


#: The largest probe program the SDK saves, the service accepts and a worker loads: one limit, so
#: that nothing accepted at upload is refused later. A program holds its model's weights (4 bytes
#: per float32 parameter): 2 GiB is about 500M parameters, past the 125M the battery is sized for.
MAX_PROGRAM_BYTES = 2 * 2**30


def validate_program_archive(
    path: str | Path | BinaryIO,
    *,
    max_bytes: int = MAX_PROGRAM_BYTES,
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


class _ArchiveValidator(_ZipContainer):
    """One validation of one archive: the zip container, then its entries, then their contents."""

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
        self.parameters: list[tuple[str, tuple[int, ...]]] = []
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
            parameters=tuple(self.parameters),
        )

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
            is_param = checker.boolean(fields["is_param"], f"{where}.is_param")
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
            if is_param:  # payload_tensor_meta checked each size is {"as_int": n}
                sizes = tuple(int(size["as_int"]) for size in fields["tensor_meta"]["sizes"])
                self.parameters.append((fqn, sizes))
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

"""Bounded, typed access to the JSON documents of an uploaded ``.pt2`` archive.

Bounded depth, unique keys, no ``NaN``/``Infinity`` literals, exact key sets (rule 16 of
``obstacle.artifacts.archive``), and the identifier and FQN grammars for names torch pastes into
generated source (rule 12). Torch-free.
"""

from __future__ import annotations

import keyword
import re
from dataclasses import replace
from typing import Any, NoReturn

from obstacle.artifacts._zip import _RECAPTURE, _ZipContainer
from obstacle.artifacts.untrusted_json import JsonLimits, JsonRuleError, load_bounded_json

_MAX_JSON_DEPTH = 64
_MAX_TEXT_CHARS = 1 << 16
_MAX_NAME_CHARS = 256
_INT64 = 1 << 63
_MAX_DIMS = 64
_MAX_PAYLOAD_BYTES = 1 << 34  # one weight of a probe; the archive's own limit is lower by default

# ScalarType code (torch/_export/serde/schema.py) -> element size in bytes. UNKNOWN (0) is absent.
_DTYPE_SIZES = {
    1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 2, 7: 4, 8: 8, 9: 4, 10: 8, 11: 16, 12: 1, 13: 2,
    28: 2, 29: 1, 30: 1, 31: 1, 32: 1, 33: 1, 34: 4, 35: 8,
}  # fmt: skip
_STRIDED = 7  # Layout.Strided; sparse and mkldnn layouts are never needed
_MEMORY_FORMATS = {1, 2, 3, 4}
_DEVICE_TYPES = {"cpu", "cuda"}


def _parse_json(text: str | bytes, *, max_depth: int) -> Any:
    """Bounded JSON (``untrusted_json``): nesting, numbers, strings, unique keys, no NaN literals."""
    return load_bounded_json(text, replace(_ARCHIVE_JSON, max_depth=max_depth))


_ARCHIVE_JSON = JsonLimits(
    max_bytes=1 << 40,  # the entry's size is bounded by the container's max_json_bytes
    max_depth=_MAX_JSON_DEPTH,
    max_number_chars=40,
    max_int=_INT64,
    max_string_chars=1 << 20,
    max_items=1 << 40,  # a large program's graph is many values; its size is bounded instead
)


class _JsonChecker:
    """Typed access to one JSON document, failing with the entry and the JSON path."""

    def __init__(self, archive: _ZipContainer, entry: str) -> None:
        self.archive = archive
        self.entry = entry

    def fail(self, where: str, problem: str, fix: str = _RECAPTURE) -> NoReturn:
        self.archive.fail(self.entry, f"at {where}: {problem}" if where else problem, fix)

    def load(self, raw: bytes) -> Any:
        try:
            return _parse_json(raw, max_depth=_MAX_JSON_DEPTH)
        except JsonRuleError as exc:
            self.fail("", f"is not valid, bounded JSON ({exc})")

    def embedded_json(self, text: str, where: str) -> Any:
        try:
            return _parse_json(text, max_depth=_MAX_JSON_DEPTH)
        except JsonRuleError as exc:
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
        if len(sizes) > _MAX_DIMS:
            self.fail(
                f"{where}.sizes", f"has {len(sizes)} dimensions, over the limit of {_MAX_DIMS}"
            )
        if any(size == 0 for size in sizes):
            return dtype, 0
        self._check_no_overlap(sizes, strides, where)
        numel = 1
        for size in sizes:
            numel *= size
        if numel * _DTYPE_SIZES[dtype] > _MAX_PAYLOAD_BYTES:
            self.fail(
                f"{where}.sizes",
                f"is a {numel}-element tensor ({sizes}), over the limit of {_MAX_PAYLOAD_BYTES} "
                "bytes for one weight or constant of a probe",
            )
        elements = (
            offset
            + 1
            + sum((size - 1) * stride for size, stride in zip(sizes, strides, strict=True))
        )
        return dtype, elements * _DTYPE_SIZES[dtype]

    def _check_no_overlap(self, sizes: list[int], strides: list[int], where: str) -> None:
        """No two elements of the view share storage (a stride-0 or overlapping view is refused).

        torch.export.save writes each weight's own storage; a view whose elements overlap (a
        stride of 0 over a large size, or strides smaller than the dimensions inside them) would
        make a tensor far larger than the bytes stored, which the workers then materialise.
        """
        extent = 1  # elements spanned by the dimensions with smaller strides
        for stride, size in sorted(
            (st, sz) for st, sz in zip(strides, sizes, strict=True) if sz > 1
        ):
            if stride < extent:
                self.fail(
                    f"{where}.strides",
                    f"are {strides} for sizes {sizes}: the view's elements overlap (a stride of "
                    f"{stride} where at least {extent} is needed), so it is larger than its storage",
                )
            extent = stride * (size - 1) + extent

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

"""The one place where obstacle parses JSON it did not write itself.

Every uploaded document goes through ``parse_untrusted_json``: the safetensors header and its
metadata, the optimizer entry of a checkpoint header, the probe manifest, the lines of a training
log and the JSON documents of a ``.pt2`` program archive. Python's ``json.loads`` alone has no
bound on size, nesting depth (deep nesting is a ``RecursionError``), number length (a
5,000-digit integer is a ``ValueError`` from ``int``, and a shorter one is a slow bignum) or
string length, keeps the last of two duplicate keys (other readers keep the first), and reads
``NaN``/``Infinity``, which are not JSON. Here each of those is refused with the caller's
``InputError`` subclass, whose message names the input, the rule broken, the value seen and the
fix. Torch-free.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from obstacle.errors import InputError

__all__ = ["JsonLimits", "JsonRuleError", "load_bounded_json", "parse_untrusted_json"]


@dataclass(frozen=True)
class JsonLimits:
    """Bounds on one untrusted JSON document.

    ``max_bytes``: size of the encoded document; ``max_depth``: nesting of arrays and objects;
    ``max_number_chars``: characters of one number literal (``-1.5e-3`` is 7); ``max_int``: the
    magnitude of an integer; ``max_string_chars``: characters of one string (keys included, as
    written, escapes counted); ``allow_nonfinite``: accept ``NaN``/``Infinity``/``-Infinity`` literals (Python's
    ``json.dumps`` writes them, so a training log may hold them); ``max_items``: commas outside
    strings, i.e. about the number of values (parsing costs about a microsecond each).
    """

    max_bytes: int = 16 * 2**20
    max_depth: int = 32
    max_number_chars: int = 40
    max_int: int = 2**64 - 1
    max_string_chars: int = 1 << 20
    allow_nonfinite: bool = False
    max_items: int = 1_000_000


DEFAULT_LIMITS = JsonLimits()

_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_SURROGATE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_SURROGATE_PAIR = re.compile(r"\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}")
_NUMBER_CHARS = b"0123456789.eE+-"
_OTHER_BYTES = bytes(c for c in range(256) if c not in _NUMBER_CHARS)
# outside strings, a byte of a number literal becomes "n" (else " "), or "d"/"e" (digit or point,
# exponent or sign) to tell floats with exponents
_NUMBER_BYTES = bytes.maketrans(_NUMBER_CHARS + _OTHER_BYTES, b"n" * 15 + b" " * 241)
_NUMBER_CLASSES = bytes.maketrans(_NUMBER_CHARS + _OTHER_BYTES, b"d" * 11 + b"e" * 4 + b" " * 241)
_ONE_BRACKET = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKET_BYTES = bytes(c for c in range(256) if c not in b"[]{}")


def _run_over(classes: bytes, limit: int) -> tuple[int, int] | None:
    """(start, length) of the first run of ``n`` bytes longer than ``limit``, if any."""
    found = classes.find(b"n" * (limit + 1))
    if found < 0:
        return None
    end = found + limit + 1
    while end < len(classes) and classes[end] == 110:  # b"n"
        end += 1
    return found, end - found


class JsonRuleError(ValueError):
    """A rule of ``JsonLimits`` broken; ``problem`` completes "<the input> ..."."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


def parse_untrusted_json(
    raw: bytes | str,
    *,
    what: str,
    error: type[InputError],
    fix: str,
    limits: JsonLimits = DEFAULT_LIMITS,
) -> Any:
    """Parse ``raw`` as one JSON document within ``limits``.

    ``what`` names the input in messages ("checkpoint step 100: the safetensors header"),
    ``fix`` says what to do; a broken rule raises ``error(f"{what} {problem}. {fix}")``.
    """
    try:
        return load_bounded_json(raw, limits)
    except JsonRuleError as exc:
        raise error(f"{what} {exc.problem}. {fix}") from None


def load_bounded_json(raw: bytes | str, limits: JsonLimits = DEFAULT_LIMITS) -> Any:
    """``json.loads`` within ``limits``; a broken rule raises ``JsonRuleError``."""
    size = len(raw.encode("utf-8")) if isinstance(raw, str) else len(raw)
    if size > limits.max_bytes:
        raise JsonRuleError(f"is {size} bytes of JSON, over the limit of {limits.max_bytes} bytes")
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JsonRuleError(
                f"is not UTF-8 text (byte {exc.start} is {raw[exc.start : exc.start + 1]!r})"
            ) from None
    else:
        text = raw
    longest = max(map(len, _STRING.findall(text)), default=2) - 2
    if longest > limits.max_string_chars:
        raise JsonRuleError(
            f"holds a string of {longest} characters, over the limit of {limits.max_string_chars}"
        )
    if _SURROGATE.search(_SURROGATE_PAIR.sub("", text)):
        raise JsonRuleError(
            "holds a lone UTF-16 surrogate escape (\\ud800-\\udfff without its pair), which "
            "is no character and cannot be written back as UTF-8"
        )
    # The checks below work on the bytes outside strings with bytes.translate and bytes.find
    # (C speed), so that a 16 MiB flood of brackets or digits costs milliseconds, not a Python
    # step (or a regular-expression attempt) per byte.
    outside = _STRING.sub('""', text).encode("utf-8")
    items = outside.count(b",")
    if items > limits.max_items:
        raise JsonRuleError(f"holds {items} values (commas), over the limit of {limits.max_items}")
    numbers = outside.translate(_NUMBER_BYTES)
    long_number = _run_over(numbers, limits.max_number_chars)
    if long_number is not None:
        start, length = long_number
        raise JsonRuleError(
            f"holds a number of {length} characters ({outside[start : start + 20].decode()}…), "
            f"over the limit of {limits.max_number_chars}"
        )
    brackets = outside.translate(_ONE_BRACKET, _NOT_BRACKET_BYTES)  # "[" opens, "]" closes
    limit = limits.max_depth
    run = brackets.find(b"[" * (limit + 1))
    if run >= 0:  # the usual flood, openers in a row: its exact depth, at C speed
        before = brackets[:run]
        closing = brackets.find(b"]", run)
        depth = (
            before.count(b"[")
            - before.count(b"]")
            + (closing if closing >= 0 else len(brackets))
            - run
        )
        raise JsonRuleError(
            f"is nested too deeply (nesting depth {depth} is over the limit of {limit})"
        )
    # Otherwise peel the innermost pairs off, one level per pass (bytes.replace, C speed): what
    # is still nested after ``limit`` passes is deeper than the limit.
    rest = brackets
    for _ in range(limit):
        shorter = rest.replace(b"[]", b"")
        if len(shorter) == len(rest):
            break  # empty, or unbalanced (json.loads says where)
        rest = shorter
        if b"[" * (limit + 1) in rest:  # what was left is a run of openers
            break
    if b"[]" in rest or b"[" * (limit + 1) in rest:
        raise JsonRuleError(f"is nested too deeply (nesting depth over the limit of {limit})")

    def parse_int(literal: str) -> int:
        value = int(literal)
        if abs(value) > limits.max_int:
            raise JsonRuleError(f"holds the integer {value}, beyond ±{limits.max_int}")
        return value

    def parse_float(literal: str) -> float:
        value = float(literal)
        if not math.isfinite(value):
            raise JsonRuleError(f"holds the number {literal}, which overflows a 64-bit float")
        return value

    # The hooks cost a Python call per number: only where a number could break a rule.
    check_ints = _run_over(numbers, len(str(limits.max_int)) - 1) is not None
    check_floats = check_ints or b"de" in outside.translate(_NUMBER_CLASSES)

    def parse_constant(token: str) -> float:
        if not limits.allow_nonfinite:
            raise JsonRuleError(f"holds the non-standard constant {token}, which is not JSON")
        return float(token)

    def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                raise JsonRuleError(
                    f"holds the duplicate key {key[:80]!r} (twice in one object; readers disagree "
                    "on which copy counts)"
                )
            result[key] = value
        return result

    try:
        return json.loads(
            text,
            object_pairs_hook=unique_keys,
            parse_int=parse_int if check_ints else None,
            parse_float=parse_float if check_floats else None,
            parse_constant=parse_constant,
        )
    except JsonRuleError:
        raise
    except json.JSONDecodeError as exc:
        raise JsonRuleError(
            f"is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
        ) from None
    except (RecursionError, ValueError) as exc:  # defence in depth: the checks above cover them
        raise JsonRuleError(
            f"is not bounded JSON ({type(exc).__name__}: {str(exc)[:120]})"
        ) from None

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
from itertools import accumulate
from typing import Any

from obstacle.errors import InputError

__all__ = ["JsonLimits", "JsonRuleError", "load_bounded_json", "parse_untrusted_json"]


@dataclass(frozen=True)
class JsonLimits:
    """Bounds on one untrusted JSON document.

    ``max_bytes``: size of the encoded document; ``max_depth``: nesting of arrays and objects;
    ``max_number_chars``: characters of one number literal (``-1.5e-3`` is 7); ``max_int``: the
    magnitude of an integer; ``max_string_chars``: characters of one string (keys included, after
    escapes); ``allow_nonfinite``: accept ``NaN``/``Infinity``/``-Infinity`` literals (Python's
    ``json.dumps`` writes them, so a training log may hold them).
    """

    max_bytes: int = 16 * 2**20
    max_depth: int = 32
    max_number_chars: int = 40
    max_int: int = 2**64 - 1
    max_string_chars: int = 1 << 20
    allow_nonfinite: bool = False


DEFAULT_LIMITS = JsonLimits()

_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_SURROGATE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_SURROGATE_PAIR = re.compile(r"\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}")
_BRACKET_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


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
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    depth = max(accumulate(_BRACKET_STEP[c] for c in brackets), default=0)
    if depth > limits.max_depth:
        raise JsonRuleError(
            f"is nested too deeply (nesting depth {depth} is over the limit of {limits.max_depth})"
        )

    def number_text(literal: str) -> str:
        if len(literal) > limits.max_number_chars:
            raise JsonRuleError(
                f"holds a number of {len(literal)} characters ({literal[:20]}…), over the limit "
                f"of {limits.max_number_chars}"
            )
        return literal

    def parse_int(literal: str) -> int:
        value = int(number_text(literal))
        if abs(value) > limits.max_int:
            raise JsonRuleError(f"holds the integer {value}, beyond ±{limits.max_int}")
        return value

    def parse_float(literal: str) -> float:
        value = float(number_text(literal))
        if not math.isfinite(value):
            raise JsonRuleError(f"holds the number {literal}, which overflows a 64-bit float")
        return value

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
            parse_int=parse_int,
            parse_float=parse_float,
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

"""obstacle.artifacts.untrusted_json: every limit refuses with the caller's error, naming the rule."""

from __future__ import annotations

import json

import pytest

from obstacle.artifacts.untrusted_json import JsonLimits, parse_untrusted_json
from obstacle.errors import CheckpointError, ProbeError

LIMITS = JsonLimits(
    max_bytes=1 << 20, max_depth=8, max_number_chars=20, max_string_chars=100, max_items=1000
)


def _parse(raw: bytes | str, limits: JsonLimits = LIMITS) -> object:
    return parse_untrusted_json(
        raw, what="upload.json:", error=CheckpointError, fix="Write it again", limits=limits
    )


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("[" * 100_000 + "]" * 100_000, "nesting depth 100000 is over the limit of 8"),
        ('{"a":' * 9 + "1" + "}" * 9, "nesting depth 9 is over the limit of 8"),
        ("9" * 5000, "a number of 5000 characters"),
        ('{"step": ' + "1" * 4301 + "}", "a number of 4301 characters"),
        ("1e999", "overflows a 64-bit float"),
        ("18446744073709551616", "beyond"),
        ("NaN", "non-standard constant NaN"),
        ("[-Infinity]", "non-standard constant -Infinity"),
        ('{"a": 1, "a": 2}', "duplicate key 'a'"),
        ('"' + "x" * 101 + '"', "a string of 101 characters, over the limit of 100"),
        ('{"' + "k" * 200 + '": 1}', "a string of 200 characters"),
        (b"\xff{}", "not UTF-8"),
        (
            "{" + " " * (1 << 20) + "}",
            f"{(1 << 20) + 2} bytes of JSON, over the limit of {1 << 20}",
        ),
        ('{"a": [1, 2}', "not valid JSON"),
        ("", "not valid JSON"),
        ("[[]," * 50 + "[]" + "]" * 50, "nesting depth over the limit of 8"),
        ('{"a": [[1], ' * 9 + "1" + "]}" * 9, "nesting depth over the limit of 8"),
        ("[" + "0," * 2000 + "0]", "holds 2000 values (commas), over the limit of 1000"),
        ('["\\ud800"]', "lone UTF-16 surrogate"),
        ('{"\\udfff": 1}', "lone UTF-16 surrogate"),
    ],
)
def test_each_rule_refuses_with_the_callers_error(raw: bytes | str, fragment: str) -> None:
    with pytest.raises(CheckpointError) as caught:
        _parse(raw)
    message = str(caught.value)
    assert message.startswith("upload.json: "), message
    assert fragment in message, message
    assert message.endswith("Write it again"), message


def test_bounded_documents_parse_as_json_loads_does() -> None:
    document = {"step": 100, "lr": 0.1, "loss": -1.5e-3, "x": [[1, 2], {"y": None}], "s": "é\n"}
    assert _parse(json.dumps(document)) == document
    assert _parse(json.dumps(document).encode()) == document
    assert _parse("-18446744073709551615", JsonLimits()) == -(2**64 - 1)
    assert _parse('"\\ud83d\\ude00"') == "\U0001f600"  # a surrogate pair is one character


def test_nonfinite_literals_when_allowed() -> None:
    limits = JsonLimits(allow_nonfinite=True)
    parsed = parse_untrusted_json(
        '{"loss": NaN, "lr": Infinity}', what="log:", error=ProbeError, fix="", limits=limits
    )
    assert isinstance(parsed, dict) and parsed["lr"] == float("inf") and parsed["loss"] != 0


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    text = json.dumps({"a": "[" * 30 + '\\"{' * 10})
    assert _parse(text) == json.loads(text)

"""Every obstacle InputError is translated to a 4xx problem document at the boundary."""

from __future__ import annotations

import inspect

import obstacle.errors as errors
from obstacle.service.problems import INPUT_ERRORS


def test_every_input_error_is_mapped_to_a_4xx() -> None:
    classes = {
        obj
        for _, obj in inspect.getmembers(errors, inspect.isclass)
        if issubclass(obj, errors.InputError)
    }
    mapped = {cls for cls, *_ in INPUT_ERRORS}
    assert classes <= mapped, f"not mapped: {classes - mapped}"
    for _cls, status, slug, title in INPUT_ERRORS:
        assert 400 <= status < 500 and slug and title
    # most specific first: no entry is shadowed by an earlier base class
    for i, (cls, *_) in enumerate(INPUT_ERRORS):
        for earlier, *_ in INPUT_ERRORS[:i]:
            assert not issubclass(cls, earlier), f"{cls.__name__} is shadowed by {earlier.__name__}"

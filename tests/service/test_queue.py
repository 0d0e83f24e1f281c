"""How an analysis's checkpoints are cut into tasks: ordered groups, as few and as even as can be."""

from __future__ import annotations

import pytest

from obstacle.service.queue import ordered_groups


@pytest.mark.parametrize(
    ("steps", "per_task", "groups"),
    [
        ([], 20, []),
        ([5], 20, [[5]]),
        ([15, 5, 10, 10], 20, [[5, 10, 15]]),  # in step order, each once
        (list(range(20)), 20, [list(range(20))]),
        (list(range(21)), 20, [list(range(10)), list(range(10, 21))]),  # not 20 + 1
        (list(range(7)), 3, [[0, 1], [2, 3], [4, 5, 6]]),
        ([3, 1, 2], 1, [[1], [2], [3]]),
    ],
)
def test_checkpoints_are_cut_into_ordered_groups(
    steps: list[int], per_task: int, groups: list[list[int]]
) -> None:
    assert ordered_groups(steps, per_task) == groups

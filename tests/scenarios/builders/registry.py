"""The scenario registry: what a scenario is (:class:`ScenarioInfo`), its expected episodes, and
``SCENARIOS``, filled by the :func:`scenario` decorator of each builder."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from obstacle.labels import LABELS, OBSTACLE_LABELS


@dataclass(frozen=True)
class Episode:
    """An obstacle the verdict must find on the run's timeline, with its steps from the exact facts.

    ``end_step`` is where the obstacle ended (a saddle's escape step), or None when it is still
    present at the last checkpoint.
    """

    kind: str
    start_step: int
    end_step: int | None

    def __post_init__(self) -> None:
        assert self.kind in OBSTACLE_LABELS, self.kind
        assert self.end_step is None or self.end_step > self.start_step, self

    @property
    def still_present(self) -> bool:
        return self.end_step is None

    def found_in(self, episodes: Sequence[Mapping[str, Any]], last_step: int) -> bool:
        """Whether the verdict's ``episodes`` (its JSON) hold this one: the same kind, steps that
        overlap (an open end runs to ``last_step``) and the same answer to "still present?"."""
        mine = last_step if self.end_step is None else self.end_step
        for found in episodes:
            theirs = last_step if found["end_step"] is None else found["end_step"]
            if (
                found["kind"] == self.kind
                and found["start_step"] <= mine
                and self.start_step <= theirs
                and found["still_present"] == self.still_present
            ):
                return True
        return False


@dataclass
class ScenarioInfo:
    """What a scenario is, why its label is right, and the exact facts that show it.

    ``label`` is the verdict's expected primary: for a run with several episodes, the obstacle that
    cost the most steps (divergence when the run blows up).
    """

    name: str
    label: str
    architecture: str
    optimizer: str
    description: str
    target_loss: float | None
    lr: float
    steps: list[int]
    batch_size: int
    seed: int = 0
    episodes: tuple[Episode, ...] = ()
    facts: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    cpu_seconds: float = 0.0


class Builder(Protocol):
    def __call__(self, run_dir: Path, seed: int = 0) -> ScenarioInfo: ...


SCENARIOS: dict[str, Builder] = {}


def scenario(
    label: str, architecture: str
) -> Callable[[Callable[[Path, int], ScenarioInfo]], Builder]:
    """Register a builder ``fn(run_dir, seed)`` as ``"<label>/<architecture>"``.

    The registered builder runs on one thread with torch's RNG forked, and records the seed and
    its wall and CPU time in the :class:`ScenarioInfo` it returns.
    """
    assert label in LABELS, label

    def register(fn: Callable[[Path, int], ScenarioInfo]) -> Builder:
        @functools.wraps(fn)
        def build(run_dir: Path, seed: int = 0) -> ScenarioInfo:
            run_dir = Path(run_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            threads = torch.get_num_threads()
            start, cpu = time.perf_counter(), time.process_time()
            with torch.random.fork_rng(devices=[]):
                torch.set_num_threads(1)
                try:
                    info = fn(run_dir, seed)
                finally:
                    torch.set_num_threads(threads)
            info.seed = seed
            info.seconds = time.perf_counter() - start
            info.cpu_seconds = time.process_time() - cpu
            assert (info.label, info.architecture) == (label, architecture), info.name
            return info

        name = f"{label}/{architecture}"
        assert name not in SCENARIOS, name
        SCENARIOS[name] = build
        return build

    return register


def scenario_info(label: str, architecture: str, **kwargs: Any) -> ScenarioInfo:
    return ScenarioInfo(
        name=f"{label}/{architecture}", label=label, architecture=architecture, **kwargs
    )

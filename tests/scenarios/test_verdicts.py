"""Scenario suite: real training runs with a known obstacle get that verdict.

Each builder in ``builders/`` trains a small model whose obstacles were verified from exact
quantities (``test_builders_exact.py``); here the full battery and verdict run on it as a user
would (``obstacle.battery.analysis.analyze``, standard preset, float64 on CPU). Only the
calibration set runs here (seed 0 of the calibration architectures, the runs thresholds may be
tuned on); the held-out set is scored by ``bench/verdict_accuracy.py``.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from obstacle.battery.analysis import analyze
from obstacle.labels import LABELS, OBSTACLE_LABELS

from .builders import CALIBRATION, HELD_OUT, SCENARIOS, ScenarioInfo

PRESENT = 0.5


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _report(
    name: str, seed: int, tmp_path_factory: pytest.TempPathFactory
) -> tuple[ScenarioInfo, dict[str, Any]]:
    run_dir = tmp_path_factory.mktemp(f"{name.replace('/', '-')}-{seed}")
    info = SCENARIOS[name](run_dir, seed)
    report = analyze(run_dir, preset="standard", target_loss=info.target_loss)
    return info, report


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "seed"), CALIBRATION, ids=[f"{name}@{seed}" for name, seed in CALIBRATION]
)
def test_scenario_gets_its_label(
    name: str, seed: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    info, report = _report(name, seed, tmp_path_factory)
    verdict = report["verdict"]
    present = {o["kind"]: o["confidence"] for o in verdict["obstacles"]}
    explain = (
        f"{name}@{seed}: primary={verdict['primary']} present={present} "
        f"summary={verdict['summary']!r} ruled_out={verdict['ruled_out']}"
    )
    if info.label == "healthy":
        assert verdict["primary"] == "healthy", explain
        assert all(c < PRESENT for c in present.values()), explain
    else:
        assert verdict["primary"] == info.label, explain
        assert present[info.label] >= PRESENT, explain
    # Every obstacle is accounted for: present or ruled out with a reason.
    considered = set(present) | {r["kind"] for r in verdict["ruled_out"]}
    assert considered == set(OBSTACLE_LABELS)
    assert all(r["reason"] for r in verdict["ruled_out"])
    for obstacle in verdict["obstacles"]:
        assert obstacle["evidence"], f"{obstacle['kind']} has no evidence"
        assert obstacle["suggestion"]
    # Each expected episode is on the verdict's timeline: same kind, overlapping steps, and the
    # same answer to "is it still there at the last checkpoint?".
    episodes = verdict["episodes"]
    steps = [e["start_step"] for e in episodes]
    assert steps == sorted(steps), f"episodes in step order: {episodes}"
    for expected in info.episodes:
        assert expected.found_in(episodes, info.steps[-1]), (
            f"{name}@{seed}: expected {expected}, the verdict has {episodes}"
        )


def test_calibration_and_held_out_cover_every_label_with_two_architectures() -> None:
    for runs in (CALIBRATION, HELD_OUT):
        by_label: dict[str, set[str]] = {}
        for name, _ in runs:
            label, arch = name.split("/", 1)
            by_label.setdefault(label, set()).add(arch)
        assert set(by_label) == set(LABELS)
        assert all(len(archs) >= 2 for archs in by_label.values()), by_label

"""Scenario suite: real training runs with a known obstacle get that verdict.

Each builder in ``builders.py`` trains a small model whose obstacle was verified from exact
quantities (``test_builders_exact.py``); here the full battery and verdict run on it as a user
would (``obstacle.battery.analysis.analyze``, standard preset, float64 on CPU).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from obstacle.battery.analysis import analyze
from obstacle.labels import LABELS, OBSTACLE_LABELS

from .builders import SCENARIOS

PRESENT = 0.5


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


_REPORTS: dict[str, dict[str, Any]] = {}


def _report(name: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, dict[str, Any]]:
    run_dir = tmp_path_factory.mktemp(name.replace("/", "-"))
    info = SCENARIOS[name](run_dir)
    report = analyze(run_dir, preset="standard", target_loss=info.target_loss)
    _REPORTS[name] = report
    return info, report


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenario_gets_its_label(name: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    info, report = _report(name, tmp_path_factory)
    verdict = report["verdict"]
    present = {o["kind"]: o["confidence"] for o in verdict["obstacles"]}
    explain = f"{name}: primary={verdict['primary']} present={present} summary={verdict['summary']!r} ruled_out={verdict['ruled_out']}"
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


def test_every_label_has_two_architectures() -> None:
    by_label: dict[str, set[str]] = {}
    for name in SCENARIOS:
        label, arch = name.split("/", 1)
        by_label.setdefault(label, set()).add(arch)
    assert set(by_label) == set(LABELS)
    assert all(len(archs) >= 2 for archs in by_label.values()), by_label

"""Each preset's count of run-level loss evaluations, which the workers price to set the run-level
task's time limit, against what ``analyze`` spends on real runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import obstacle
from obstacle.battery.analysis import analyze
from obstacle.battery.presets import PRESETS


def _run(run_dir: Path, *, checkpoints: int, validation: bool) -> Path:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    batches = [
        (torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 2, (8,))) for _ in range(3)
    ]
    held_out = (torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 2, (8,)))
    obstacle.Probe.capture(
        model, nn.CrossEntropyLoss(), batches, validation=held_out if validation else None
    ).save(run_dir)
    for i in range(checkpoints):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        obstacle.save_checkpoint(run_dir, model, step=10 * (i + 1), lr=0.1)
    return run_dir


@pytest.mark.parametrize(
    ("preset", "checkpoints", "validation"),
    [("quick", 1, False), ("quick", 2, True), ("standard", 2, True), ("standard", 4, False)],
)
def test_the_count_bounds_the_run_level_evaluations_within_the_validation_line(
    tmp_path: Path, preset: str, checkpoints: int, validation: bool
) -> None:
    chosen = PRESETS[preset]
    report = analyze(
        _run(tmp_path / "run", checkpoints=checkpoints, validation=validation), preset=preset
    )
    spent = report["run"]["cost"]["run_level"]["loss_evals"]
    bound = chosen.run_level_loss_evaluations(checkpoints)
    assert spent <= bound
    # The bound allows for a validation curve and for α = 0 and 1 joining the grid; nothing else.
    slack = (0 if validation else chosen.interpolation_points) + 4
    assert bound - spent <= slack, (bound, spent)
    if checkpoints == 1:
        assert bound == spent == 0

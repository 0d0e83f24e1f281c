"""GradientNorm: closed-form quadratic (∇J = A(θ − c̄)) and torch's own Adam step on a tiny MLP.

Tolerances: 1e-14 relative for the quadratic; 1e-10 relative for the Adam step norm against
θ_after − θ_before of a real ``torch.optim.Adam`` step on the full probe gradient.
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import pytest
import torch
from torch import nn

import obstacle
from obstacle.artifacts.layout import list_checkpoints
from obstacle.battery.analysis import SequenceAnalyzer
from obstacle.battery.checkpoint import load_checkpoint
from obstacle.battery.engine import LossEngine
from obstacle.battery.probe import Probe
from obstacle.battery.quantities.base import CheckpointContext
from obstacle.battery.quantities.gradient import GradientNorm
from support import classification_batches, quadratic_context, quadratic_engine, tiny_mlp, write_run

A = torch.diag(torch.tensor([1.0, 2.0, 5.0], dtype=torch.float64))
CENTRES = [
    torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, -1.0]], dtype=torch.float64),
    torch.tensor([[0.5, -1.0, 1.0], [2.0, 0.0, 0.0]], dtype=torch.float64),
]


_ctx = partial(quadratic_context, step=3)


@pytest.fixture(scope="module")
def engine() -> LossEngine:
    return quadratic_engine(A, CENTRES)[0]


def test_quadratic_gradient_parameter_norm_and_distance(engine: LossEngine) -> None:
    theta = torch.tensor([0.3, -0.2, 1.1], dtype=torch.float64)
    theta0 = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)
    centre = torch.cat(CENTRES).mean(dim=0)
    g = A @ (theta - centre)
    record = GradientNorm()(_ctx(engine, theta, lr=0.25, theta0=theta0))
    assert record["grad_norm"] == pytest.approx(float(g.norm()), rel=1e-14)
    assert record["param_norm"] == pytest.approx(float(theta.norm()), rel=1e-14)
    assert record["distance_from_start"] == pytest.approx(float((theta - theta0).norm()), rel=1e-14)
    # no optimizer state: plain SGD at the checkpoint's lr, whose step is lr·g
    assert (record["optimizer"], record["step_source"], record["adaptive"]) == (
        "sgd",
        "sgd_at_lr",
        False,
    )
    assert record["step_norm"] == pytest.approx(0.25 * float(g.norm()), rel=1e-14)
    assert record["cost"]["grad_evals"] == 1


def test_theta0_given_as_a_reader_is_read_once_and_not_kept(engine: LossEngine) -> None:
    """The analysis passes θ₀ as a function that reads the first checkpoint, so the vector lives
    only while the distance is taken: the same distance, one read per record, nothing cached."""
    theta = torch.tensor([0.3, -0.2, 1.1], dtype=torch.float64)
    theta0 = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)
    reads: list[int] = []

    def read() -> torch.Tensor:
        reads.append(1)
        return theta0.clone()

    ctx = _ctx(engine, theta, lr=0.25, theta0=read)
    record = GradientNorm()(ctx)
    assert record["distance_from_start"] == pytest.approx(float((theta - theta0).norm()), rel=1e-14)
    assert len(reads) == 1 and ctx.theta0 is read  # type: ignore[attr-defined]


def test_analysis_distance_from_start_is_the_distance_between_the_files(tmp_path: Path) -> None:
    """Through the analysis (θ₀ read from the first checkpoint when needed, not held)."""
    batches = classification_batches(k=4, b=8)
    run_dir = write_run(tmp_path / "run", tiny_mlp(5), nn.CrossEntropyLoss(), batches, steps=3)
    analyzer = SequenceAnalyzer(run_dir, preset="quick", dtype="float64")
    engine = analyzer.engine
    paths = dict(list_checkpoints(run_dir))
    first = engine.flatten(load_checkpoint(paths[0]).state)
    for step in (1, 3):
        theta = engine.flatten(load_checkpoint(paths[step]).state)
        record = analyzer.record(step)
        expected = float((theta - first).norm())
        assert expected > 0
        assert record["distance_from_start"] == pytest.approx(expected, rel=1e-12)


def test_without_first_checkpoint_distance_is_none(engine: LossEngine) -> None:
    record = GradientNorm()(_ctx(engine, torch.zeros(3, dtype=torch.float64)))
    assert record["distance_from_start"] is None


def test_unknown_lr_has_no_step_norm(engine: LossEngine) -> None:
    record = GradientNorm()(_ctx(engine, torch.zeros(3, dtype=torch.float64), lr=math.nan))
    assert record["step_norm"] is None and "learning rate is unknown" in record["step_norm_reason"]


def test_non_finite_weights_are_recorded_not_raised(engine: LossEngine) -> None:
    theta = torch.tensor([math.inf, 0.0, 0.0], dtype=torch.float64)
    record = GradientNorm()(_ctx(engine, theta))
    assert math.isnan(record["grad_norm"]) or math.isinf(record["grad_norm"])
    assert record["param_norm"] == math.inf


def test_adam_step_norm_is_torchs_step(tmp_path: Path) -> None:
    batches = classification_batches(k=4, b=8)
    model = tiny_mlp(3)
    probe = Probe.capture(model, nn.CrossEntropyLoss(), batches)
    engine = LossEngine.create(probe, dtype="float64")
    opt = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=0.01)
    for x, y in batches[:3]:
        opt.zero_grad()
        nn.CrossEntropyLoss()(model(x), y).backward()
        opt.step()
    ckpt = load_checkpoint(
        obstacle.save_checkpoint(tmp_path, model, step=3, lr=0.01, optimizer=opt)
    )
    theta = engine.flatten(ckpt.state)
    record = GradientNorm()(CheckpointContext(engine=engine, theta=theta, checkpoint=ckpt))

    # torch's own step from the full probe gradient (mean of the batch losses)
    opt.zero_grad()
    torch.stack([nn.CrossEntropyLoss()(model(x), y) for x, y in batches]).mean().backward()
    params = dict(model.named_parameters())
    before = torch.cat([params[n].detach().reshape(-1) for n in engine.names])
    grad = torch.cat([params[n].grad.reshape(-1) for n in engine.names])  # type: ignore[union-attr]
    opt.step()
    after = torch.cat([params[n].detach().reshape(-1) for n in engine.names])
    assert (record["optimizer"], record["step_source"], record["adaptive"]) == (
        "adam",
        "optimizer_state",
        True,
    )
    assert record["grad_norm"] == pytest.approx(float(grad.norm()), rel=1e-12)
    assert record["step_norm"] == pytest.approx(float((after - before).norm()), rel=1e-10)

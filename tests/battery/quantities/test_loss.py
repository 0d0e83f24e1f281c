"""LossQuantity on the closed-form quadratic: J_k = mean_i ½(θ − c_i)ᵀA(θ − c_i).

Tolerance: 1e-14 relative (float64 evaluation of the same sums).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from obstacle.battery.engine import LossEngine
from obstacle.battery.probe import Probe
from obstacle.battery.quantities.loss import LossQuantity
from support import QuadraticLoss, Shift, calls, quadratic_context, quadratic_engine

A = torch.tensor([[2.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 3.0]], dtype=torch.float64)
CENTRES = [
    torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, -1.0]], dtype=torch.float64),
    torch.tensor([[0.5, -1.0, 1.0], [2.0, 0.0, 0.0]], dtype=torch.float64),
    torch.tensor([[-1.0, 1.0, 0.5], [0.0, 0.0, 3.0]], dtype=torch.float64),
]


def _closed_form(theta: Tensor, centres: Tensor) -> float:
    diff = theta - centres
    return float(0.5 * torch.einsum("bi,ij,bj->b", diff, A, diff).mean())


_ctx = quadratic_context


@pytest.fixture(scope="module")
def engine() -> LossEngine:
    return quadratic_engine(A, CENTRES)[0]


def test_batch_losses_and_their_mean_are_the_closed_form(engine: LossEngine) -> None:
    theta = torch.tensor([0.3, -0.2, 1.1], dtype=torch.float64)
    record = LossQuantity()(_ctx(engine, theta))
    expected = [_closed_form(theta, c) for c in CENTRES]
    assert record["batch_losses"] == pytest.approx(expected, rel=1e-14)
    assert record["loss"] == pytest.approx(sum(expected) / 3, rel=1e-14)
    assert record["num_batches"] == 3
    assert record["validation_loss"] is None
    assert record["finite"] is True
    assert calls(record["cost"]) == {"loss_evals": 1, "grad_evals": 0, "hvp_evals": 0}


def test_validation_loss_when_the_probe_has_one() -> None:
    validation = torch.tensor(
        [[4.0, 4.0, 4.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float64
    )
    batches = [(c, torch.zeros(2, dtype=torch.float64)) for c in CENTRES]
    probe = Probe.capture(
        Shift(3).double(),
        QuadraticLoss(A),
        batches,
        validation=(validation, torch.zeros(3, dtype=torch.float64)),
    )
    engine = LossEngine.create(probe, dtype="float64")
    theta = torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64)
    record = LossQuantity()(_ctx(engine, theta))
    assert record["validation_loss"] == pytest.approx(_closed_form(theta, validation), rel=1e-14)
    assert record["finite"] is True


def test_non_finite_weights_are_recorded_not_raised(engine: LossEngine) -> None:
    theta = torch.tensor([math.nan, 0.0, 0.0], dtype=torch.float64)
    record = LossQuantity()(_ctx(engine, theta))
    assert record["finite"] is False
    assert all(math.isnan(v) for v in record["batch_losses"])
    assert math.isnan(record["loss"])
    overflow = LossQuantity()(_ctx(engine, torch.tensor([1e200, 0.0, 0.0], dtype=torch.float64)))
    assert overflow["finite"] is False and overflow["loss"] == math.inf

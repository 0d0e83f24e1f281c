"""SimulatedSteps against exact references.

- Closed-form quadratic (g_k = A(θ − c̄_k)): a step d changes J by exactly gᵀd + ½dᵀAd, the
  full step along an eigenvector of λ goes uphill exactly when lr > 2/λ, and minibatch steps go
  uphill while the full step goes downhill when the batches disagree. Tolerance: 1e-10 of |J|.
- Tiny MLP with a real Adam run: each simulated step is compared with torch's own ``opt.step()``
  from that batch's gradient, evaluated on the eager model. Tolerance: 1e-10 of |J|.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import obstacle
from obstacle.battery.checkpoint import load_checkpoint
from obstacle.battery.engine import LossEngine
from obstacle.battery.probe import Probe
from obstacle.battery.quantities.base import CheckpointContext
from obstacle.battery.quantities.simulated_steps import SimulatedSteps
from support import calls, classification_batches, quadratic_context, quadratic_engine, tiny_mlp

LAMBDAS = [0.5, 2.0, 4.0]
A = torch.diag(torch.tensor(LAMBDAS, dtype=torch.float64))
E = torch.eye(3, dtype=torch.float64)
# batch means c̄_k = ±e1 (sum 0) and a large within-batch spread, so J has a large constant
# part and a change of the order of round-off must not count as uphill
SIGNS = (1.0, -1.0, 1.0, -1.0)
CENTRES = [torch.stack([s * E[0] + 30 * E[1], s * E[0] - 30 * E[1]]) for s in SIGNS]


_ctx = quadratic_context


def _exact_change(g: Tensor, d: Tensor) -> float:
    return float(g @ d + 0.5 * d @ A @ d)


@pytest.fixture(scope="module")
def engine() -> LossEngine:
    return quadratic_engine(A, CENTRES)[0]


def test_quadratic_changes_are_exact_and_noise_sends_minibatch_steps_uphill(
    engine: LossEngine,
) -> None:
    # θ close to c̄ = 0 along e1: the batches pull ±e1 far harder than the mean gradient
    theta = torch.tensor([0.1, 0.0, 0.05], dtype=torch.float64)
    lr = 0.2
    g = A @ theta
    grads = [A @ (theta - s * E[0]) for s in SIGNS]
    record = SimulatedSteps()(_ctx(engine, theta, lr=lr))
    scale = abs(record["loss"])
    assert record["loss"] == pytest.approx(engine.loss(theta), rel=1e-15)
    expected = [_exact_change(g, -lr * gk) for gk in grads]
    for got, want in zip(record["minibatch_changes"], expected, strict=True):
        assert got == pytest.approx(want, abs=1e-10 * scale)
    assert record["full_step_change"] == pytest.approx(_exact_change(g, -lr * g), abs=1e-10 * scale)
    assert record["minibatch_uphill"] == [True, False, True, False]
    assert record["uphill_fraction_minibatch"] == 0.5
    assert record["full_step_uphill"] is False
    assert (record["optimizer"], record["step_source"], record["lr"]) == ("sgd", "sgd_at_lr", lr)
    assert record["uphill_tolerance"] == pytest.approx(100 * 2.0**-52 * scale, rel=1e-15)
    assert record["reason"] is None
    assert calls(record["cost"]) == {"loss_evals": 1 + 4 + 1, "grad_evals": 4 + 1, "hvp_evals": 0}


@pytest.mark.parametrize("eigen", [1, 2])
@pytest.mark.parametrize(("factor", "uphill"), [(1 - 1e-3, False), (1 + 1e-3, True)])
def test_full_step_uphill_exactly_above_2_over_lambda(
    engine: LossEngine, eigen: int, factor: float, uphill: bool
) -> None:
    lam = LAMBDAS[eigen]
    record = SimulatedSteps()(_ctx(engine, 0.7 * E[eigen], lr=factor * 2 / lam))
    assert record["full_step_uphill"] is uphill


def test_a_change_within_round_off_is_not_uphill(engine: LossEngine) -> None:
    # lr = 2/λ exactly: the step lands on the mirror point, J is unchanged up to round-off
    record = SimulatedSteps()(_ctx(engine, 0.7 * E[2], lr=0.5))
    assert abs(record["full_step_change"]) <= record["uphill_tolerance"]
    assert record["full_step_uphill"] is False
    strict = SimulatedSteps()(_ctx(engine, 0.7 * E[2], lr=0.5, uphill_rtol=0.0))
    assert strict["uphill_tolerance"] == 0.0


def test_unknown_lr_is_null_with_a_reason(engine: LossEngine) -> None:
    record = SimulatedSteps()(_ctx(engine, 0.7 * E[2], lr=math.nan))
    assert record["minibatch_changes"] is None and record["full_step_uphill"] is None
    assert record["uphill_fraction_minibatch"] is None
    assert "learning rate is unknown" in record["reason"]
    assert calls(record["cost"]) == {"loss_evals": 0, "grad_evals": 0, "hvp_evals": 0}


def test_non_finite_weights_are_recorded_not_raised(engine: LossEngine) -> None:
    record = SimulatedSteps()(_ctx(engine, torch.tensor([math.nan, 0.0, 0.0])))
    assert math.isnan(record["loss"]) and math.isnan(record["full_step_change"])
    assert record["minibatch_uphill"] == [None] * 4
    assert math.isnan(record["uphill_fraction_minibatch"])
    assert record["full_step_uphill"] is None


def test_adam_steps_are_torchs_steps(tmp_path: Path) -> None:
    batches = classification_batches(k=4, b=8)
    model = tiny_mlp(5)
    loss_fn = nn.CrossEntropyLoss()
    probe = Probe.capture(model, loss_fn, batches)
    engine = LossEngine.create(probe, dtype="float64")
    opt = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.1)
    for x, y in batches[:3]:
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    ckpt = load_checkpoint(
        obstacle.save_checkpoint(tmp_path, model, step=3, lr=0.05, optimizer=opt)
    )
    record = SimulatedSteps()(
        CheckpointContext(engine=engine, theta=engine.flatten(ckpt.state), checkpoint=ckpt)
    )

    def probe_loss(m: nn.Module) -> float:
        with torch.no_grad():
            return float(torch.stack([loss_fn(m(x), y) for x, y in batches]).mean())

    def torch_change(batch_list: list[tuple[Tensor, Tensor]]) -> float:
        m, o = copy.deepcopy((model, opt))
        o.zero_grad()
        torch.stack([loss_fn(m(x), y) for x, y in batch_list]).mean().backward()
        o.step()
        return probe_loss(m) - probe_loss(model)

    scale = abs(probe_loss(model))
    assert (record["optimizer"], record["step_source"]) == ("adamw", "optimizer_state")
    for got, batch in zip(record["minibatch_changes"], batches, strict=True):
        assert got == pytest.approx(torch_change([batch]), abs=1e-10 * scale)
    assert record["full_step_change"] == pytest.approx(torch_change(batches), abs=1e-10 * scale)

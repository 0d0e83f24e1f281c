"""Take the optimizer's real step from each batch gradient and see whether J goes up.

For the step d_k the optimizer would take from batch k's gradient g_k (its momentum buffer and
moments as saved, see :class:`OptimizerModel`) the change of the full probe loss
J(θ + d_k) − J(θ), and the same for the step d̄ from the full probe gradient. Minibatch steps
going uphill while the full-batch step goes downhill is the signature of gradient noise; the
full-batch step going uphill is that of poor conditioning (or a too-large lr).

A change counts as uphill when it exceeds ``uphill_rtol``·|J(θ)|, so that evaluation round-off
(J is a sum of many terms) is not read as a rise; the default ``uphill_rtol`` is 100 machine
epsilons of the engine's dtype (2.2e-14 in float64, 1.2e-5 in float32).

The test only means something at the optimizer's own learning rate: when it is unknown (NaN,
legacy checkpoints) the record holds None and says why.
"""

from __future__ import annotations

import math

import torch

from obstacle._validation import check_float
from obstacle.battery.optimizer_step import optimizer_model_for
from obstacle.battery.quantities.base import CheckpointContext, Quantity, Record

__all__ = ["SimulatedSteps"]

_RESULT_KEYS = (
    "loss",
    "minibatch_changes",
    "minibatch_uphill",
    "uphill_fraction_minibatch",
    "full_step_change",
    "full_step_uphill",
    "uphill_tolerance",
)


class SimulatedSteps(Quantity):
    """Record keys: ``optimizer``, ``step_source``, ``lr``, ``loss`` (J(θ)), ``minibatch_changes``
    (J(θ + d_k) − J(θ) per batch), ``minibatch_uphill`` (per batch; None where non-finite),
    ``uphill_fraction_minibatch`` (NaN when a change is NaN), ``full_step_change``,
    ``full_step_uphill``, ``uphill_tolerance`` (absolute) and ``reason``."""

    name = "steps"

    def compute(self, ctx: CheckpointContext) -> Record:
        model = optimizer_model_for(ctx)
        record: Record = {"optimizer": model.kind, "step_source": model.source, "lr": None}
        if not math.isfinite(model.lr):
            record.update(dict.fromkeys(_RESULT_KEYS))
            record["reason"] = (
                "the learning rate is unknown (legacy checkpoint): a step at any other lr than "
                "the optimizer's says nothing about the run"
            )
            return record
        engine, theta = ctx.engine, ctx.theta
        default_rtol = 100 * torch.finfo(engine.dtype).eps
        rtol = check_float("uphill_rtol", ctx.options.get("uphill_rtol", default_rtol), low=0.0)
        loss = engine.loss(theta)
        tolerance = rtol * abs(loss)
        _, g = ctx.gradient()
        changes = []
        for _, _, grads in ctx.batch_gradient_chunks():
            steps = model.step(grads, theta)
            changes += [engine.loss(theta + steps[k]) - loss for k in range(steps.shape[0])]
            del steps
        full = engine.loss(theta + model.step(g, theta)) - loss
        uphill = [_uphill(c, tolerance) for c in changes]
        fraction = (
            math.nan if any(u is None for u in uphill) else sum(map(bool, uphill)) / len(uphill)
        )
        record.update(
            lr=model.lr,
            loss=loss,
            minibatch_changes=changes,
            minibatch_uphill=uphill,
            uphill_fraction_minibatch=fraction,
            full_step_change=full,
            full_step_uphill=_uphill(full, tolerance),
            uphill_tolerance=tolerance,
            reason=None,
        )
        return record


def _uphill(change: float, tolerance: float) -> bool | None:
    """True/False, or None when the change (or the tolerance) is NaN."""
    if math.isnan(change) or math.isnan(tolerance):
        return None
    return change > tolerance

"""The size of the gradient and of the parameters, and how far the run has moved.

For adaptive optimizers the gradient norm says little about the step (Adam's step has about the
same size whatever |g| is), so the norm of the optimizer's real step is recorded too.
"""

from __future__ import annotations

import math

from obstacle.battery.optimizer_step import optimizer_model_for
from obstacle.battery.quantities.base import CheckpointContext, Quantity, Record

__all__ = ["GradientNorm"]


class GradientNorm(Quantity):
    """Record keys: ``loss`` (J), ``grad_norm`` (‖∇J‖), ``param_norm`` (‖θ‖),
    ``distance_from_start`` (‖θ − θ0‖, None without a first checkpoint), ``optimizer`` and
    ``step_source`` (see :class:`OptimizerModel`), ``adaptive``, ``step_norm`` (‖d‖ of the
    optimizer's step from ∇J; None when the lr is unknown) and ``step_norm_reason``."""

    name = "gradient"

    def compute(self, ctx: CheckpointContext) -> Record:
        loss, g = ctx.gradient()
        theta = ctx.theta
        model = optimizer_model_for(ctx)
        step_norm: float | None = None
        reason: str | None = None
        if math.isfinite(model.lr):
            step_norm = float(model.step(g, theta).norm())
        else:
            reason = "the learning rate is unknown (legacy checkpoint): no step to measure"
        theta0 = ctx.start_point()
        distance = None if theta0 is None else float((theta - theta0).norm())
        del theta0
        return {
            "loss": loss,
            "grad_norm": float(g.norm()),
            "param_norm": float(theta.norm()),
            "distance_from_start": distance,
            "optimizer": model.kind,
            "step_source": model.source,
            "adaptive": model.adaptive,
            "step_norm": step_norm,
            "step_norm_reason": reason,
        }

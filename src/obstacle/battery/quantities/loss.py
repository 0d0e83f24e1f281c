"""The probe loss: per batch, their mean J (what every other test differentiates), validation.

Non-finite losses are evidence (divergence): they are recorded as NaN/inf, never raised.
"""

from __future__ import annotations

import math

from obstacle.battery.quantities.base import CheckpointContext, Quantity, Record

__all__ = ["LossQuantity"]


class LossQuantity(Quantity):
    """Record keys: ``loss`` (J = mean of the batch losses), ``batch_losses``, ``num_batches``,
    ``validation_loss`` (None when the probe has no validation batch), ``finite`` (every
    recorded loss is finite)."""

    name = "loss"

    def compute(self, ctx: CheckpointContext) -> Record:
        engine = ctx.engine
        batch = [float(v) for v in engine.batch_losses(ctx.theta)]
        validation = engine.loss(ctx.theta, "validation") if engine.validation is not None else None
        values = batch + ([validation] if validation is not None else [])
        return {
            "loss": math.fsum(batch) / len(batch),
            "batch_losses": batch,
            "num_batches": len(batch),
            "validation_loss": validation,
            "finite": all(math.isfinite(v) for v in values),
        }

"""Curvature along the directions the run steps in, and the Taylor prediction of each step.

A step d changes the probe loss by about ΔJ ≈ gᵀd + ½·dᵀHd. For plain SGD of learning rate ε
(d = −ε·g) that is −ε·gᵀg + ½·ε²·gᵀHg, uphill exactly when ε·gᵀHg/gᵀg > 2.

- ``along_gradient``: gᵀHg/gᵀg with g = ∇J, the full probe gradient.
- ``per_batch``: g_kᵀHg_k/g_kᵀg_k for each batch gradient g_k, with H the Hessian of the *full*
  probe loss at θ (not batch k's own Hessian): it measures the curvature of the objective along
  the directions minibatch steps take, which is what decides whether they overshoot it. Their
  spread (``per_batch_stats``: mean, sample std, min, max, coefficient of variation std/|mean|)
  is the "varying gHg" evidence.
- ``lr_curvature`` and ``sgd_predicted_*``: the prediction for plain SGD at the checkpoint's lr ε.
- ``predicted_change``/``predicted_uphill``: the prediction for the step d the run's optimizer
  takes from g (momentum buffer, Adam moments; see :class:`OptimizerModel`), with
  ``along_step`` = dᵀHd/dᵀd. This is the step the run really takes, so these are the headline.

Every Hessian-vector product goes through ``ctx.hessian()`` (one shared graph): K + 2 HVPs.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from obstacle.battery.engine import HessianOperator
from obstacle.battery.optimizer_step import optimizer_model_for
from obstacle.battery.quantities.base import CheckpointContext, Quantity, Record
from obstacle.battery.reduce import dot64

__all__ = ["DirectionalCurvature"]

_STEP_KEYS = (
    "step_lr",
    "step_norm",
    "along_step",
    "first_order",
    "second_order",
    "predicted_change",
    "predicted_uphill",
)


class DirectionalCurvature(Quantity):
    """Record keys (flat):

    - ``grad_norm``, ``along_gradient``, ``per_batch``, ``per_batch_stats``
      {mean, std, min, max, cv};
    - plain SGD at the checkpoint's lr ε: ``lr``, ``lr_curvature`` (ε·gᵀHg/gᵀg),
      ``sgd_predicted_change``, ``sgd_predicted_uphill``;
    - the optimizer's step d: ``optimizer``, ``step_source``, ``step_lr``, ``step_norm``,
      ``along_step``, ``first_order`` (gᵀd), ``second_order`` (½dᵀHd), ``predicted_change``,
      ``predicted_uphill``;
    - ``reason``: why the step keys are None (the learning rate is unknown), else None.
    """

    name = "curvature"

    def compute(self, ctx: CheckpointContext) -> Record:
        hessian = ctx.hessian()
        _, g = ctx.gradient()
        gg, ghg = _quadratic_forms(hessian, g)
        per_batch = [
            _rayleigh(*_quadratic_forms(hessian, gk))
            for _, _, grads in ctx.batch_gradient_chunks()
            for gk in grads
        ]
        record: Record = {
            "grad_norm": math.sqrt(gg),
            "along_gradient": _rayleigh(gg, ghg),
            "per_batch": per_batch,
            "per_batch_stats": _spread(per_batch),
        }
        record.update(_sgd_prediction(ctx.lr, gg, ghg))
        record.update(_step_prediction(ctx, hessian, g))
        unknown = record["lr"] is None or record["step_lr"] is None
        record["reason"] = (
            "the learning rate is unknown (legacy checkpoint): no step to predict"
            if unknown
            else None
        )
        return record


def _quadratic_forms(hessian: HessianOperator, v: Tensor) -> tuple[float, float]:
    """(vᵀv, vᵀHv)."""
    return dot64(v, v), dot64(v, hessian(v))


def _rayleigh(vv: float, vhv: float) -> float:
    return vhv / vv if vv != 0 else math.nan


def _spread(values: list[float]) -> dict[str, float | None]:
    t = torch.tensor(values, dtype=torch.float64)
    mean = float(t.mean())
    if t.numel() < 2:
        return {"mean": mean, "std": None, "min": mean, "max": mean, "cv": None}
    std = float(t.std(correction=1))
    return {
        "mean": mean,
        "std": std,
        "min": float(t.min()),
        "max": float(t.max()),
        "cv": std / abs(mean) if mean != 0 else math.inf,
    }


def _uphill(change: float) -> bool | None:
    return None if math.isnan(change) else change > 0


def _sgd_prediction(lr: float, gg: float, ghg: float) -> dict[str, Any]:
    if not math.isfinite(lr):
        return dict.fromkeys(("lr", "lr_curvature", "sgd_predicted_change", "sgd_predicted_uphill"))
    lr_curvature = lr * _rayleigh(gg, ghg)
    return {
        "lr": lr,
        "lr_curvature": lr_curvature,
        "sgd_predicted_change": -lr * gg + 0.5 * lr * lr * ghg,
        # ε·gᵀHg/gᵀg > 2 is the same test as the predicted change being positive
        "sgd_predicted_uphill": None if math.isnan(lr_curvature) else lr_curvature > 2,
    }


def _step_prediction(ctx: CheckpointContext, hessian: HessianOperator, g: Tensor) -> dict[str, Any]:
    model = optimizer_model_for(ctx)
    out: dict[str, Any] = {"optimizer": model.kind, "step_source": model.source}
    if not math.isfinite(model.lr):
        return {**out, **dict.fromkeys(_STEP_KEYS)}
    d = model.step(g, ctx.theta)
    dd, dhd = _quadratic_forms(hessian, d)
    first, second = float(g @ d), 0.5 * dhd
    change = first + second
    return {
        **out,
        "step_lr": model.lr,
        "step_norm": math.sqrt(dd),
        "along_step": _rayleigh(dd, dhd),
        "first_order": first,
        "second_order": second,
        "predicted_change": change,
        "predicted_uphill": _uphill(change),
    }

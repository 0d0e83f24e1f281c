"""Negative curvature: λmin and λmax of the Hessian by Lanczos, and the evidence around them.

A critical point is a minimum only if no Hessian eigenvalue is negative; a clearly negative λmin
with a small gradient is a saddle. The record carries both extremes from one Krylov run
(:func:`obstacle.battery.lanczos.lanczos`), an **escape certificate** — the loss actually
measured along the λmin Ritz vector — a **slice** of the loss along it for the report, and
lr·λmax against the optimizer's stability threshold (edge of stability, Cohen et al. 2021),
preconditioned for adaptive optimizers (Cohen et al. 2022).

Escape scale. The certificate steps α along the unit λmin Ritz vector v, at α* · (¼, ½, 1), where
α* is the step at which the quadratic model ½|λmin|α² changes the loss by 1% of |J| — a change
big enough to matter and small enough for the model to hold — capped at 10% of ‖θ‖ so that a
nearly flat direction does not send the probe out of the region the checkpoint describes. The
even part ½(Δ₊ + Δ₋) cancels the gradient's linear term gᵀv·α (which makes one side descend at
any non-critical point, whatever the curvature); the certificate ``descends`` only when that even
part is negative beyond rounding, i.e. the loss measurably curves down along v. The slice spans
[−2α*, 2α*].
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from obstacle._validation import check_float, check_int
from obstacle.battery.checkpoint import OptimizerState
from obstacle.battery.lanczos import (
    DEFAULT_MAX_ITER,
    DEFAULT_MAX_VECTORS,
    DEFAULT_TOL,
    MIN_VECTORS,
    LanczosResult,
    lanczos,
)
from obstacle.battery.optimizer_step import ADAPTIVE_KINDS, THRESHOLD_KINDS, stability_threshold
from obstacle.battery.precision import FLOAT32_RESOLUTION, resolution
from obstacle.battery.quantities.base import CheckpointContext, Quantity, Record, finite
from obstacle.errors import ParameterError

# Optimizers whose step is preconditioned: lr·λmax(H) says nothing about their stability. The
# optimizer model (obstacle.battery.optimizer_step) holds what is known about each family.
ADAPTIVE_OPTIMIZERS = ADAPTIVE_KINDS
ESCAPE_FRACTION = 0.01  # the quadratic model's predicted change, as a fraction of |J|
# The largest step, as a fraction of max(‖θ‖, 1): it keeps the probe inside the region where the
# quadratic model holds. The floor of 1 matters at a saddle at the origin (a network from a tiny
# initialisation), where ‖θ‖ → 0 would shrink the certificate below float noise.
ESCAPE_MAX_STEP = 0.1
ESCAPE_MULTIPLES = (0.25, 0.5, 1.0)
SLICE_SPAN = 2.0  # the slice covers [−SLICE_SPAN·α*, SLICE_SPAN·α*]


def escape_scale(
    loss: float,
    lambda_min: float,
    theta_norm: float,
    *,
    fraction: float = ESCAPE_FRACTION,
    max_step: float = ESCAPE_MAX_STEP,
) -> float:
    """α* where ½|λmin|α² = fraction·|J|, capped at max_step·max(‖θ‖, 1)."""
    candidates = []
    if abs(lambda_min) > 0 and abs(loss) > 0 and math.isfinite(lambda_min) and math.isfinite(loss):
        candidates.append(math.sqrt(2.0 * fraction * abs(loss) / abs(lambda_min)))
    if math.isfinite(theta_norm):
        candidates.append(max_step * max(theta_norm, 1.0))
    return min(candidates) if candidates else 1.0


class NegativeCurvature(Quantity):
    """λmin/λmax by Lanczos, the escape certificate and slice along v_min, and stability numbers.

    Options read from ``ctx.options``: ``warm_start`` (default True: start from
    ``ctx.carry["ritz_vectors"]`` and store the new ones), ``slice_points`` (21),
    ``lanczos_max_iter`` and ``lanczos_tol`` (override the constructor's), ``optimizer`` (an
    :class:`OptimizerState`, a ``{"kind", "hyperparameters"}`` mapping or a class name; default the
    checkpoint's, else plain SGD), ``preconditioner`` (P's diagonal as a flat tensor) and
    ``preconditioned_threshold`` (default :func:`stability_threshold` of an adaptive optimizer).
    """

    name: ClassVar[str] = "lanczos"

    def __init__(
        self,
        *,
        max_iter: int = DEFAULT_MAX_ITER,
        tol: float = DEFAULT_TOL,
        seed: int = 0,
        verify: bool = False,
    ) -> None:
        self.max_iter = check_int("max_iter", max_iter, low=2)
        self.tol = check_float("tol", tol, low=0.0, high=1.0, closed="neither")
        self.seed = check_int("seed", seed, low=0)
        self.verify = bool(verify)

    def compute(self, ctx: CheckpointContext) -> Record:
        max_iter = check_int(
            "lanczos_max_iter", ctx.options.get("lanczos_max_iter", self.max_iter), low=2
        )
        tol = check_float(
            "lanczos_tol",
            ctx.options.get("lanczos_tol", self.tol),
            low=0.0,
            high=1.0,
            closed="neither",
        )
        points = check_int("slice_points", ctx.options.get("slice_points", 21), low=3)
        warm = bool(ctx.options.get("warm_start", True))
        vectors = check_int(
            "lanczos_max_vectors",
            ctx.options.get("lanczos_max_vectors", DEFAULT_MAX_VECTORS),
            low=MIN_VECTORS,
        )
        kind, hyper = _optimizer(ctx)
        # Lanczos holds its basis (``vectors`` of θ's size): the noise and curvature quantities'
        # per-batch gradients need not be held beside it (8 vectors of a 4M-parameter MLP).
        ctx.release_batch_gradients()
        op = ctx.hessian()
        record = _empty_record(kind, ctx.lr)
        if not math.isfinite(op.loss):
            return record  # a diverged checkpoint: the loss record says so; nothing to measure here
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + ctx.step) % 2**63)
        result = lanczos(
            op,
            op.size,
            max_iter=max_iter,
            tol=tol,
            max_vectors=vectors,
            start_vectors=ctx.carry.get("ritz_vectors") if warm else None,
            generator=generator,
            dtype=ctx.theta.dtype,
            device=ctx.theta.device,
            verify=self.verify,
        )
        if math.isfinite(result.lambda_min):
            ctx.carry["ritz_vectors"] = [_warm_start(result.ritz_vectors)]
        record.update(_lanczos_fields(result, tol))
        _mark_unresolved(record, result, ctx.theta.dtype)
        if math.isfinite(result.lambda_min):
            alpha = escape_scale(
                op.loss, result.lambda_min, float(torch.linalg.vector_norm(ctx.theta))
            )
            record["escape"] = _escape(ctx, result.vector_min, op.loss, result.lambda_min, alpha)
            record["slice"] = _slice(ctx, result.vector_min, alpha, points)
        record["lr_lambda_max"] = finite(ctx.lr * result.lambda_max)
        if kind.lower() not in ADAPTIVE_OPTIMIZERS:
            record["stability_threshold"] = _threshold(kind, hyper)
        preconditioner = ctx.options.get("preconditioner")
        if preconditioner is not None:
            threshold = ctx.options.get("preconditioned_threshold")
            if threshold is None and kind.lower() in ADAPTIVE_OPTIMIZERS:
                threshold = _threshold(kind, hyper)
            record["preconditioned"] = self._preconditioned(
                ctx,
                preconditioner,
                threshold,
                generator,
                max_iter=max_iter,
                tol=tol,
                warm=warm,
                vectors=vectors,
            )
        return record

    def _preconditioned(
        self,
        ctx: CheckpointContext,
        diagonal: object,
        threshold: object,
        generator: torch.Generator,
        *,
        max_iter: int,
        tol: float,
        warm: bool,
        vectors: int,
    ) -> Record:
        """λmax(P^-1/2·H·P^-1/2) by Lanczos on v ↦ P^-1/2·H·(P^-1/2·v) (only λmax must converge)."""
        op = ctx.hessian()
        scale = _inverse_sqrt(diagonal, op.size, ctx.theta)

        def matvec(v: Tensor) -> Tensor:
            return scale * op(scale * v)

        result = lanczos(
            matvec,
            op.size,
            max_iter=max_iter,
            tol=tol,
            which="max",
            max_vectors=vectors,
            start_vectors=ctx.carry.get("preconditioned_ritz_vectors") if warm else None,
            generator=generator,
            dtype=ctx.theta.dtype,
            device=ctx.theta.device,
        )
        if math.isfinite(result.lambda_max):
            ctx.carry["preconditioned_ritz_vectors"] = [result.vector_max.detach().clone()]
        limit = (
            None
            if threshold is None
            else check_float("preconditioned_threshold", threshold, low=0.0)
        )
        return {
            "lambda_max": finite(result.lambda_max),
            "lr_lambda_max": finite(ctx.lr * result.lambda_max),
            "threshold": limit,
            "converged": result.converged_max,
            "residual": finite(result.residual_max),
            "iterations": result.iterations,
        }


def _warm_start(vectors: list[Tensor]) -> Tensor:
    """One vector for the next checkpoint's start: the sum of the unit Ritz vectors, which is
    all that :func:`obstacle.battery.lanczos.start_vector` uses of them (one vector carried
    instead of two)."""
    total = torch.zeros_like(vectors[0])
    for v in vectors:
        total += v / torch.linalg.vector_norm(v)
    return total


def _mark_unresolved(record: Record, result: LanczosResult, dtype: torch.dtype) -> None:
    """λmin below what ``dtype`` resolves is not a number: the record says so, and why."""
    bound = resolution(dtype) * abs(result.lambda_max)
    unresolved = math.isfinite(result.lambda_min) and abs(result.lambda_min) < bound
    record["lambda_min_resolution"] = finite(bound)
    record["lambda_min_unresolved"] = None
    if unresolved:
        record["lambda_min"] = None
        record["lambda_min_unresolved"] = (
            f"|λmin| = {abs(result.lambda_min):.2g} is below what {str(dtype).removeprefix('torch.')} "
            f"resolves ({FLOAT32_RESOLUTION:g}·λmax = {bound:.2g}): no clearly negative curvature; "
            "rerun with --dtype float64 for its value"
        )


def _empty_record(kind: str, lr: float) -> Record:
    return {
        "lambda_min": None,
        "lambda_min_resolution": None,
        "lambda_min_unresolved": None,
        "lambda_max": None,
        "converged_min": False,
        "converged_max": False,
        "residual_min": None,
        "residual_max": None,
        "iterations": 0,
        "matvecs": 0,
        "restarts": 0,
        "max_vectors": None,
        "exact": False,
        "warm_started": False,
        "tol": None,
        "escape": None,
        "slice": None,
        "lr": finite(lr),
        "lr_lambda_max": None,
        "optimizer": kind,
        "stability_threshold": None,
        "preconditioned": None,
    }


def _lanczos_fields(result: LanczosResult, tol: float) -> Record:
    return {
        "lambda_min": finite(result.lambda_min),
        "lambda_max": finite(result.lambda_max),
        "converged_min": result.converged_min,
        "converged_max": result.converged_max,
        "residual_min": finite(result.residual_min),
        "residual_max": finite(result.residual_max),
        "iterations": result.iterations,
        "matvecs": result.matvecs,
        "restarts": result.restarts,
        "max_vectors": result.max_vectors,
        "exact": result.exact,
        "warm_started": result.warm_started,
        "tol": tol,
    }


def _escape(ctx: CheckpointContext, v: Tensor, loss: float, lam: float, alpha: float) -> Record:
    alphas = [alpha * m for m in ESCAPE_MULTIPLES]
    plus = [ctx.engine.loss(ctx.theta + a * v) for a in alphas]
    minus = [ctx.engine.loss(ctx.theta - a * v) for a in alphas]
    eps = float(torch.finfo(ctx.theta.dtype).eps)
    descends = False
    curvature = []
    for a, jp, jm in zip(alphas, plus, minus, strict=True):
        even = 0.5 * ((jp - loss) + (jm - loss))
        curvature.append(finite(2.0 * even / (a * a)))
        noise = 64 * eps * max(abs(loss), abs(jp), abs(jm))
        descends = descends or even < -noise
    return {
        "alphas": alphas,
        "delta_plus": [finite(jp - loss) for jp in plus],
        "delta_minus": [finite(jm - loss) for jm in minus],
        "predicted": [0.5 * lam * a * a for a in alphas],
        "measured_curvature": curvature,
        "descends": descends,
    }


def _slice(ctx: CheckpointContext, v: Tensor, alpha: float, points: int) -> Record:
    grid = torch.linspace(-SLICE_SPAN * alpha, SLICE_SPAN * alpha, points, dtype=torch.float64)
    alphas = [float(a) for a in grid]
    return {
        "alphas": alphas,
        "losses": [finite(ctx.engine.loss(ctx.theta + a * v)) for a in alphas],
    }


def _optimizer(ctx: CheckpointContext) -> tuple[str, dict[str, Any]]:
    spec = ctx.options.get("optimizer", ctx.checkpoint.optimizer)
    if spec is None:
        return "SGD", {}
    if isinstance(spec, OptimizerState):
        return spec.kind, dict(spec.hyperparameters)
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, Mapping) and isinstance(spec.get("kind", spec.get("class")), str):
        return str(spec.get("kind", spec.get("class"))), dict(spec.get("hyperparameters", {}))
    raise ParameterError(
        "The 'optimizer' option must be an OptimizerState, a mapping with 'kind' and "
        f"'hyperparameters', or a class name. Got {type(spec).__name__} instead."
    )


def _threshold(kind: str, hyper: Mapping[str, Any]) -> float | None:
    """The stability threshold, or None for an optimizer no threshold is known for."""
    if kind.lower() not in THRESHOLD_KINDS:
        return None
    return stability_threshold(kind, hyper)


def _inverse_sqrt(diagonal: object, size: int, theta: Tensor) -> Tensor:
    if not isinstance(diagonal, Tensor) or diagonal.dim() != 1 or diagonal.numel() != size:
        shape = tuple(diagonal.shape) if isinstance(diagonal, Tensor) else type(diagonal).__name__
        raise ParameterError(
            f"The 'preconditioner' option must be a 1-D tensor of {size} entries (P's diagonal, "
            f"flat in parameter order). Got {shape} instead."
        )
    p = diagonal.to(device=theta.device, dtype=theta.dtype)
    if not bool(torch.isfinite(p).all()) or bool((p <= 0).any()):
        raise ParameterError(
            "The 'preconditioner' option must hold finite, positive entries (for Adam, "
            "sqrt(v_hat) + eps). Got a non-positive or non-finite entry."
        )
    return p.rsqrt()


__all__ = [
    "ADAPTIVE_OPTIMIZERS",
    "NegativeCurvature",
    "escape_scale",
    "stability_threshold",
]

"""Report JSON fixtures (schema ``obstacle.report/1``) written by hand, as the battery records them.

The numbers follow simple closed forms so a test can predict what a plot must show: a saddle run
(plateau with λmin < 0, then escape), a diverging run (loss explodes, then nulls everywhere), a
single checkpoint, a run without validation data, and a run where every measurement is null.
Everything goes through a JSON round trip, so non-finite values arrive as null like in a real file.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest

Report = dict[str, Any]


def _json(report: Report) -> Report:
    """Round trip through JSON as the battery writes it (NaN/inf → null)."""

    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, np.floating):
            return clean(float(value))
        if isinstance(value, np.integer):
            return int(value)
        if isinstance(value, np.ndarray):
            return [clean(v) for v in value.tolist()]
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        return value

    result: Report = json.loads(json.dumps(clean(report), allow_nan=False))
    return result


def _slice(loss: float, lam_min: float) -> dict[str, Any]:
    """Loss along the λmin eigenvector: J + ½λα² + a quartic wall, and its escape certificate."""
    alphas = np.linspace(-1.0, 1.0, 21)
    losses = loss + 0.5 * lam_min * alphas**2 + 0.04 * alphas**4
    probe = np.array([0.25, 0.5])
    delta = 0.5 * lam_min * probe**2 + 0.04 * probe**4
    return {
        "slice": {"alphas": alphas, "losses": losses},
        "escape": {
            "alphas": probe,
            "delta_plus": delta,
            "delta_minus": delta * 1.05,
            "descends": bool(np.all(delta < 0)),
        },
        "iterations": 20,
        "converged": True,
    }


def _spectrum(lam_max: float, negative_mass: float) -> dict[str, Any]:
    grid = np.linspace(-0.2, lam_max * 1.1, 160)
    density = (
        np.exp(-0.5 * (grid / 0.03) ** 2)
        + negative_mass * np.exp(-0.5 * ((grid + 0.08) / 0.02) ** 2)
        + 0.02 * np.exp(-0.5 * ((grid - lam_max) / (0.05 * lam_max)) ** 2)
        + 1e-6
    )
    return {"density": {"grid": grid, "values": density / density.sum()}, "trace": lam_max * 3.1}


def _verdict_saddle() -> dict[str, Any]:
    return {
        "primary": "saddle_point",
        "confidence": 0.86,
        "obstacles": [
            {
                "kind": "saddle_point",
                "confidence": 0.86,
                "steps": [100, 200, 300, 400, 500, 600],
                "evidence": [
                    {
                        "test": "lanczos",
                        "statement": "most negative Hessian eigenvalue λmin = -0.06 at step 300, "
                        "6% of λmax",
                        "value": -0.06,
                    },
                    {
                        "test": "escape_certificate",
                        "statement": "a step of 0.5 along ±v lowers the loss by 0.0075",
                        "value": -0.0075,
                    },
                    {
                        "test": "lanczos",
                        "statement": "lr·λmax = 3.1 at step 300, 1.6× the optimizer's stability "
                        "threshold 2",
                        "value": 1.55,
                        "unit": "ratio",
                    },
                    {
                        "test": "gradient_norm",
                        "statement": "gradient norm 2.1e-4 on a loss plateau at 0.693",
                        "value": 0.00021,
                    },
                ],
                "suggestion": "negative curvature -0.06 along a direction that lowers the loss — "
                "momentum, noise or a curvature-aware step escapes it",
            },
            {
                "kind": "gradient_noise",
                "confidence": 0.31,
                "steps": [900, 1000],
                "evidence": [
                    {
                        "test": "uphill_step_rate",
                        "statement": "34% of minibatch steps go uphill while the full step "
                        "descends",
                        "value": 0.34,
                        "unit": "fraction",
                    }
                ],
                "suggestion": "increase the batch size or decay the learning rate",
            },
        ],
        "ruled_out": [
            {
                "kind": "local_minimum",
                "reason": "λmin = -0.06 < 0: the plateau is not a minimum",
            },
            {"kind": "poor_conditioning", "reason": "lr·λmax ≤ 0.31, far below 2"},
            {"kind": "divergence", "reason": "every checkpoint is finite"},
            {
                "kind": "overfitting",
                "reason": "validation loss follows the training loss (gap 0.01)",
            },
            {"kind": "no_critical_point", "reason": "parameter norm levels off at 3.2"},
        ],
        "summary": "The run sat on a saddle point for 600 steps before escaping along its "
        "negative-curvature direction.",
    }


def saddle_report(*, barrier: bool = False, validation: bool = True) -> Report:
    """A deep linear network from small initialization: a plateau at a saddle, then escape."""
    steps = np.arange(0, 1500, 100)
    escape = 1.0 / (1.0 + np.exp(-(steps - 800) / 80.0))
    loss = 0.693 * (1 - escape) + 0.01 * escape
    lam_min = -0.06 * (1 - escape) - 1e-7
    lam_max = 0.3 + 2.7 * escape
    grad_norm = 2e-4 + 0.4 * escape * (1 - escape)
    lr = 0.1
    checkpoints = []
    for i, step in enumerate(steps):
        lanczos = _slice(float(loss[i]), float(lam_min[i]))
        checkpoints.append(
            {
                "step": int(step),
                "lr": lr,
                "loss": loss[i],
                "validation_loss": loss[i] + 0.01 if validation else None,
                "train_loss": loss[i] * (1 + 0.05 * math.sin(i)),
                "grad_norm": grad_norm[i],
                "param_norm": 0.05 + 3.2 * escape[i],
                "distance_from_start": 3.2 * escape[i],
                "curvature_along_gradient": 0.5 * lam_max[i],
                "lr_curvature": lr * 0.5 * lam_max[i],
                "lambda_min": lam_min[i],
                "lambda_max": lam_max[i],
                "lr_lambda_max": lr * lam_max[i],
                "stability_threshold": 2.0,
                "noise_trace": 1e-3,
                "noise_scale": 1e-3 / max(grad_norm[i] ** 2, 1e-12),
                "snr": grad_norm[i] ** 2 / 1e-3 * 64,
                "uphill_fraction_minibatch": 0.1 + 0.25 * escape[i],
                "full_step_uphill": False,
                "finite": True,
                "details": {
                    "lanczos": lanczos,
                    "spectrum": _spectrum(float(lam_max[i]), float(1 - escape[i]))
                    if i % 5 == 0
                    else None,
                },
            }
        )
    alphas = np.linspace(-0.5, 1.5, 41)
    train = 0.01 + 0.683 * (1 - alphas) ** 2 / (1 + (1 - alphas) ** 2) * 2
    if barrier:
        train = train + 0.5 * np.exp(-0.5 * ((alphas - 0.55) / 0.08) ** 2)
    x = np.linspace(-0.5, 1.5, 41)
    y = np.linspace(-1.0, 1.0, 31)
    xx, yy = np.meshgrid(x, y)
    surface = 0.01 + 0.68 * (1 - xx) ** 2 + 0.3 * yy**2 - 0.2 * yy**2 * (1 - xx) ** 2 + 0.05 * yy**4
    t = np.linspace(0, 1, steps.size)
    path_x = escape
    path_y = 0.35 * np.sin(np.pi * t)
    report: Report = {
        "schema": "obstacle.report/1",
        "verdict": _verdict_saddle(),
        "checkpoints": checkpoints,
        "run": {
            "name": "deep-linear-saddle",
            "num_parameters": 2048,
            "num_checkpoints": len(checkpoints),
            "preset": "full",
            "target_loss": 0.05,
            "uphill_step_rate": {"rate": 0.21, "count": 3, "total": 14},
            "curvature_variation": {"cv": 0.8, "sign_changes": 0},
            "interpolation": {
                "alphas": alphas,
                "train": train,
                "validation": train + 0.012 if validation else None,
                "monotone": not barrier,
                "barrier": 0.49 if barrier else None,
                "barrier_alpha": 0.55 if barrier else None,
            },
            "subspace": {
                "x": x,
                "y": y,
                "loss": surface,
                "path": {"x": path_x, "y": path_y, "steps": steps},
            },
            "train_log": {
                "steps": np.arange(0, 1400, 10),
                "loss": np.interp(np.arange(0, 1400, 10), steps, loss)
                * (1 + 0.08 * np.sin(np.arange(140))),
            },
        },
    }
    return _json(report)


def divergence_report() -> Report:
    """Too large a learning rate: loss explodes, then everything is non-finite (null)."""
    steps = [0, 10, 20, 30, 40, 50, 60, 70]
    checkpoints: list[dict[str, Any]] = []
    for i, step in enumerate(steps):
        alive = i < 5
        loss = 2.3 * 30.0**i if alive else math.nan
        checkpoints.append(
            {
                "step": step,
                "lr": 0.9,
                "loss": loss,
                "validation_loss": loss * 1.1,
                "train_loss": loss,
                "grad_norm": 3.0 * 30.0**i if alive else math.nan,
                "param_norm": 10.0 * 5.0**i if alive else math.inf,
                "distance_from_start": 7.0 * 5.0**i if alive else math.nan,
                "curvature_along_gradient": 4.0 if alive else math.nan,
                "lr_curvature": 3.6 if alive else math.nan,
                "lambda_min": -0.5 * 10.0**i if alive else math.nan,
                "lambda_max": 5.0 * 10.0**i if alive else math.nan,
                "lr_lambda_max": 4.5 * 10.0**i if alive else math.nan,
                "stability_threshold": 2.0,
                "noise_trace": None,
                "noise_scale": None,
                "snr": 40.0 if alive else math.nan,
                "uphill_fraction_minibatch": 0.6 if alive else None,
                "full_step_uphill": True if alive else None,
                "finite": alive,
                "details": {"lanczos": None, "spectrum": None},
            }
        )
    alphas = np.linspace(-0.5, 1.5, 21)
    train = np.where(alphas < 0.9, 2.3 * 10.0 ** (6 * np.clip(alphas, 0, None)), np.nan)
    report: Report = {
        "schema": "obstacle.report/1",
        "verdict": {
            "primary": "divergence",
            "confidence": 0.99,
            "obstacles": [
                {
                    "kind": "divergence",
                    "confidence": 0.99,
                    "steps": [50, 60, 70],
                    "evidence": [
                        {
                            "test": "finite",
                            "statement": "loss is non-finite from step 50",
                            "value": None,
                        },
                        {
                            "test": "lr_lambda_max",
                            "statement": "lr·λmax = 4.5 > 2 at step 0",
                            "value": 4.5,
                        },
                    ],
                    "suggestion": "lower the learning rate below 2/λmax ≈ 0.4",
                }
            ],
            "ruled_out": [{"kind": "healthy", "reason": "the loss became non-finite"}],
            "summary": "The run diverged: the loss exploded and became non-finite at step 50.",
        },
        "checkpoints": checkpoints,
        "run": {
            "name": "lr-too-large",
            "num_parameters": 1234567,
            "num_checkpoints": len(steps),
            "preset": "standard",
            "target_loss": None,
            "uphill_step_rate": {"rate": 1.0},
            "curvature_variation": {"cv": None, "sign_changes": 0},
            "interpolation": {
                "alphas": alphas,
                "train": train,
                "validation": None,
                "monotone": True,
                "barrier": None,
                "barrier_alpha": None,
            },
            "subspace": None,
            "train_log": None,
        },
    }
    return _json(report)


def single_checkpoint_report() -> Report:
    """One checkpoint: no interpolation, no subspace, no training log."""
    report = saddle_report()
    report["checkpoints"] = report["checkpoints"][3:4]
    report["checkpoints"][0]["details"]["spectrum"] = None
    report["run"].update(
        num_checkpoints=1,
        interpolation=None,
        subspace=None,
        train_log=None,
        uphill_step_rate=None,
        curvature_variation=None,
    )
    return report


def all_null_report() -> Report:
    """Every measurement null, verdict fields missing: the report must still render."""
    keys = ["lr", "loss", "validation_loss", "grad_norm", "lambda_min", "lambda_max", "snr"]
    checkpoints = [{"step": s, **dict.fromkeys(keys), "details": None} for s in (0, 5, 10)]
    return {
        "schema": "obstacle.report/1",
        "verdict": {"primary": None, "obstacles": None, "ruled_out": None},
        "checkpoints": checkpoints,
        "run": {"name": None, "interpolation": None, "subspace": None},
    }


@pytest.fixture
def saddle() -> Report:
    return saddle_report()


@pytest.fixture
def saddle_with_barrier() -> Report:
    return saddle_report(barrier=True)


@pytest.fixture
def no_validation() -> Report:
    return saddle_report(validation=False)


@pytest.fixture
def divergence() -> Report:
    return divergence_report()


@pytest.fixture
def single_checkpoint() -> Report:
    return single_checkpoint_report()


@pytest.fixture
def all_null() -> Report:
    return all_null_report()


@pytest.fixture(scope="session")
def saddle_page() -> tuple[Report, str]:
    """The saddle run (with a barrier) and its rendered HTML, rendered once per session."""
    from obstacle.battery.report import render_html

    report = saddle_report(barrier=True)
    return report, render_html(report)

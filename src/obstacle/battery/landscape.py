"""The loss landscape around the training path: the data behind the two plots of DESIGN.md.

- :func:`linear_interpolation`: J along the straight line θ(α) = (1 − α)·θa + α·θb for
  α ∈ [−0.5, 1.5] (Goodfellow, Vinyals & Saxe, ICLR 2015): a loss that falls monotonically
  from θ0 to θT says the run met no barrier on the direct route.
- :func:`interpolation_from_checkpoints`: the same summary from every checkpoint to θT.
- :func:`subspace`: the path projected on the plane of θT − θ0 and the path's largest
  deviation from that line, with J on a lattice over the plane.

Each returns a JSON-ready dict; non-finite losses are kept as float NaN/inf (callers serialize
them to null) and never raised. Each states its ``cost`` (loss evaluations, via the engine).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from obstacle._validation import check_float, check_int
from obstacle.battery.engine import LossEngine
from obstacle.errors import ParameterError

__all__ = ["interpolation_from_checkpoints", "linear_interpolation", "subspace"]

# The training loss counts as monotone on [0, 1] when its largest climb along the grid is at most
# this fraction of the loss range over [0, 1], so float noise on a flat stretch is no barrier.
MONOTONE_RTOL = 1e-3
# ...plus a few ulps of the loss's magnitude, for a range that is itself rounding noise.
_ULPS = 8 * 2.0**-52
# A path whose largest distance from the θ0→θT line is below this fraction of ‖θT − θ0‖
# is a straight line: the plane's second direction is then a seeded random one.
_STRAIGHT_RTOL = 1e-9


def _alpha_grid(
    alphas: Sequence[float] | None, points: int, low: float, high: float
) -> list[float]:
    """The α grid, sorted, with 0 and 1 present exactly (a near-miss of 1e-9 is snapped)."""
    if alphas is None:
        grid = [low + (high - low) * i / (points - 1) for i in range(points)]
    else:
        grid = [check_float("alphas", a) for a in alphas]
    span = max(*grid, 1.0) - min(*grid, 0.0)
    for target in (0.0, 1.0):
        near = [i for i, a in enumerate(grid) if abs(a - target) <= 1e-9 * span]
        if near:
            grid[near[0]] = target
        else:
            grid.append(target)
    return sorted(set(grid))


def _summary(alphas: Sequence[float], losses: Sequence[float]) -> dict[str, Any]:
    """Monotonicity, barrier and largest rise of the training loss on α ∈ [0, 1].

    ``barrier`` is the standard loss barrier of linear mode connectivity (Frankle et al. 2020;
    Entezari et al. 2022): max over α ∈ [0, 1] of J(α) − [(1 − α)·J(0) + α·J(1)], the height of
    the curve above the chord between the endpoints' losses, clamped at 0; ``barrier_alpha`` is
    where it peaks. Heights within the monotone ``tolerance`` count as 0 (float noise), and
    ``barrier_alpha`` is then None. A curve that is monotone can still bulge above the chord
    (a plateau before a drop); ``rise`` — the largest climb max_{α<β} J(β) − J(α) on the grid —
    is what ``monotone`` thresholds. All None when a loss on [0, 1] is not finite.
    """
    inside = [(a, j) for a, j in zip(alphas, losses, strict=True) if 0.0 <= a <= 1.0]
    values = [j for _, j in inside]
    if len(inside) < 2 or not all(math.isfinite(j) for j in values):
        return {
            "monotone": None,
            "tolerance": None,
            "barrier": None,
            "barrier_alpha": None,
            "rise": None,
        }
    j0, j1 = values[0], values[-1]
    tolerance = MONOTONE_RTOL * (max(values) - min(values)) + _ULPS * max(abs(j) for j in values)
    rise, lowest = 0.0, values[0]
    for j in values[1:]:
        rise = max(rise, j - lowest)
        lowest = min(lowest, j)
    excess = [(j - ((1.0 - a) * j0 + a * j1), a) for a, j in inside]
    height, where = max(excess)
    barrier = height if height > tolerance else 0.0
    return {
        "monotone": rise <= tolerance,
        "tolerance": tolerance,
        "barrier": barrier,
        "barrier_alpha": where if barrier > 0 else None,
        "rise": rise,
    }


def _curve(
    engine: LossEngine,
    theta_a: Tensor,
    theta_b: Tensor,
    alphas: Sequence[float],
    known: dict[float, float],
) -> list[float]:
    out = []
    for a in alphas:
        if a in known:
            out.append(known[a])
        else:
            out.append(engine.loss(_point(a, theta_a, theta_b)))
    return out


def _point(alpha: float, theta_a: Tensor, theta_b: Tensor) -> Tensor:
    """θ(α), with the endpoints exactly θa and θb (a non-finite θb does not spoil θ(0))."""
    if alpha == 0.0:
        return theta_a
    if alpha == 1.0:
        return theta_b
    return (1.0 - alpha) * theta_a + alpha * theta_b


def linear_interpolation(
    engine: LossEngine,
    theta_a: Tensor,
    theta_b: Tensor,
    *,
    alphas: Sequence[float] | None = None,
    points: int = 41,
) -> dict[str, Any]:
    """J and the validation loss along θ(α) = (1 − α)·θa + α·θb.

    By default α takes ``points`` evenly spaced values over [−0.5, 1.5]; ``alphas`` gives the
    grid instead. α = 0 and α = 1 are always on it, exactly (θ(0) = θa, θ(1) = θb).

    Returns ``alphas``, ``train`` (probe loss J at each α), ``validation`` (None when the probe
    has no validation batch), ``distance`` ‖θb − θa‖, ``non_finite`` (count of non-finite
    training losses on the grid), the summary on [0, 1] — ``monotone`` (the largest climb
    ``rise`` is at most ``tolerance`` = 1e-3 × the loss range on [0, 1] plus a few ulps), ``barrier``,
    ``barrier_alpha``, ``rise`` (see :func:`_summary`) — and ``cost``.
    """
    points = check_int("points", points, low=2)
    theta_a = _theta(engine, "theta_a", theta_a)
    theta_b = _theta(engine, "theta_b", theta_b)
    before = engine.cost.copy()
    grid = _alpha_grid(alphas, points, -0.5, 1.5)
    train = _curve(engine, theta_a, theta_b, grid, {})
    validation = None
    if engine.validation is not None:
        validation = [engine.loss(_point(a, theta_a, theta_b), "validation") for a in grid]
    return {
        "alphas": grid,
        "train": train,
        "validation": validation,
        "distance": float(torch.linalg.vector_norm(theta_b - theta_a)),
        "non_finite": sum(1 for j in train if not math.isfinite(j)),
        **_summary(grid, train),
        "cost": (engine.cost - before).as_dict(),
    }


def interpolation_from_checkpoints(
    engine: LossEngine,
    thetas: Sequence[Tensor],
    steps: Sequence[int],
    theta_final: Tensor,
    points: int = 11,
) -> dict[str, Any]:
    """The monotone/barrier summary of the line from each checkpoint to θT, over α ∈ [0, 1].

    ``alphas`` are ``points`` evenly spaced values on [0, 1]; J(θT) is evaluated once and shared.
    ``checkpoints`` has one entry per checkpoint that differs from θT — ``step``, ``distance``,
    ``train`` (J along the line), ``monotone``, ``tolerance``, ``barrier``, ``barrier_alpha``,
    ``rise`` — in the order given; ``skipped_steps`` lists those equal to θT (no line to walk).
    ``monotone_fraction`` is the fraction of entries with a defined flag that are monotone and
    ``max_barrier`` the largest barrier (None without entries), plus ``cost``.
    """
    points = check_int("points", points, low=2)
    if len(thetas) != len(steps):
        raise ParameterError(
            f"The 'thetas' and 'steps' parameters must have the same length. Got {len(thetas)} "
            f"parameter vectors and {len(steps)} steps instead."
        )
    theta_final = _theta(engine, "theta_final", theta_final)
    before = engine.cost.copy()
    grid = [i / (points - 1) for i in range(points)]
    end = engine.loss(theta_final)
    entries: list[dict[str, Any]] = []
    skipped: list[int] = []
    for i, step in enumerate(steps):
        theta = _theta(engine, "thetas", thetas[i])  # one at a time: a lazy sequence loads it here
        if torch.equal(theta, theta_final):
            skipped.append(int(step))
            continue
        train = _curve(engine, theta, theta_final, grid, {1.0: end})
        entries.append(
            {
                "step": int(step),
                "distance": float(torch.linalg.vector_norm(theta_final - theta)),
                "train": train,
                **_summary(grid, train),
            }
        )
    flags = [e["monotone"] for e in entries if e["monotone"] is not None]
    barriers = [e["barrier"] for e in entries if e["barrier"] is not None]
    return {
        "alphas": grid,
        "checkpoints": entries,
        "skipped_steps": skipped,
        "monotone_fraction": sum(flags) / len(flags) if flags else None,
        "max_barrier": max(barriers) if barriers else None,
        "cost": (engine.cost - before).as_dict(),
    }


def subspace(
    engine: LossEngine,
    thetas: Sequence[Tensor],
    steps: Sequence[int],
    *,
    grid: int = 15,
    margin: float = 0.2,
    seed: int = 0,
) -> dict[str, Any]:
    """The training path on the plane of θT − θ0 and its largest deviation, with J over it.

    θ0 and θT are the first and last checkpoints (in step order) whose parameters are finite.
    u = (θT − θ0)/‖θT − θ0‖; w is the checkpoint offset θi − θ0 with the largest component
    orthogonal to u, made orthogonal to u (Gram–Schmidt) and normalized (``w_source`` "path");
    when the path is a straight line it is a random direction orthogonal to u drawn from
    ``seed`` (``w_source`` "random"). Plane coordinates are in parameter units:
    θ = θ0 + x·u + y·w.

    Returns ``x`` and ``y`` (the ``grid`` lattice coordinates; each axis spans the path's range
    extended on both sides by ``margin`` × the larger of the two ranges, so a nearly straight
    path still gets a band around it), ``loss`` (``grid`` rows, row j at y[j], column i at x[i]),
    ``path`` {``x``, ``y``, ``steps``} in step order (NaN coordinates for non-finite checkpoints),
    ``origin_step``, ``end_step``, ``u_norm`` = ‖θT − θ0‖, ``w_norm`` (the path's largest
    distance from the line), ``w_source``, ``residual`` (Σ‖offset outside the plane‖² /
    Σ‖offset‖² over the path: 0 when the path lies in the plane), ``note`` and ``cost``.

    With fewer than two distinct finite checkpoints there is no plane: ``x``, ``y`` and ``loss``
    are empty, ``u_norm`` is 0 or None, ``w_source`` and ``residual`` are None and ``note`` says
    why.
    """
    grid = check_int("grid", grid, low=2)
    margin = check_float("margin", margin, low=0.0)
    if len(thetas) != len(steps):
        raise ParameterError(
            f"The 'thetas' and 'steps' parameters must have the same length. Got {len(thetas)} "
            f"parameter vectors and {len(steps)} steps instead."
        )
    before = engine.cost.copy()
    order = sorted(range(len(steps)), key=lambda i: int(steps[i]))
    path_steps = [int(steps[i]) for i in order]

    def point(j: int) -> Tensor:  # the j-th checkpoint in step order, loaded when asked for
        return _theta(engine, "thetas", thetas[order[j]])

    # The path is streamed (``thetas`` may load each checkpoint on access): at most θ0, u, w and
    # one checkpoint are held, in three passes over it.
    finite = [j for j in range(len(order)) if bool(torch.isfinite(point(j)).all())]
    nan_path = {"x": [math.nan] * len(order), "y": [math.nan] * len(order), "steps": path_steps}
    out: dict[str, Any] = {
        "x": [],
        "y": [],
        "loss": [],
        "path": nan_path,
        "origin_step": path_steps[finite[0]] if finite else None,
        "end_step": path_steps[finite[-1]] if finite else None,
        "u_norm": None,
        "w_norm": None,
        "w_source": None,
        "residual": None,
        "note": None,
    }
    if len(finite) < 2:
        out["note"] = "no plane: fewer than two checkpoints with finite parameters"
        out["cost"] = (engine.cost - before).as_dict()
        return out
    origin = point(finite[0])
    u = point(finite[-1]) - origin
    u_norm = float(torch.linalg.vector_norm(u))
    out["u_norm"] = u_norm
    if u_norm == 0.0:
        out["note"] = "no plane: the first and last finite checkpoints are equal"
        out["cost"] = (engine.cost - before).as_dict()
        return out
    u = u / u_norm
    along, distances = [], []
    for j in finite:
        d = point(j) - origin
        a = float(d @ u)
        along.append(a)
        distances.append(float(torch.linalg.vector_norm(d - a * u)))
    w_norm = max(distances)
    if w_norm > _STRAIGHT_RTOL * u_norm:
        k = distances.index(w_norm)
        w, source = point(finite[k]) - origin - along[k] * u, "path"
        out["note"] = f"w from the checkpoint at step {path_steps[finite[k]]}"
    else:
        generator = torch.Generator().manual_seed(seed)
        w = torch.randn(u.numel(), generator=generator, dtype=torch.float64).to(u.device, u.dtype)
        w, source = w - (w @ u) * u, "random"
        out["note"] = (
            f"the path is a straight line: w is a random direction orthogonal to u (seed {seed})"
        )
    w = w - (w @ u) * u  # a second Gram–Schmidt pass keeps u·w at rounding level
    w = w / torch.linalg.vector_norm(w)
    xs = [math.nan] * len(order)
    ys = [math.nan] * len(order)
    outside = total = 0.0
    for j, a in zip(finite, along, strict=True):
        d = point(j) - origin
        b = float(d @ w)
        xs[j], ys[j] = a, b
        outside += float(torch.linalg.vector_norm(d - a * u - b * w)) ** 2
        total += float(torch.linalg.vector_norm(d)) ** 2
    px = [xs[i] for i in finite]
    py = [ys[i] for i in finite]
    pad = margin * max(max(px) - min(px), max(py) - min(py))
    lattice_x = _linspace(min(px) - pad, max(px) + pad, grid)
    lattice_y = _linspace(min(py) - pad, max(py) + pad, grid)
    loss = [[engine.loss(origin + a * u + b * w) for a in lattice_x] for b in lattice_y]
    out.update(
        x=lattice_x,
        y=lattice_y,
        loss=loss,
        path={"x": xs, "y": ys, "steps": path_steps},
        w_norm=w_norm,
        w_source=source,
        residual=outside / total,
        cost=(engine.cost - before).as_dict(),
    )
    return out


def _linspace(low: float, high: float, n: int) -> list[float]:
    return [low + (high - low) * i / (n - 1) for i in range(n)]


def _theta(engine: LossEngine, name: str, theta: object) -> Tensor:
    """``theta`` checked to be a flat parameter vector, on the engine's device and dtype."""
    size = engine.num_parameters
    if not isinstance(theta, Tensor) or theta.dim() != 1 or theta.numel() != size:
        shape = tuple(theta.shape) if isinstance(theta, Tensor) else type(theta).__name__
        raise ParameterError(
            f"The {name!r} parameter must be a flat parameter vector of {size} values "
            f"(engine.flatten(state)). Got {shape} instead."
        )
    return theta.detach().to(engine.device, engine.dtype)

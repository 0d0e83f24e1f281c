"""The Hessian's trace (Hutch++) and spectral density (stochastic Lanczos quadrature).

Only in the ``full`` preset: together they cost ``trace_matvecs + num_probes·lanczos_steps`` HVPs.

Trace. Hutch++ (Meyer, Musco, Musco & Woodruff 2021) spends a third of its matvecs sketching the
top of the spectrum (Q = orth(H·S)), a third on tr(QᵀHQ) exactly, and the rest on Hutchinson's
estimator of the deflated remainder (I−QQᵀ)H(I−QQᵀ) with Rademacher probes. Only that last part is
random given Q, so ``trace_std`` is its standard error: the sample standard deviation of the probe
values over √(number of probes).

Density. Each of ``num_probes`` random unit vectors v starts ``lanczos_steps`` steps of Lanczos
(full reorthogonalization); the eigenpairs (θ_j, s_j) of its tridiagonal give the Gauss quadrature
vᵀf(H)v ≈ Σ_j s_j[0]²·f(θ_j) (Golub & Meurant; Ghorbani, Krishnan & Xiao 2019). Averaged over the
probes and broadened with Gaussians of width ``broadening``·(θmax − θmin), this is the eigenvalue
density normalized to integrate to 1 (n times it counts eigenvalues). The nodes and weights are
kept in the record so a report can re-broaden or plot on a log scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal
from torch import Tensor

from obstacle._validation import check_float, check_int
from obstacle.battery.lanczos import LanczosProcess, Operator
from obstacle.battery.quantities.base import CheckpointContext, Quantity, Record, finite

_PAD = 5.0  # the grid extends this many broadening widths past the extreme nodes


@dataclass
class TraceEstimate:
    trace: float
    std: float | None  # standard error of the random (Hutchinson) part; None with < 2 probes
    matvecs: int


@dataclass
class Quadrature:
    """Gauss quadrature nodes and weights, one row per probe (each row's weights sum to 1)."""

    nodes: list[list[float]]
    weights: list[list[float]]
    matvecs: int


def _rademacher(rows: int, dim: int, generator: torch.Generator | None, like: Tensor) -> Tensor:
    signs = torch.randint(0, 2, (rows, dim), generator=generator, dtype=torch.int8)
    return (2 * signs - 1).to(device=like.device, dtype=like.dtype)


def hutch_plus_plus(
    matvec: Operator,
    dim: int,
    *,
    matvecs: int,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> TraceEstimate:
    """tr(H) by Hutch++ with ``matvecs`` operator calls (a third sketch, a third low-rank, the rest Hutchinson)."""
    dim = check_int("dim", dim, low=1)
    matvecs = check_int("trace_matvecs", matvecs, low=3)
    like = torch.empty(0, dtype=dtype, device=torch.device(device))
    k = min(matvecs // 3, dim)
    sketch = _rademacher(k, dim, generator, like)
    y = torch.stack([matvec(s) for s in sketch], dim=1)  # (dim, k)
    q, _ = torch.linalg.qr(y)
    hq = torch.stack([matvec(col) for col in q.T], dim=1)
    low_rank = float(torch.sum(q * hq))
    used = 2 * k
    if k >= dim:  # Q spans everything: the low-rank part is the trace
        return TraceEstimate(low_rank, 0.0, used)
    g = _rademacher(matvecs - used, dim, generator, like)
    g = g - (g @ q) @ q.T
    samples = torch.stack([torch.dot(p, matvec(p)) for p in g]).double()
    used += g.shape[0]
    std = float(samples.std() / math.sqrt(samples.numel())) if samples.numel() >= 2 else None
    return TraceEstimate(low_rank + float(samples.mean()), std, used)


def lanczos_quadrature(
    matvec: Operator,
    dim: int,
    *,
    num_probes: int,
    steps: int,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> Quadrature:
    """Stochastic Lanczos quadrature: per probe, the tridiagonal's eigenvalues and s_j[0]²."""
    dim = check_int("dim", dim, low=1)
    num_probes = check_int("num_probes", num_probes, low=1)
    steps = check_int("lanczos_steps", steps, low=2)
    like = torch.empty(0, dtype=dtype, device=torch.device(device))
    nodes, weights, used = [], [], 0
    eps = float(torch.finfo(dtype).eps)
    for v in _rademacher(num_probes, dim, generator, like):
        process = LanczosProcess(matvec, v)
        while process.steps < min(steps, dim):
            beta = process.step()
            scale = max(abs(a) for a in process.alphas)
            # A (nearly) invariant Krylov space: the nodes that further steps would add carry
            # weight of order (β/gap)², far below what the broadening resolves.
            if not math.isfinite(beta) or beta <= math.sqrt(eps) * scale:
                break
        used += process.matvecs
        d = np.asarray(process.alphas, dtype=np.float64)
        if not np.all(np.isfinite(d)) or not np.all(np.isfinite(process.betas[:-1])):
            nodes.append([math.nan])
            weights.append([1.0])
            continue
        theta, s = eigh_tridiagonal(d, np.asarray(process.betas[:-1], dtype=np.float64))
        nodes.append([float(t) for t in theta])
        weights.append([float(w) for w in s[0] ** 2])
    return Quadrature(nodes, weights, used)


def broadened_density(
    quadrature: Quadrature, *, grid_points: int, broadening: float
) -> tuple[list[float], list[float], float]:
    """(grid, density, σ): the quadrature averaged over probes, each node a Gaussian of width σ."""
    nodes = np.concatenate([np.asarray(n) for n in quadrature.nodes])
    weights = np.concatenate([np.asarray(w) for w in quadrature.weights]) / len(quadrature.nodes)
    if not np.all(np.isfinite(nodes)):
        return [], [], math.nan
    lo, hi = float(nodes.min()), float(nodes.max())
    sigma = broadening * ((hi - lo) if hi > lo else max(abs(hi), 1.0))
    grid = np.linspace(lo - _PAD * sigma, hi + _PAD * sigma, grid_points)
    z = (grid[:, None] - nodes[None, :]) / sigma
    values = (np.exp(-0.5 * z**2) @ weights) / (sigma * math.sqrt(2 * math.pi))
    return grid.tolist(), values.tolist(), sigma


class HessianSpectrum(Quantity):
    """Hutch++ trace and SLQ spectral density of the Hessian (the ``full`` preset)."""

    name: ClassVar[str] = "spectrum"

    def __init__(
        self,
        *,
        trace_matvecs: int = 60,
        num_probes: int = 4,
        lanczos_steps: int = 50,
        grid_points: int = 256,
        broadening: float = 0.01,
        seed: int = 0,
    ) -> None:
        self.trace_matvecs = check_int("trace_matvecs", trace_matvecs, low=3)
        self.num_probes = check_int("num_probes", num_probes, low=1)
        self.lanczos_steps = check_int("lanczos_steps", lanczos_steps, low=2)
        self.grid_points = check_int("grid_points", grid_points, low=3)
        self.broadening = check_float("broadening", broadening, low=0.0, high=1.0, closed="right")
        self.seed = check_int("seed", seed, low=0)

    def compute(self, ctx: CheckpointContext) -> Record:
        op = ctx.hessian()
        record: dict[str, Any] = {
            "trace": None,
            "trace_std": None,
            "trace_matvecs": self.trace_matvecs,
            "trace_slq": None,
            "density": None,
            "quadrature": None,
            "support": None,
            "broadening": None,
            "num_probes": self.num_probes,
            "lanczos_steps": self.lanczos_steps,
        }
        if not math.isfinite(op.loss):
            return record
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + ctx.step) % 2**63)
        dtype, device = ctx.theta.dtype, ctx.theta.device
        trace = hutch_plus_plus(
            op, op.size, matvecs=self.trace_matvecs, generator=generator, dtype=dtype, device=device
        )
        quad = lanczos_quadrature(
            op,
            op.size,
            num_probes=self.num_probes,
            steps=self.lanczos_steps,
            generator=generator,
            dtype=dtype,
            device=device,
        )
        grid, values, sigma = broadened_density(
            quad, grid_points=self.grid_points, broadening=self.broadening
        )
        # tr(H) = n·E[vᵀHv] for unit v: the quadrature's own trace, a cross-check of Hutch++.
        slq = op.size * float(
            np.mean([np.dot(n, w) for n, w in zip(quad.nodes, quad.weights, strict=True)])
        )
        record.update(
            trace=finite(trace.trace),
            trace_std=None if trace.std is None else finite(trace.std),
            trace_slq=finite(slq),
            density={"grid": grid, "values": values} if grid else None,
            quadrature={"nodes": quad.nodes, "weights": quad.weights} if grid else None,
            support=[min(min(n) for n in quad.nodes), max(max(n) for n in quad.nodes)]
            if grid
            else None,
            broadening=finite(sigma),
        )
        return record


__all__ = [
    "HessianSpectrum",
    "Quadrature",
    "TraceEstimate",
    "broadened_density",
    "hutch_plus_plus",
    "lanczos_quadrature",
]

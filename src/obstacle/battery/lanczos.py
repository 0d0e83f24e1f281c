"""Lanczos on a symmetric operator: both extreme eigenvalues from one Krylov run, in bounded memory.

The operator is any callable ``v ↦ Hv`` on 1-D tensors (a :class:`HessianOperator`, or a
preconditioned wrapper of one). The method is thick-restart Lanczos (Wu & Simon 2000) written as
a Krylov–Schur decomposition H·V = V·T + q·bᵀ (Stewart 2001): it holds at most ``max_vectors``
vectors of the operator's size, whatever the number of iterations, so its memory is a constant
the battery plans to — ``max_vectors × n × itemsize``. When the basis is full it keeps the Ritz
vectors of two thirds of its size, split between the two ends (one end with ``which="min"``/``"max"``),
and goes on from the same residual vector; until then it *is* plain Lanczos, so runs that
converge within the basis take exactly the steps of full-basis Lanczos.

Each new vector is orthogonalized against the whole kept basis, a second time only when the
first pass removed most of it (DGKS, "twice is enough": Parlett 1980; Giraud et al. 2005):
without it float32 Hessian-vector products lose orthogonality within a few dozen steps and grow
spurious copies of λmax. Vectors stay in the operator's dtype; dot products and norms are
float64 reductions (in blocks, never a float64 copy of the basis), and T and its eigenproblem
are float64.

Stopping rule. For a Ritz pair (θ, y = Vs) of T, ``‖Hy − θy‖ = |bᵀs|`` (exact arithmetic), and
some eigenvalue of H lies within that residual of θ. Lanczos stops when both extreme Ritz values
satisfy ``|bᵀs| ≤ tol·max(|θ|, floor·max(|θmin|, |θmax|))``: a relative test, with an absolute
floor scaled by the spectral radius so that λ ≈ 0 (an over-parameterized network's flat
directions) is resolved to ``tol·floor·max|λ|`` instead of never. 1e-3 is the honest default:
in float32 λmin bottoms out near 1e-4 relative.

Breakdown (β ≈ 0, or the basis spans the whole space). The Krylov space of the start vector is
then invariant. Every start here has a fresh random component, which has a non-zero component in
every eigenspace almost surely, so an invariant Krylov space holds a Ritz value for *every*
distinct eigenvalue of H and the extremes are exact: Lanczos stops there (``exact=True``).
Operators with n < ``max_vectors`` thus come out exact after at most n steps.

Warm start. Given the previous checkpoint's Ritz vectors, the start vector is an equal-weight mix
of their normalized sum and a fresh random vector. Measured caution: a start made mostly of the
previous Ritz vectors converged to a wrong, non-extreme eigenvalue while the residual test
passed (the residual certifies *an* eigenvalue, not the extreme one); an equal-weight random
component kept it right, at 172 → 135 HVPs per checkpoint on a 26k-parameter MLP.

:class:`LanczosProcess` is the plain recurrence with every vector kept, for stochastic Lanczos
quadrature (a fixed, small number of steps per probe).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal
from torch import Tensor

from obstacle._validation import check_choice, check_float, check_int
from obstacle.battery.allocator import release_pages
from obstacle.battery.reduce import BLOCK_BYTES, dot64, gram64, norm64
from obstacle.errors import ConvergenceWarning, ParameterError

Operator = Callable[[Tensor], Tensor]


class OutOperator(Protocol):
    """An operator that can write H·v into a given vector (``supports_out = True``), as
    :class:`~obstacle.battery.engine.HessianOperator` does: Lanczos then passes the basis row the
    next vector will occupy, and holds no vector beside its basis."""

    supports_out: bool

    def __call__(self, v: Tensor, out: Tensor | None = None) -> Tensor: ...


DEFAULT_TOL = 1e-3
DEFAULT_MAX_ITER = 300
# Eigenvalues smaller than this fraction of the spectral radius are resolved absolutely.
DEFAULT_FLOOR = 1e-2
# Vectors of the operator's size held at once (basis and next vector). bench/lanczos_restart.py:
# 24 takes 1.10–1.21× the HVPs of full-basis Lanczos on its models, 16 up to 2.3×.
DEFAULT_MAX_VECTORS = 24
MIN_VECTORS = 6
_WHICH = ("both", "min", "max")


@dataclass
class LanczosResult:
    """Both extreme Ritz pairs of one Lanczos run, with their residuals and the tridiagonal."""

    lambda_min: float
    lambda_max: float
    vector_min: Tensor
    vector_max: Tensor
    residual_min: float  # β_k·|e_kᵀs|, the residual bound of the λmin Ritz pair
    residual_max: float
    converged_min: bool
    converged_max: bool
    matvecs: int  # every operator call, verification included
    iterations: int  # Lanczos steps (the size of the tridiagonal)
    alphas: list[float] = field(default_factory=list)
    betas: list[float] = field(default_factory=list)  # β_1 … β_k (the last one couples to q_{k+1})
    exact: bool = False  # the Krylov space became invariant: the extremes are exact
    warm_started: bool = False
    true_residual_min: float | None = None  # ‖Hy − θy‖ by one extra matvec, when verified
    true_residual_max: float | None = None
    restarts: int = 0  # thick restarts (0: the basis never filled)
    max_vectors: int = 0  # the basis' bound, in vectors of the operator's size

    @property
    def converged(self) -> bool:
        return self.converged_min and self.converged_max

    @property
    def ritz_vectors(self) -> list[Tensor]:
        """The two extreme Ritz vectors: what the next checkpoint's warm start takes."""
        return [self.vector_min, self.vector_max]


_DGKS_ETA = 0.7071067811865476


class LanczosProcess:
    """The Lanczos three-term recurrence with full reorthogonalization, one step at a time.

    ``step()`` applies the operator once and appends α_j and β_j; ``basis`` holds q_1 … q_k as
    rows (grown by doubling, so memory follows the steps actually taken).
    """

    def __init__(self, matvec: Operator, start: Tensor) -> None:
        norm = torch.linalg.vector_norm(start)
        if not (torch.isfinite(norm) and norm > 0):
            raise ParameterError("The Lanczos start vector must be finite and non-zero.")
        self.matvec = matvec
        self.dim = int(start.numel())
        self._rows = torch.empty(
            min(32, self.dim), self.dim, dtype=start.dtype, device=start.device
        )
        self._rows[0] = start / norm
        self.alphas: list[float] = []
        self.betas: list[float] = []
        self.matvecs = 0

    @property
    def steps(self) -> int:
        return len(self.alphas)

    @property
    def basis(self) -> Tensor:
        """q_1 … q_k (the vectors that the tridiagonal T_k is expressed in)."""
        return self._rows[: self.steps]

    def step(self) -> float:
        """One Lanczos step; returns β (the norm of the new residual, before normalizing)."""
        j = self.steps
        q = self._rows[j]
        w = self.matvec(q).reshape(-1).to(q.dtype)
        self.matvecs += 1
        alpha = float(torch.dot(q, w))
        w = w - alpha * q
        if j > 0:
            w = w - self.betas[-1] * self._rows[j - 1]
        basis = self._rows[: j + 1]
        # Full reorthogonalization, one classical Gram–Schmidt pass and a second only when the
        # first removed most of w (the DGKS test, η = 1/√2): "twice is enough", and once is
        # usually enough — the second pass was ~half the battery's overhead on ~100k models.
        before = torch.linalg.vector_norm(w)
        w = w - basis.T @ (basis @ w)
        after = torch.linalg.vector_norm(w)
        if after < _DGKS_ETA * before:
            w = w - basis.T @ (basis @ w)
            after = torch.linalg.vector_norm(w)
        beta = float(after)
        self.alphas.append(alpha)
        self.betas.append(beta)
        if j + 1 < self.dim and math.isfinite(beta) and beta > 0:
            if j + 1 >= self._rows.shape[0]:
                grown = torch.empty(
                    min(2 * self._rows.shape[0], self.dim), self.dim, dtype=w.dtype, device=w.device
                )
                grown[: j + 1] = self._rows[: j + 1]
                self._rows = grown
            self._rows[j + 1] = w / beta
        return beta

    def ritz_vector(self, s: np.ndarray[Any, Any]) -> Tensor:
        """Q_k·s, normalized."""
        coeffs = torch.as_tensor(s, dtype=self._rows.dtype, device=self._rows.device)
        y = self.basis.T @ coeffs
        unit: Tensor = y / torch.linalg.vector_norm(y)
        return unit


def extreme_ritz(
    alphas: Sequence[float], betas: Sequence[float]
) -> tuple[float, np.ndarray[Any, Any], float, np.ndarray[Any, Any]]:
    """(θmin, s_min, θmax, s_max) of the tridiagonal with diagonal ``alphas`` and off-diagonal ``betas``."""
    d = np.asarray(alphas, dtype=np.float64)
    e = np.asarray(betas, dtype=np.float64)
    k = d.size
    if k == 1:
        one = np.ones(1)
        return float(d[0]), one, float(d[0]), one
    lo_val, lo_vec = eigh_tridiagonal(d, e, select="i", select_range=(0, 0))
    hi_val, hi_vec = eigh_tridiagonal(d, e, select="i", select_range=(k - 1, k - 1))
    return float(lo_val[0]), lo_vec[:, 0], float(hi_val[0]), hi_vec[:, 0]


def start_vector(
    dim: int,
    *,
    start_vectors: Sequence[Tensor] | None,
    generator: torch.Generator | None,
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[Tensor, bool]:
    """A fresh random unit vector, mixed in equal weight with the normalized previous Ritz vectors.

    Returns the start vector and whether previous vectors were used. Non-finite or zero previous
    vectors are ignored (a diverged checkpoint leaves nothing to start from).
    """
    gen_device = generator.device if generator is not None else torch.device("cpu")
    r = torch.randn(dim, generator=generator, dtype=torch.float64, device=gen_device)
    r = (r / torch.linalg.vector_norm(r)).to(device=device, dtype=dtype)
    warm = torch.zeros(dim, dtype=dtype, device=device)
    used = False
    for v in start_vectors or ():
        if v.dim() != 1 or v.numel() != dim:
            raise ParameterError(
                f"Each of 'start_vectors' must be a 1-D tensor of {dim} entries (the operator's size). "
                f"Got shape {tuple(v.shape)} instead; pass the previous result's ritz_vectors."
            )
        v = v.to(device=device, dtype=dtype)
        norm = torch.linalg.vector_norm(v)
        if torch.isfinite(norm) and norm > 0:
            warm = warm + v / norm
            used = True
    norm = torch.linalg.vector_norm(warm)
    if not used or not (torch.isfinite(norm) and norm > 0):
        return r, False
    return warm / norm + r, True


def lanczos(
    matvec: Operator,
    dim: int,
    *,
    max_iter: int = DEFAULT_MAX_ITER,
    tol: float = DEFAULT_TOL,
    which: str = "both",
    floor: float = DEFAULT_FLOOR,
    max_vectors: int = DEFAULT_MAX_VECTORS,
    start_vectors: Sequence[Tensor] | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
    verify: bool = False,
) -> LanczosResult:
    """λmin and λmax of the symmetric operator ``matvec`` on vectors of ``dim`` entries.

    Stops when the ends named by ``which`` ("both", "min" or "max") have residual bounds under
    ``tol·max(|θ|, floor·max|θ|)``, at breakdown (exact), or after ``max_iter`` operator calls
    (then a :class:`ConvergenceWarning`, and the estimates come back with ``converged_*=False``).
    At most ``max_vectors`` vectors of ``dim`` entries are held (thick restart when the basis is
    full), whatever ``max_iter`` is. ``start_vectors`` (the previous ``ritz_vectors``)
    warm-start it; ``generator`` seeds the random part of the start. ``verify`` spends one extra
    matvec per end to measure ‖Hy − θy‖.
    """
    dim = check_int("dim", dim, low=1)
    max_iter = check_int("max_iter", max_iter, low=2)
    tol = check_float("tol", tol, low=0.0, high=1.0, closed="neither")
    floor = check_float("floor", floor, low=0.0, high=1.0)
    which = check_choice("which", which, _WHICH)
    max_vectors = check_int("max_vectors", max_vectors, low=MIN_VECTORS)
    dev = torch.device(device)
    if not dtype.is_floating_point:
        raise ParameterError(
            f"The 'dtype' parameter must be a floating dtype. Got {dtype} instead."
        )

    start, warm = start_vector(
        dim, start_vectors=start_vectors, generator=generator, dtype=dtype, device=dev
    )
    krylov = _KrylovSchur(matvec, start, max_vectors=max_vectors, which=which)
    del start  # copied into the basis: holding it would add a vector for the whole run
    eps = float(torch.finfo(dtype).eps)
    lo = hi = math.nan
    s_lo = s_hi = np.ones(1)
    res_lo = res_hi = math.inf
    conv_lo = conv_hi = exact = False
    while krylov.matvecs < max_iter:
        if krylov.full:
            krylov.restart()
        beta = krylov.expand()
        if not (math.isfinite(beta) and math.isfinite(krylov.alphas[-1])):
            return _non_finite(krylov, dim, dtype, dev, warm)
        lo, s_lo, res_lo, hi, s_hi, res_hi = krylov.extremes()
        radius = max(abs(lo), abs(hi))
        conv_lo = res_lo <= tol * max(abs(lo), floor * radius)
        conv_hi = res_hi <= tol * max(abs(hi), floor * radius)
        # Breakdown: what is left of the residual is rounding noise of the operator's size.
        exact = krylov.size == dim or beta <= 8 * eps * radius * math.sqrt(krylov.size)
        if exact:
            conv_lo = conv_hi = True
            break
        if (conv_lo or which == "max") and (conv_hi or which == "min"):
            break

    y_lo, y_hi = krylov.final_ritz_vectors(s_lo, s_hi)
    result = LanczosResult(
        lambda_min=lo,
        lambda_max=hi,
        vector_min=y_lo,
        vector_max=y_hi,
        residual_min=res_lo,
        residual_max=res_hi,
        converged_min=conv_lo,
        converged_max=conv_hi,
        matvecs=krylov.matvecs,
        iterations=krylov.matvecs,
        alphas=list(krylov.alphas),
        betas=list(krylov.betas),
        exact=exact,
        warm_started=warm,
        restarts=krylov.restarts,
        max_vectors=max_vectors,
    )
    del krylov  # its basis: the largest thing Lanczos holds
    if verify:
        result.true_residual_min = _true_residual(matvec, y_lo, lo)
        result.true_residual_max = _true_residual(matvec, y_hi, hi)
        result.matvecs += 2
    missing = []
    if not conv_lo and which != "max":
        missing.append("λmin")
    if not conv_hi and which != "min":
        missing.append("λmax")
    if missing:
        warnings.warn(
            ConvergenceWarning(
                f"Lanczos reached max_iter={max_iter} before {' and '.join(missing)} converged to "
                f"tol={tol:g} (residual bounds: λmin {res_lo:.3g} for θ={lo:.6g}, λmax {res_hi:.3g} "
                f"for θ={hi:.6g}). The estimates are returned with converged=False; raise max_iter "
                "or tol."
            ),
            stacklevel=2,
        )
    return result


class _KrylovSchur:
    """A Krylov–Schur decomposition H·V = V·T + q·bᵀ held in at most ``max_vectors`` vectors.

    V (``size`` orthonormal rows) and q (the next unit vector) live in one preallocated block
    of rows in the operator's dtype; T (symmetric, ``size``²) and b live in float64. ``expand``
    adds q to V with one operator call; when V is full, ``restart`` keeps the Ritz vectors of
    both ends (thick restart, Wu & Simon 2000; Stewart's Krylov–Schur 2001): V ← V·S, T ← Θ,
    b ← Sᵀb, and q stays.
    """

    def __init__(self, matvec: Operator, start: Tensor, *, max_vectors: int, which: str) -> None:
        norm = norm64(start)
        if not (math.isfinite(norm) and norm > 0):
            raise ParameterError("The Lanczos start vector must be finite and non-zero.")
        self.matvec = matvec
        self.dim = int(start.numel())
        self.which = which
        # V holds at most max_vectors − 1 rows, q the last one; never more rows than dim + 1.
        self.capacity = min(max_vectors, self.dim + 1)
        # All rows at once: growing by copying would hold the old and the new block together
        # (16 + 24 vectors at the switch, measured). On the CPU untouched rows are not resident,
        # so memory still follows the steps taken; on a GPU the plan counts them anyway.
        self._rows = torch.empty(self.capacity, self.dim, dtype=start.dtype, device=start.device)
        self._rows[0] = start / norm
        self.size = 0  # rows of V; q is row ``size``
        self.t = np.zeros((0, 0))
        self.b = np.zeros(0)
        self.alphas: list[float] = []
        self.betas: list[float] = []
        self.matvecs = 0
        self.restarts = 0
        self._eig: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]] | None = None

    @property
    def full(self) -> bool:
        return self.size + 1 >= self.capacity

    def expand(self) -> float:
        """One operator call on q: T grows by a row and column; returns β = ‖residual‖."""
        j = self.size
        q = self._rows[j]
        if getattr(self.matvec, "supports_out", False):
            # H·q straight into the row the next vector will occupy (expand runs only while one
            # is free): no vector-sized buffer beside the basis.
            w = self._rows[j + 1]
            cast(OutOperator, self.matvec)(q, out=w)
        else:
            w = self.matvec(q).reshape(-1).to(q.dtype)
            if w.untyped_storage().data_ptr() == self._rows.untyped_storage().data_ptr():
                w = w.clone()  # an operator that hands back its input: w is updated in place below
        self.matvecs += 1
        alpha = dot64(q, w)
        # Vᵀ·H·q = b in exact arithmetic: subtract it, then reorthogonalize against V and q (one
        # classical Gram–Schmidt pass, a second only when the first removed most of w: the DGKS
        # test with η = 1/√2, "twice is enough"). In place: no vector-sized temporaries.
        w.sub_(q, alpha=alpha)
        if j > 0:
            b = torch.as_tensor(self.b, dtype=w.dtype, device=w.device)
            w.addmv_(self._rows[:j].T, b, alpha=-1)
        basis = self._rows[: j + 1]
        before = norm64(w)
        w.addmv_(basis.T, gram64(basis, w).to(w.dtype), alpha=-1)
        after = norm64(w)
        if after < _DGKS_ETA * before:
            w.addmv_(basis.T, gram64(basis, w).to(w.dtype), alpha=-1)
            after = norm64(w)
        beta = after
        t = np.zeros((j + 1, j + 1))
        t[:j, :j] = self.t
        t[:j, j] = t[j, :j] = self.b
        t[j, j] = alpha
        self.t = t
        self.b = np.zeros(j + 1)
        self.b[j] = beta
        self.size = j + 1
        self._eig = None
        self.alphas.append(alpha)
        self.betas.append(beta)
        if self.size < self.dim and math.isfinite(beta) and beta > 0:
            torch.div(w, beta, out=self._rows[self.size])  # in place when w is that row
        return beta

    def _eigh(self) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        if self._eig is None:
            values, vectors = np.linalg.eigh(self.t)
            self._eig = (values, vectors)
        return self._eig

    def extremes(
        self,
    ) -> tuple[float, np.ndarray[Any, Any], float, float, np.ndarray[Any, Any], float]:
        """(θmin, s_min, residual_min, θmax, s_max, residual_max): residual = |bᵀs|."""
        values, vectors = self._eigh()
        s_lo, s_hi = vectors[:, 0], vectors[:, -1]
        return (
            float(values[0]),
            s_lo,
            abs(float(self.b @ s_lo)),
            float(values[-1]),
            s_hi,
            abs(float(self.b @ s_hi)),
        )

    def restart(self) -> None:
        """Keep the Ritz pairs nearest the wanted ends: V ← V·S_kept, T ← Θ_kept, b ← S_keptᵀb."""
        values, vectors = self._eigh()
        m = self.size
        keep = max(2, (2 * m) // 3)  # two thirds: measured a little better than half at 24
        if self.which == "min":
            chosen = list(range(keep))
        elif self.which == "max":
            chosen = list(range(m - keep, m))
        else:
            low = (keep + 1) // 2
            chosen = list(range(low)) + list(range(m - (keep - low), m))
        s = vectors[:, chosen]
        _combine_rows(self._rows, s, m)
        self._rows[len(chosen)] = self._rows[m]  # q
        self.t = np.diag(values[chosen])
        self.b = s.T @ self.b
        self.size = len(chosen)
        self._eig = None
        self.restarts += 1

    def final_ritz_vectors(
        self, s_lo: np.ndarray[Any, Any], s_hi: np.ndarray[Any, Any]
    ) -> tuple[Tensor, Tensor]:
        """V·s_lo and V·s_hi, normalized, made in the basis' first two rows: ends the process.

        Made beside the basis they were its two largest allocations at the end of a run, the
        analysis' peak (bench/memory_phases.py, 25M-parameter GPT: 1.6 vectors above any
        product). In place, the rest of the block's pages are given back to the OS
        (:func:`obstacle.battery.allocator.release_pages`), so the two views hold two vectors.
        """
        _combine_rows(self._rows, np.stack([s_lo, s_hi], axis=1), self.size)
        self.size = 0
        release_pages(self._rows[2:])
        y_lo, y_hi = self._rows[0], self._rows[1]
        return y_lo.div_(norm64(y_lo)), y_hi.div_(norm64(y_hi))


def _combine_rows(rows: Tensor, s: np.ndarray[Any, Any], m: int) -> None:
    """rows[:k] ← Sᵀ·rows[:m] in place, column block by column block (k ≤ m), in float64."""
    st = torch.as_tensor(s.T, dtype=torch.float64, device=rows.device)
    k = st.shape[0]
    n = rows.shape[1]
    step = min(n, max(1024, BLOCK_BYTES // (8 * (m + k))))
    # Float64 blocks allocated once and reused (see obstacle.battery.reduce.gram64: a fresh
    # block per step paid its page faults every time).
    source = torch.empty(m, step, dtype=torch.float64, device=rows.device)
    target = torch.empty(k, step, dtype=torch.float64, device=rows.device)
    for i in range(0, n, step):
        width = min(step, n - i)
        block = source[:, :width]
        block.copy_(rows[:m, i : i + width])
        combined = target[:, :width]
        torch.mm(st, block, out=combined)
        rows[:k, i : i + width].copy_(combined)


def _non_finite(
    process: _KrylovSchur, dim: int, dtype: torch.dtype, device: torch.device, warm: bool
) -> LanczosResult:
    warnings.warn(
        ConvergenceWarning(
            f"Lanczos stopped at step {process.matvecs}: the operator returned non-finite values "
            "(a diverged checkpoint?). λmin and λmax are NaN and converged=False."
        ),
        stacklevel=3,
    )
    nan = torch.full((dim,), math.nan, dtype=dtype, device=device)
    return LanczosResult(
        lambda_min=math.nan,
        lambda_max=math.nan,
        vector_min=nan,
        vector_max=nan.clone(),
        residual_min=math.nan,
        residual_max=math.nan,
        converged_min=False,
        converged_max=False,
        matvecs=process.matvecs,
        iterations=process.matvecs,
        alphas=list(process.alphas),
        betas=list(process.betas),
        warm_started=warm,
        restarts=process.restarts,
        max_vectors=process.capacity,
    )


def _true_residual(matvec: Operator, y: Tensor, theta: float) -> float:
    return float(torch.linalg.vector_norm(matvec(y).reshape(-1).to(y.dtype) - theta * y))


__all__ = [
    "DEFAULT_FLOOR",
    "DEFAULT_MAX_ITER",
    "DEFAULT_MAX_VECTORS",
    "DEFAULT_TOL",
    "MIN_VECTORS",
    "LanczosProcess",
    "LanczosResult",
    "Operator",
    "OutOperator",
    "extreme_ritz",
    "lanczos",
    "start_vector",
]

"""Linear interpolation and the 2-D subspace against closed forms.

On the quadratic probe J(θ) = mean_c ½(θ − c)ᵀA(θ − c), J along a line is an exact parabola
J(α) = J(θa) + α·gaᵀd + ½α²·dᵀAd (d = θb − θa, ga = A(θa − c̄)): values are checked to 1e-12
(float64), the barrier against its closed form −½dᵀAd/4 at α = ½. The double well
J(θ) = (θ² − 1)² has a barrier of exactly 1 at θ = 0 between its minima ±1.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from obstacle.battery.engine import LossEngine
from obstacle.battery.landscape import (
    _summary,
    interpolation_from_checkpoints,
    linear_interpolation,
    subspace,
)
from obstacle.battery.probe import Probe
from obstacle.errors import ParameterError
from support import QuadraticLoss, Shift, calls, tiny_mlp

TOL = 1e-12


def _centres(seed: int, count: int, batch: int, dim: int) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, dim, generator=g, dtype=torch.float64) for _ in range(count)]


class Quadratic:
    """A quadratic probe with a validation batch, and its closed form."""

    def __init__(self, a: Tensor) -> None:
        self.a = a.double()
        dim = a.shape[0]
        self.train = _centres(0, 3, 4, dim)
        self.val = _centres(1, 1, 4, dim)[0]
        zeros = torch.zeros(4, dtype=torch.float64)
        probe = Probe.capture(
            Shift(dim).double(),
            QuadraticLoss(self.a),
            [(c, zeros) for c in self.train],
            validation=(self.val, zeros),
        )
        self.engine = LossEngine.create(probe, dtype="float64")

    def loss(self, theta: Tensor, centres: Tensor | None = None) -> float:
        c = torch.cat(self.train) if centres is None else centres
        diff = theta.unsqueeze(0) - c
        return float(0.5 * ((diff @ self.a) * diff).sum(dim=1).mean())

    def parabola(self, theta_a: Tensor, theta_b: Tensor) -> tuple[float, float, float]:
        """(a0, a1, a2) of J(α) = a0 + a1·α + a2·α²."""
        d = theta_b - theta_a
        g = self.a @ (theta_a - torch.cat(self.train).mean(0))
        return self.loss(theta_a), float(g @ d), 0.5 * float(d @ self.a @ d)


@pytest.fixture(scope="module")
def saddle() -> Quadratic:
    return Quadratic(torch.diag(torch.tensor([1.0, -1.0, 2.0])))


@pytest.fixture(scope="module")
def bowl() -> Quadratic:
    return Quadratic(torch.diag(torch.tensor([1.0, 3.0, 2.0])))


def _centre(q: Quadratic) -> Tensor:
    return torch.cat(q.train).mean(0)


# -- linear_interpolation ------------------------------------------------------------------------


def test_interpolation_is_the_closed_form_parabola_with_a_barrier(saddle: Quadratic) -> None:
    c = _centre(saddle)
    theta_a = c + torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64)
    theta_b = c + torch.tensor([0.0, 1.0, 0.25], dtype=torch.float64)
    before = saddle.engine.cost.copy()
    out = linear_interpolation(saddle.engine, theta_a, theta_b)
    alphas = out["alphas"]
    assert len(alphas) == 41
    assert alphas[0] == -0.5 and alphas[-1] == 1.5
    assert 0.0 in alphas and 1.0 in alphas  # exactly
    a0, a1, a2 = saddle.parabola(theta_a, theta_b)
    for alpha, j in zip(alphas, out["train"], strict=True):
        assert j == pytest.approx(a0 + a1 * alpha + a2 * alpha**2, abs=TOL)
    for alpha, v in zip(alphas, out["validation"], strict=True):
        assert v == pytest.approx(
            saddle.loss((1 - alpha) * theta_a + alpha * theta_b, saddle.val), abs=TOL
        )
    # J − chord = a2·α(α − 1): with a2 < 0 the barrier is −a2/4 at α = ½
    assert a2 < 0 and a1 > 0
    assert out["barrier"] == pytest.approx(-a2 / 4, abs=TOL)
    assert out["barrier_alpha"] == 0.5
    assert out["monotone"] is False
    inside = [(al, a0 + a1 * al + a2 * al**2) for al in alphas if 0 <= al <= 1]
    rise = max(jb - ja for i, (_, ja) in enumerate(inside) for _, jb in inside[i:])
    assert out["rise"] == pytest.approx(rise, abs=TOL)
    assert out["distance"] == pytest.approx(
        float(torch.linalg.vector_norm(theta_b - theta_a)), abs=TOL
    )
    assert out["non_finite"] == 0
    assert calls(out["cost"]) == {"loss_evals": 82, "grad_evals": 0, "hvp_evals": 0}
    assert (saddle.engine.cost - before).loss == 82


def test_interpolation_to_the_minimum_of_a_bowl_is_monotone(bowl: Quadratic) -> None:
    c = _centre(bowl)
    theta_a = c + torch.tensor([2.0, -1.0, 1.0], dtype=torch.float64)
    out = linear_interpolation(bowl.engine, theta_a, c, points=21)
    _, a1, a2 = bowl.parabola(theta_a, c)
    assert a2 > 0 and a1 + 2 * a2 == pytest.approx(0.0, abs=TOL)  # J'(α) ≤ 0 on [0, 1]
    assert out["monotone"] is True
    assert out["barrier"] == 0.0
    assert out["barrier_alpha"] is None
    assert out["rise"] == 0.0
    assert len(out["alphas"]) == 21


def test_custom_alphas_always_include_the_endpoints(bowl: Quadratic) -> None:
    c = _centre(bowl)
    out = linear_interpolation(bowl.engine, c + 1.0, c, alphas=[0.5, 2.0, 0.25, 1.0 + 1e-12])
    assert out["alphas"] == [0.0, 0.25, 0.5, 1.0, 2.0]
    assert out["train"][3] == pytest.approx(bowl.loss(c), abs=TOL)


class DoubleWell(nn.Module):
    """J(θ) = mean (θ − c)² − 1)² with c = 0: minima at ±1, a barrier of 1 at 0."""

    def forward(self, diff: Tensor, _target: Tensor) -> Tensor:
        return ((diff**2 - 1.0) ** 2).mean()


@pytest.fixture(scope="module")
def double_well() -> LossEngine:
    zeros = torch.zeros(2, 1, dtype=torch.float64)
    probe = Probe.capture(Shift(1).double(), DoubleWell(), [(zeros, zeros[:, 0])])
    return LossEngine.create(probe, dtype="float64")


def test_double_well_barrier(double_well: LossEngine) -> None:
    one = torch.ones(1, dtype=torch.float64)
    out = linear_interpolation(double_well, -one, one)
    for alpha, j in zip(out["alphas"], out["train"], strict=True):
        assert j == pytest.approx(16 * alpha**2 * (alpha - 1) ** 2, abs=TOL)  # ((2α−1)² − 1)²
    assert out["barrier"] == pytest.approx(1.0, abs=TOL)
    assert out["barrier_alpha"] == 0.5
    assert out["rise"] == pytest.approx(1.0, abs=TOL)
    assert out["monotone"] is False
    assert out["validation"] is None
    # inside one well the path is monotone
    inside = linear_interpolation(double_well, 2 * one, one)
    assert inside["monotone"] is True and inside["barrier"] == 0.0


def test_float_noise_is_not_a_barrier() -> None:
    alphas = [0.0, 0.25, 0.5, 0.75, 1.0]
    flat_noise = _summary(alphas, [1.0, 0.5, 0.5 + 1e-4, 0.25, 0.0])  # rise 1e-4 < 1e-3 × range 1
    assert flat_noise["monotone"] is True
    assert flat_noise["tolerance"] == pytest.approx(1e-3, rel=1e-9)
    bump = _summary(alphas, [1.0, 0.5, 0.502, 0.25, 0.0])
    assert bump["monotone"] is False
    assert bump["rise"] == pytest.approx(0.002, abs=TOL)
    constant = _summary(alphas, [3.0] * 5)
    assert constant["monotone"] is True and constant["barrier"] == 0.0


def test_non_finite_endpoint_degrades(double_well: LossEngine) -> None:
    one = torch.ones(1, dtype=torch.float64)
    out = linear_interpolation(double_well, one, torch.full((1,), math.nan, dtype=torch.float64))
    assert out["monotone"] is None and out["barrier"] is None and out["rise"] is None
    assert out["non_finite"] == 40  # every point but α = 0
    assert math.isnan(out["train"][-1])


def test_interpolation_refuses_a_wrong_vector(bowl: Quadratic) -> None:
    with pytest.raises(
        ParameterError, match="'theta_b' parameter must be a flat parameter vector of 3"
    ):
        linear_interpolation(bowl.engine, torch.zeros(3), torch.zeros(4))
    with pytest.raises(ParameterError, match="'points' parameter"):
        linear_interpolation(bowl.engine, torch.zeros(3), torch.zeros(3), points=1)


# -- interpolation_from_checkpoints --------------------------------------------------------------


def test_interpolation_from_each_checkpoint(saddle: Quadratic) -> None:
    c = _centre(saddle)
    final = c + torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    thetas = [
        c + torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64),  # across the saddle: a barrier
        c + torch.tensor([0.5, 1.0, 0.0], dtype=torch.float64),  # along +x only: monotone
        torch.full((3,), math.nan, dtype=torch.float64),  # a diverged checkpoint
        final.clone(),
    ]
    out = interpolation_from_checkpoints(saddle.engine, thetas, [0, 5, 7, 9], final, points=11)
    assert out["alphas"] == [i / 10 for i in range(11)]
    assert out["skipped_steps"] == [9]
    first, second, diverged = out["checkpoints"]
    for entry, theta in ((first, thetas[0]), (second, thetas[1])):
        a0, a1, a2 = saddle.parabola(theta, final)
        for alpha, j in zip(out["alphas"], entry["train"], strict=True):
            assert j == pytest.approx(a0 + a1 * alpha + a2 * alpha**2, abs=TOL)
    assert first["step"] == 0 and first["monotone"] is False
    assert first["barrier"] == pytest.approx(-saddle.parabola(thetas[0], final)[2] / 4, abs=TOL)
    assert second["monotone"] is True and second["barrier"] == 0.0
    assert diverged["step"] == 7 and diverged["monotone"] is None
    assert out["monotone_fraction"] == 0.5
    assert out["max_barrier"] == first["barrier"]
    # J(θT) once, then α ∈ [0, 0.9] for each of three lines
    assert out["cost"]["loss_evals"] == 1 + 3 * 10


def test_interpolation_from_a_single_checkpoint(bowl: Quadratic) -> None:
    final = _centre(bowl)
    out = interpolation_from_checkpoints(bowl.engine, [final], [3], final)
    assert out["checkpoints"] == [] and out["skipped_steps"] == [3]
    assert out["monotone_fraction"] is None and out["max_barrier"] is None


# -- subspace ----------------------------------------------------------------------------------


def test_subspace_reproduces_a_planar_path(saddle: Quadratic) -> None:
    c = _centre(saddle)
    p = torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64)
    q = torch.tensor([0.5, -1.0, 1.5], dtype=torch.float64)
    coeffs = [(0.0, 0.0), (0.3, 0.4), (0.6, 0.7), (0.8, 0.2), (1.0, 0.0)]
    thetas = [c + a * p + b * q for a, b in coeffs]
    steps = [0, 10, 20, 30, 40]
    order = [3, 0, 4, 1, 2]  # given out of order: sorted by step
    out = subspace(
        saddle.engine, [thetas[i] for i in order], [steps[i] for i in order], grid=5, margin=0.25
    )
    u = p / p.norm()
    q_perp = q - (q @ u) * u
    w = q_perp / q_perp.norm()  # the checkpoint with the largest deviation has b > 0
    assert out["w_source"] == "path"
    assert out["origin_step"] == 0 and out["end_step"] == 40
    assert out["u_norm"] == pytest.approx(float(p.norm()), abs=TOL)
    assert out["w_norm"] == pytest.approx(0.7 * float(q_perp.norm()), abs=TOL)
    assert out["residual"] == pytest.approx(0.0, abs=1e-24)
    assert out["path"]["steps"] == steps
    for (a, b), theta, x, y in zip(coeffs, thetas, out["path"]["x"], out["path"]["y"], strict=True):
        assert x == pytest.approx(a * float(p.norm()) + b * float(q @ u), abs=TOL)
        assert y == pytest.approx(b * float(q_perp.norm()), abs=TOL)
        assert torch.allclose(c + x * u + y * w, theta, atol=TOL, rtol=0)
    # the lattice covers the path plus 0.25 × the larger range on each side
    xs, ys = out["path"]["x"], out["path"]["y"]
    pad = 0.25 * max(max(xs) - min(xs), max(ys) - min(ys))
    assert out["x"][0] == pytest.approx(min(xs) - pad, abs=TOL)
    assert out["x"][-1] == pytest.approx(max(xs) + pad, abs=TOL)
    assert out["y"][0] == pytest.approx(min(ys) - pad, abs=TOL)
    assert out["y"][-1] == pytest.approx(max(ys) + pad, abs=TOL)
    assert len(out["loss"]) == 5 and all(len(row) == 5 for row in out["loss"])
    for i, j in ((0, 0), (2, 3), (4, 1), (4, 4)):
        direct = saddle.loss(c + out["x"][i] * u + out["y"][j] * w)
        assert out["loss"][j][i] == pytest.approx(direct, abs=TOL)
    assert calls(out["cost"]) == {"loss_evals": 25, "grad_evals": 0, "hvp_evals": 0}


def test_subspace_of_a_straight_path_uses_a_seeded_random_direction(bowl: Quadratic) -> None:
    c = _centre(bowl)
    p = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    thetas = [c + t * p for t in (0.0, 0.25, 0.5, 1.0)]
    out = subspace(bowl.engine, thetas, [0, 1, 2, 3], grid=3, seed=7)
    assert out["w_source"] == "random"
    assert "seed 7" in out["note"]
    assert out["w_norm"] == pytest.approx(0.0, abs=TOL)
    assert out["residual"] == pytest.approx(0.0, abs=1e-24)
    assert out["path"]["y"] == pytest.approx([0.0] * 4, abs=TOL)
    assert out["path"]["x"] == pytest.approx(
        [t * float(p.norm()) for t in (0.0, 0.25, 0.5, 1.0)], abs=TOL
    )
    pad = 0.2 * float(p.norm())
    assert out["y"] == pytest.approx([-pad, 0.0, pad], abs=TOL)
    again = subspace(bowl.engine, thetas, [0, 1, 2, 3], grid=3, seed=7)
    assert again["loss"] == out["loss"]


def test_subspace_degrades_on_one_checkpoint_and_non_finite_ones(bowl: Quadratic) -> None:
    c = _centre(bowl)
    single = subspace(bowl.engine, [c], [5])
    assert single["x"] == [] and single["loss"] == []
    assert single["w_source"] is None and single["residual"] is None and single["u_norm"] is None
    assert single["origin_step"] == 5
    assert "fewer than two" in single["note"]
    assert single["cost"]["loss_evals"] == 0
    assert math.isnan(single["path"]["x"][0])

    nan = torch.full((3,), math.nan, dtype=torch.float64)
    p = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    q = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    thetas = [c, c + 0.5 * p + 0.5 * q, nan, c + p, nan]
    out = subspace(bowl.engine, thetas, [0, 1, 2, 3, 4], grid=3)
    assert out["end_step"] == 3  # the last finite checkpoint
    assert out["w_source"] == "path"
    assert out["path"]["x"][:2] == pytest.approx([0.0, 0.5], abs=TOL)
    assert math.isnan(out["path"]["x"][2]) and math.isnan(out["path"]["y"][4])
    assert out["residual"] == pytest.approx(0.0, abs=1e-24)
    assert all(math.isfinite(v) for row in out["loss"] for v in row)

    same = subspace(bowl.engine, [c, c.clone()], [0, 1])
    assert same["u_norm"] == 0.0 and same["loss"] == [] and "equal" in same["note"]

    with pytest.raises(ParameterError, match="same length"):
        subspace(bowl.engine, [c], [0, 1])


def test_landscape_on_a_tiny_mlp_with_validation() -> None:
    model = tiny_mlp(0)
    g = torch.Generator().manual_seed(3)
    batches = [
        (
            torch.randn(6, 5, generator=g, dtype=torch.float64),
            torch.randint(0, 3, (6,), generator=g),
        )
    ]
    val = (
        torch.randn(6, 5, generator=g, dtype=torch.float64),
        torch.randint(0, 3, (6,), generator=g),
    )
    engine = LossEngine.create(Probe.capture(model, nn.CrossEntropyLoss(), batches, validation=val))
    theta0 = engine.flatten(model.state_dict())
    gen = torch.Generator().manual_seed(4)
    thetas = [
        theta0 + 0.3 * k * torch.randn(theta0.numel(), generator=gen, dtype=torch.float64)
        for k in range(3)
    ]
    line = linear_interpolation(engine, thetas[0], thetas[-1], points=5)
    assert line["validation"] is not None and len(line["validation"]) == 5
    assert line["train"][1] == pytest.approx(engine.loss(thetas[0]), abs=TOL)  # α = 0
    plane = subspace(engine, thetas, [0, 1, 2], grid=3)
    assert plane["w_source"] == "path"
    assert plane["residual"] == pytest.approx(0.0, abs=1e-20)  # three points always span a plane
    assert plane["path"]["x"][0] == 0.0 and plane["path"]["y"][0] == 0.0

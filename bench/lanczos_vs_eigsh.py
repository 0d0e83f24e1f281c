"""The battery's Lanczos against scipy's eigsh and hessian-eigenthings, counting every HVP.

    python bench/lanczos_vs_eigsh.py            # all four models (a few minutes on one core)
    python bench/lanczos_vs_eigsh.py --quick    # the two small ones

On the same models (0.1k to ~86k parameters: a tiny MLP, a CNN, a ~26k MLP and a ~86k MLP, each
after 100 SGD steps on teacher-labelled data, float32 HVPs through the battery's loss engine), each
method is run at its defaults and we count its HVPs and seconds and measure its λmin and λmax
against a float64 ARPACK reference (eigsh with tol=1e-10 on the float64 HVP):

- battery:      ``obstacle.battery.lanczos.lanczos`` (both ends from one run, tol=1e-3).
- eigsh SA/LA:  ``scipy.sparse.linalg.eigsh(k=1, which="SA")`` and ``which="LA"``, defaults
                (tol=0, i.e. machine precision), one run per end.
- eigenthings:  hessian-eigenthings (PyPI) 1.0.0a5 on the same HVP (wrapped in its
                ``LambdaOperator``): ``lanczos(which="SA")`` and ``lanczos(which="LA")`` at their
                defaults (k=10, 20 steps, no restart), and ``deflated_power_iteration`` for λmax
                at its defaults except k=1 (it finds the largest-magnitude eigenvalue).

If hessian-eigenthings cannot be imported the script says so and skips it.
Ratios are HVPs and seconds of each method over the battery's, measured in the same run. The
"in HVPs" column is HVPs × the measured unit cost of one HVP: the rest of "seconds" is the
method's own work (ARPACK's per-iteration cost in this scipy grows with n and dominates eigsh's
time at 86k parameters; the battery's reorthogonalization and tridiagonal solves are small).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy
import scipy.sparse.linalg as sla
import torch
from _machine import describe_machine
from torch import Tensor, nn

from obstacle.battery.engine import HessianOperator, LossEngine
from obstacle.battery.lanczos import lanczos
from obstacle.battery.probe import Probe

try:
    import hessian_eigenthings as eigenthings

    EIGENTHINGS: str | None = eigenthings.__version__
except Exception as exc:  # ImportError, or a break against this torch
    eigenthings = None
    EIGENTHINGS = None
    EIGENTHINGS_ERROR = f"{type(exc).__name__}: {exc}"

TOL = 1e-3


def machine() -> str:
    he = EIGENTHINGS or f"unavailable ({EIGENTHINGS_ERROR})"
    return describe_machine(
        f"numpy {np.__version__}", f"scipy {scipy.__version__}", f"hessian-eigenthings {he}"
    )


def _teacher_data(
    inputs: tuple[int, ...], classes: int, seed: int = 0
) -> list[tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(int(np.prod(inputs)), classes, generator=g)
    batches = []
    for _ in range(4):
        x = torch.randn(64, *inputs, generator=g)
        batches.append((x, (x.reshape(64, -1) @ teacher).argmax(dim=1)))
    return batches


def models() -> dict[str, tuple[nn.Module, list[tuple[Tensor, Tensor]]]]:
    torch.manual_seed(0)
    cnn = nn.Sequential(
        nn.Conv2d(1, 8, 3),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(256, 10),
    )
    return {
        "tiny MLP": (
            nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)),
            _teacher_data((5,), 3),
        ),
        "CNN": (cnn, _teacher_data((1, 12, 12), 10)),
        "MLP 26k": (
            nn.Sequential(
                nn.Linear(64, 128), nn.Tanh(), nn.Linear(128, 128), nn.Tanh(), nn.Linear(128, 10)
            ),
            _teacher_data((64,), 10),
        ),
        "MLP 86k": (
            nn.Sequential(
                nn.Linear(128, 256), nn.Tanh(), nn.Linear(256, 200), nn.Tanh(), nn.Linear(200, 10)
            ),
            _teacher_data((128,), 10),
        ),
    }


def train(
    model: nn.Module, batches: list[tuple[Tensor, Tensor]], steps: int = 100, lr: float = 0.1
) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for step in range(steps):
        x, y = batches[step % len(batches)]
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


@dataclass
class Row:
    method: str
    hvps: int
    seconds: float
    lam_min: float | None
    lam_max: float | None


class Counted:
    """The HVP with a counter, as a torch callable and as a numpy matvec for scipy."""

    def __init__(self, op: HessianOperator) -> None:
        self.op = op
        self.calls = 0

    def __call__(self, v: Tensor) -> Tensor:
        self.calls += 1
        return self.op(v)

    def numpy(self, x: np.ndarray) -> np.ndarray:
        v = torch.from_numpy(np.ascontiguousarray(x).reshape(-1).astype(np.float32))
        return self(v).numpy().astype(x.dtype, copy=False)

    def linear_operator(self, dtype: type = np.float32) -> sla.LinearOperator:
        return sla.LinearOperator((self.op.size, self.op.size), matvec=self.numpy, dtype=dtype)


def timed(
    counted: Counted, fn: Callable[[], tuple[float | None, float | None]], method: str
) -> Row:
    counted.calls = 0
    start = time.perf_counter()
    lo, hi = fn()
    return Row(method, counted.calls, time.perf_counter() - start, lo, hi)


def reference(op64: HessianOperator) -> tuple[float, float]:
    def matvec(x: np.ndarray) -> np.ndarray:
        return op64(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64).reshape(-1))).numpy()

    linear = sla.LinearOperator((op64.size, op64.size), matvec=matvec, dtype=np.float64)
    v0 = np.random.default_rng(1).standard_normal(op64.size)
    if op64.size <= 400:
        h = np.stack([matvec(e) for e in np.eye(op64.size)])
        w = np.linalg.eigvalsh((h + h.T) / 2)
        return float(w[0]), float(w[-1])
    lo = sla.eigsh(linear, k=1, which="SA", tol=1e-10, v0=v0, return_eigenvectors=False)[0]
    hi = sla.eigsh(linear, k=1, which="LA", tol=1e-10, v0=v0, return_eigenvectors=False)[0]
    return float(lo), float(hi)


def run_model(name: str, model: nn.Module, batches: list[tuple[Tensor, Tensor]]) -> None:
    train(model, batches)
    probe = Probe.capture(model, nn.CrossEntropyLoss(), batches)
    engine = LossEngine.create(probe, dtype="float32")
    theta = engine.flatten(model.state_dict())
    op = engine.hessian_operator(theta)
    op64 = LossEngine.create(probe, dtype="float64").hessian_operator(theta.double())
    exact_lo, exact_hi = reference(op64)
    counted = Counted(op)
    v = torch.randn(op.size)
    for _ in range(3):
        op(v)
    times = []
    for _ in range(30):
        start = time.perf_counter()
        op(v)
        times.append(time.perf_counter() - start)
    unit = float(np.median(times))  # the median resists a shared machine's hiccups
    n = op.size
    rows: list[Row] = []

    def battery() -> tuple[float, float]:
        r = lanczos(
            counted, n, tol=TOL, dtype=torch.float32, generator=torch.Generator().manual_seed(0)
        )
        return r.lambda_min, r.lambda_max

    rows.append(timed(counted, battery, "battery lanczos (both ends)"))
    rng = np.random.default_rng(0)
    v0 = rng.standard_normal(n).astype(np.float32)

    def eigsh(which: str) -> Callable[[], tuple[float | None, float | None]]:
        def fn() -> tuple[float | None, float | None]:
            val = float(
                sla.eigsh(
                    counted.linear_operator(), k=1, which=which, v0=v0, return_eigenvectors=False
                )[0]
            )
            return (val, None) if which == "SA" else (None, val)

        return fn

    rows.append(timed(counted, eigsh("SA"), "scipy eigsh SA (λmin)"))
    rows.append(timed(counted, eigsh("LA"), "scipy eigsh LA (λmax)"))
    if eigenthings is not None:
        operator = eigenthings.LambdaOperator(counted, size=n, device="cpu", dtype=torch.float32)

        def he_lanczos(which: str) -> Callable[[], tuple[float | None, float | None]]:
            def fn() -> tuple[float | None, float | None]:
                val = float(eigenthings.lanczos(operator, which=which, seed=0).eigenvalues[0])
                return (val, None) if which == "SA" else (None, val)

            return fn

        def he_power() -> tuple[float | None, float | None]:
            res = eigenthings.deflated_power_iteration(operator, k=1, seed=0)
            return None, float(res.eigenvalues[0])

        if n > 20:  # its default max_iter = min(2k, n - 1) must reach k = 10
            rows.append(timed(counted, he_lanczos("SA"), "eigenthings lanczos SA (λmin)"))
            rows.append(timed(counted, he_lanczos("LA"), "eigenthings lanczos LA (λmax)"))
        rows.append(timed(counted, he_power, "eigenthings power iteration k=1 (λmax)"))

    base = rows[0]
    print(
        f"\n== {name}: {n:,} parameters; one HVP {unit * 1e3:.2f} ms; reference λmin {exact_lo:.6g}, λmax {exact_hi:.6g}"
    )
    print(
        f"{'method':42s} {'HVPs':>6s} {'seconds':>8s} {'in HVPs':>8s} {'rel err λmin':>13s} {'rel err λmax':>13s} {'≤1e-3':>6s} {'HVP ratio':>9s} {'time ratio':>10s}"
    )
    for row in rows:
        err_lo = None if row.lam_min is None else abs(row.lam_min - exact_lo) / abs(exact_lo)
        err_hi = None if row.lam_max is None else abs(row.lam_max - exact_hi) / abs(exact_hi)
        reached = all(e <= TOL for e in (err_lo, err_hi) if e is not None)
        print(
            f"{row.method:42s} {row.hvps:6d} {row.seconds:8.3f} {row.hvps * unit:8.3f} "
            f"{'-' if err_lo is None else f'{err_lo:.1e}':>13s} {'-' if err_hi is None else f'{err_hi:.1e}':>13s} "
            f"{'yes' if reached else 'NO':>6s} {row.hvps / base.hvps:9.2f} {row.seconds / base.seconds:10.2f}"
        )
    both = [r for r in rows if r.method.startswith("scipy")]
    if len(both) == 2:
        hvps = sum(r.hvps for r in both)
        secs = sum(r.seconds for r in both)
        print(
            f"{'scipy eigsh SA + LA (both ends)':42s} {hvps:6d} {secs:8.3f} {hvps * unit:8.3f} {'':>13s} {'':>13s} {'':>6s} "
            f"{hvps / base.hvps:9.2f} {secs / base.seconds:10.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="only the two small models")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(machine())
    if EIGENTHINGS is None:
        print(
            f"hessian-eigenthings could not be imported ({EIGENTHINGS_ERROR}); its rows are skipped."
        )
    for i, (name, (model, batches)) in enumerate(models().items()):
        if args.quick and i >= 2:
            break
        run_model(name, model, batches)


if __name__ == "__main__":
    main()

"""Restarted Lanczos (a fixed number of kept vectors) against full-basis Lanczos, counting HVPs.

    python bench/lanczos_restart.py            # the four models of lanczos_vs_eigsh.py
    python bench/lanczos_restart.py --quick    # the two small ones

On the models of ``bench/lanczos_vs_eigsh.py`` (after 100 SGD steps, float32 HVPs through the
battery's loss engine) the battery's Lanczos runs for both ends at tol=1e-3 from several seeds,
once with a basis that never fills (``max_vectors = max_iter + 1``: plain Lanczos keeping every
vector, the battery before restarts) and once per bounded basis (``max_vectors`` 32, 24 — the
default — and 16). Printed per model and basis: mean HVPs over the seeds, the ratio to full
basis (the issue's bar: at most 1.3), the worst relative error of λmin and λmax against a
float64 reference (ARPACK at tol=1e-10, or the dense Hessian below 400 parameters) and the
vectors held (the memory, in units of one parameter vector).
"""

from __future__ import annotations

import argparse
import statistics

import torch
from _machine import describe_machine
from lanczos_vs_eigsh import models, reference, train
from torch import nn

from obstacle.battery.engine import LossEngine
from obstacle.battery.lanczos import DEFAULT_MAX_VECTORS, lanczos
from obstacle.battery.probe import Probe

TOL = 1e-3
MAX_ITER = 400
SEEDS = 5


def run_model(name: str, model: nn.Module, batches: list, bases: list[int]) -> None:
    train(model, batches)
    probe = Probe.capture(model, nn.CrossEntropyLoss(), batches)
    engine = LossEngine.create(probe, dtype="float32")
    theta = engine.flatten(model.state_dict())
    op = engine.hessian_operator(theta)
    op64 = LossEngine.create(probe, dtype="float64").hessian_operator(theta.double())
    exact_lo, exact_hi = reference(op64)
    scale = max(abs(exact_lo), abs(exact_hi))
    print(
        f"\n== {name}: {op.size:,} parameters; reference λmin {exact_lo:.6g}, λmax {exact_hi:.6g}"
    )
    print(
        f"{'basis':>22s} {'HVPs (mean)':>11s} {'min..max':>10s} {'ratio':>6s} "
        f"{'restarts':>8s} {'worst err λmin':>14s} {'worst err λmax':>14s} {'vectors held':>12s}"
    )
    full_mean = None
    for basis in [MAX_ITER + 1, *bases]:
        counts, restarts, err_lo, err_hi = [], [], 0.0, 0.0
        for seed in range(SEEDS):
            r = lanczos(
                op,
                op.size,
                tol=TOL,
                max_iter=MAX_ITER,
                max_vectors=basis,
                dtype=torch.float32,
                generator=torch.Generator().manual_seed(seed),
            )
            counts.append(r.matvecs)
            restarts.append(r.restarts)
            # Relative to max(|λ|, 1e-2·λmax): the battery's own floor for λ ≈ 0.
            err_lo = max(err_lo, abs(r.lambda_min - exact_lo) / max(abs(exact_lo), 1e-2 * scale))
            err_hi = max(err_hi, abs(r.lambda_max - exact_hi) / max(abs(exact_hi), 1e-2 * scale))
        mean = statistics.mean(counts)
        full_mean = full_mean or mean
        label = "full (every vector)" if basis > MAX_ITER else f"{basis} vectors"
        held = min(max(counts) + 1, op.size + 1) if basis > MAX_ITER else min(basis, op.size + 1)
        print(
            f"{label:>22s} {mean:11.1f} {f'{min(counts)}..{max(counts)}':>10s} "
            f"{mean / full_mean:6.2f} {max(restarts):8d} {err_lo:14.1e} {err_hi:14.1e} {held:12d}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="only the two small models")
    parser.add_argument(
        "--bases",
        type=int,
        nargs="+",
        default=sorted({32, DEFAULT_MAX_VECTORS, 16}, reverse=True),
        help="bounded basis sizes to compare with the full basis",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(describe_machine(f"tol {TOL:g}, max_iter {MAX_ITER}, {SEEDS} seeds, float32 HVPs"))
    for i, (name, (model, batches)) in enumerate(models().items()):
        if args.quick and i >= 2:
            break
        run_model(name, model, batches, args.bases)


if __name__ == "__main__":
    main()

"""Lanczos warm start along a training run: HVPs per checkpoint, cold vs warm, with accuracy.

    python bench/warm_start.py              # the ~26k-parameter MLP, 11 checkpoints
    python bench/warm_start.py --large      # also the ~86k-parameter MLP

A teacher-labelled classification problem is trained with SGD (lr 0.1, 200 steps) and a checkpoint
kept every 20 steps. At each checkpoint the battery's Lanczos (float32 HVPs, tol 1e-3, both ends)
runs twice, through the NegativeCurvature quantity with a carried state: cold (a random start) and
warm (the previous checkpoint's Ritz vectors mixed in equal weight with a fresh random vector). Both
are checked against a float64 ARPACK reference (eigsh, tol 1e-10) of the same checkpoint: the warm
start must reach the same accuracy, in fewer HVPs. The ratio is warm over cold, same run.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import scipy
import scipy.sparse.linalg as sla
import torch
from _machine import describe_machine
from torch import Tensor, nn

from obstacle.battery.checkpoint import Checkpoint
from obstacle.battery.engine import HessianOperator, LossEngine
from obstacle.battery.probe import Probe
from obstacle.battery.quantities.base import CheckpointContext
from obstacle.battery.quantities.negative_curvature import NegativeCurvature

TOL = 1e-3


def machine() -> str:
    return describe_machine(f"numpy {np.__version__}", f"scipy {scipy.__version__}")


def data(inputs: int, classes: int, seed: int = 0) -> list[tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(inputs, classes, generator=g)
    batches = []
    for _ in range(4):
        x = torch.randn(64, inputs, generator=g)
        batches.append((x, (x @ teacher).argmax(dim=1)))
    return batches


def reference(op64: HessianOperator) -> tuple[float, float]:
    def matvec(x: np.ndarray) -> np.ndarray:
        return op64(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64).reshape(-1))).numpy()

    linear = sla.LinearOperator((op64.size, op64.size), matvec=matvec, dtype=np.float64)
    v0 = np.random.default_rng(1).standard_normal(op64.size)
    lo = sla.eigsh(linear, k=1, which="SA", tol=1e-10, v0=v0, return_eigenvectors=False)[0]
    hi = sla.eigsh(linear, k=1, which="LA", tol=1e-10, v0=v0, return_eigenvectors=False)[0]
    return float(lo), float(hi)


def context(
    engine: LossEngine, model: nn.Module, step: int, options: dict[str, Any], carry: dict[str, Any]
) -> CheckpointContext:
    state = {k: v.detach().clone().float() for k, v in model.state_dict().items()}
    checkpoint = Checkpoint(step=step, lr=0.1, train_loss=None, state=state)
    return CheckpointContext(
        engine=engine,
        theta=engine.flatten(state),
        checkpoint=checkpoint,
        options=options,
        carry=carry,
    )


def run(name: str, model: nn.Module, batches: list[tuple[Tensor, Tensor]]) -> None:
    probe = Probe.capture(model, nn.CrossEntropyLoss(), batches)
    engine32 = LossEngine.create(probe, dtype="float32")
    engine64 = LossEngine.create(probe, dtype="float64")
    n = engine32.num_parameters
    quantity = NegativeCurvature(tol=TOL)
    cold_carry: dict[str, Any] = {}
    warm_carry: dict[str, Any] = {}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    print(f"\n== {name}: {n:,} parameters, SGD lr 0.1, a checkpoint every 20 steps")
    print(
        f"{'step':>5s} {'λmin (ref)':>11s} {'λmax (ref)':>10s} {'cold HVPs':>9s} {'warm HVPs':>9s} "
        f"{'cold err min/max':>17s} {'warm err min/max':>17s}"
    )
    totals = [0, 0]
    worst = [0.0, 0.0]
    for step in range(201):
        if step % 20 == 0:
            theta64 = engine64.flatten(
                {k: v.detach().double() for k, v in model.state_dict().items()}
            )
            lo, hi = reference(engine64.hessian_operator(theta64))
            cold = quantity(context(engine32, model, step, {"warm_start": False}, cold_carry))
            warm = quantity(context(engine32, model, step, {}, warm_carry))
            errs = []
            for i, record in enumerate((cold, warm)):
                e = (
                    abs(record["lambda_min"] - lo) / abs(lo),
                    abs(record["lambda_max"] - hi) / abs(hi),
                )
                worst[i] = max(worst[i], *e)
                totals[i] += record["cost"]["hvp_evals"]
                errs.append(f"{e[0]:.1e}/{e[1]:.1e}")
            print(
                f"{step:5d} {lo:11.5g} {hi:10.5g} {cold['cost']['hvp_evals']:9d} {warm['cost']['hvp_evals']:9d} "
                f"{errs[0]:>17s} {errs[1]:>17s}"
            )
        x, y = batches[step % len(batches)]
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    checkpoints = 11
    print(
        f"per checkpoint: cold {totals[0] / checkpoints:.1f} HVPs, warm {totals[1] / checkpoints:.1f} HVPs "
        f"(warm/cold {totals[1] / totals[0]:.2f}); worst relative error cold {worst[0]:.1e}, warm {worst[1]:.1e} "
        f"(tol {TOL:g})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--large", action="store_true", help="also the ~86k-parameter MLP")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(machine())
    torch.manual_seed(0)
    mlp26 = nn.Sequential(
        nn.Linear(64, 128), nn.Tanh(), nn.Linear(128, 128), nn.Tanh(), nn.Linear(128, 10)
    )
    run("MLP 26k", mlp26, data(64, 10))
    if args.large:
        mlp86 = nn.Sequential(
            nn.Linear(128, 256), nn.Tanh(), nn.Linear(256, 200), nn.Tanh(), nn.Linear(200, 10)
        )
        run("MLP 86k", mlp86, data(128, 10))


if __name__ == "__main__":
    main()

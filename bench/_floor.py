"""The battery's floor: its single-batch pass counts priced at unit costs measured on the same model.

Shared by ``battery_floor.py`` and ``scale.py``. The unit costs are one single-batch loss, gradient
and Hessian-vector product (graph reused, and graph built each time) at θ, timed on the engine
the battery itself uses; the floor is what the battery's ``Cost.*_batches`` would take at those
prices with no overhead at all.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from obstacle.battery.engine import Cost, LossEngine


def unit_time(fn: Callable[[], object], repeats: int = 25, budget_s: float | None = None) -> float:
    """Median seconds of ``fn()`` after one warm-up call; at least 3 calls once ``budget_s`` is spent."""
    fn()  # warm-up
    times: list[float] = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        if budget_s is not None and len(times) >= 3 and sum(times) > budget_s:
            break
    return statistics.median(times)


@dataclass(frozen=True)
class UnitCosts:
    """Seconds of one single-batch pass of each kind."""

    loss: float
    grad: float
    hvp: float  # reusing the gradient's graph, as Lanczos does
    hvp_fresh: float  # building the graph each time

    def floor(self, used: Cost) -> float:
        """Seconds the passes counted in ``used`` would take with no overhead."""
        return (
            used.loss_batches * self.loss
            + used.grad_batches * self.grad
            + used.hvp_batches * self.hvp
        )


def unit_costs(
    engine: LossEngine, theta: Tensor, *, repeats: int = 25, budget_s: float | None = None
) -> UnitCosts:
    """Time one single-batch loss, gradient and HVP at ``theta`` on probe batch 0."""
    op = engine.hessian_operator(theta, 0)
    v = torch.randn_like(theta)
    cuda = engine.device.type == "cuda"

    def timed(fn: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            fn()
            if cuda:
                torch.cuda.synchronize()

        return run

    def measure(fn: Callable[[], object]) -> float:
        return unit_time(timed(fn), repeats, budget_s)

    return UnitCosts(
        loss=measure(lambda: engine.loss(theta, 0)),
        grad=measure(lambda: engine.loss_and_grad(theta, 0)),
        hvp=measure(lambda: op(v)),
        hvp_fresh=measure(lambda: engine.hessian_operator(theta, 0)(v)),
    )

"""The shape every quantity shares (after cockpit's ``quantities/``).

A quantity reads a :class:`CheckpointContext` and returns a JSON-ready record: a dict of plain
numbers, lists and nested dicts (NaN/inf allowed: non-finite values are evidence, and the JSON
writer maps them to null). Nothing here draws, judges or touches a server.

The context caches what several quantities share — the probe gradient, the per-batch gradients,
the Hessian operator at θ — so that each is computed once per checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from obstacle.battery.checkpoint import Checkpoint
from obstacle.battery.engine import Cost, HessianOperator, LossEngine
from obstacle.battery.reduce import gram64

Record = dict[str, Any]


@dataclass
class CheckpointContext:
    """One checkpoint bound to the engine, with shared computations cached."""

    engine: LossEngine
    theta: Tensor
    checkpoint: Checkpoint
    # θ at the run's first checkpoint, or a function that reads it: the analysis passes a function,
    # so θ₀ is a vector only while a quantity uses it, not through Lanczos (see start_point).
    theta0: Tensor | Callable[[], Tensor] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    # carried across checkpoints of one sequential analysis (e.g. Lanczos warm starts)
    carry: dict[str, Any] = field(default_factory=dict)
    _grad: tuple[float, Tensor] | None = None
    _batch: tuple[Tensor, Tensor] | None = None
    _hessian: HessianOperator | None = None
    _gram: tuple[Tensor, Tensor] | None = None

    @property
    def step(self) -> int:
        return self.checkpoint.step

    @property
    def lr(self) -> float:
        return self.checkpoint.lr

    def start_point(self) -> Tensor | None:
        """θ₀, the run's first point (read now when :attr:`theta0` is a reader); None if unknown.
        Not cached: the caller drops it when done."""
        return self.theta0() if callable(self.theta0) else self.theta0

    def gradient(self) -> tuple[float, Tensor]:
        """(J, ∇J) of the probe loss at θ, computed once."""
        if self._grad is None:
            if self._hessian is not None:
                self._grad = (self._hessian.loss, self._hessian.gradient)
            else:
                self._grad = self.engine.loss_and_grad(self.theta)
        return self._grad

    @property
    def batch_chunk(self) -> int:
        """How many per-batch gradients may be held at once (``options["batch_gradient_chunk"]``,
        set by the memory plan; default all K)."""
        k = self.engine.num_batches
        return max(1, min(int(self.options.get("batch_gradient_chunk") or k), k))

    def batch_gradients(self) -> tuple[Tensor, Tensor]:
        """(J_k, g_k) for every probe batch, computed once: all K at once, so only when the
        memory plan allows it (see :meth:`batch_gradient_chunks`)."""
        if self._batch is None:
            self._batch = self.engine.batch_grads(self.theta)
        return self._batch

    def batch_gradient_chunks(self) -> Iterator[tuple[list[int], Tensor, Tensor]]:
        """(indices, J_k, g_k) over the probe batches in chunks of :attr:`batch_chunk`.

        With room for all K the gradients are computed once and cached; otherwise each pass
        computes them again, one chunk at a time (memory for a chunk, time for a pass).
        """
        k, chunk = self.engine.num_batches, self.batch_chunk
        if chunk >= k:
            losses, grads = self.batch_gradients()
            yield list(range(k)), losses, grads
            return
        for start in range(0, k, chunk):
            index = list(range(start, min(k, start + chunk)))
            losses, grads = self.engine.batch_grads(self.theta, index)
            yield index, losses, grads
            del losses, grads

    def batch_gram(self) -> tuple[Tensor, Tensor]:
        """(J_k, G) with G_kl = g_kᵀg_l the K×K Gram matrix of the per-batch gradients, in
        float64 on the CPU, computed once. In chunks it holds two chunks at a time and computes
        the later chunks again for each earlier one."""
        if self._gram is None:
            k = self.engine.num_batches
            if self.batch_chunk >= k:
                losses, grads = self.batch_gradients()
                self._gram = (losses.double().cpu(), gram64(grads, grads).cpu())
            else:
                gram = torch.zeros(k, k, dtype=torch.float64)
                values = torch.zeros(k, dtype=torch.float64)
                step = self.batch_chunk
                chunks = [list(range(i, min(k, i + step))) for i in range(0, k, step)]
                for i, rows in enumerate(chunks):
                    losses, held = self.engine.batch_grads(self.theta, rows)
                    values[rows] = losses.double().cpu()
                    gram[rows[0] : rows[-1] + 1, rows[0] : rows[-1] + 1] = gram64(held, held).cpu()
                    for cols in chunks[i + 1 :]:
                        _, other = self.engine.batch_grads(self.theta, cols)
                        block = gram64(held, other).cpu()
                        gram[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] = block
                        gram[cols[0] : cols[-1] + 1, rows[0] : rows[-1] + 1] = block.T
                        del other
                    del held
                self._gram = (values, gram)
        return self._gram

    def hessian(self) -> HessianOperator:
        """H(θ)·v with the gradient graph kept, built once (it also yields the gradient); the
        graphs of the first ``options["kept_graphs"]`` probe batches only when the memory plan
        says so (the others are built again by each product)."""
        if self._hessian is None:
            kept = self.options.get("kept_graphs")
            self._hessian = self.engine.hessian_operator(self.theta, kept_graphs=kept)
            if self._grad is None:
                self._grad = (self._hessian.loss, self._hessian.gradient)
        return self._hessian

    def release_batch_gradients(self) -> None:
        """Drop the cached per-batch gradients (K vectors of θ's size when the plan let them all
        be held) before a phase that holds many vectors of its own; they are a cache, computed
        again if a later quantity asks (the K×K Gram matrix stays)."""
        self._batch = None

    def release(self) -> None:
        """Drop the cached graph (it holds activations) once the checkpoint is done."""
        self._hessian = None
        self._batch = None
        self._gram = None


class Quantity:
    """A test of the battery: ``compute(ctx)`` returns a record under the key ``name``.

    Subclasses set ``name`` and implement ``compute``. The cost of the call (loss, gradient and
    HVP evaluations) is measured around it and added to the record as ``cost``.
    """

    name: ClassVar[str]

    def compute(self, ctx: CheckpointContext) -> Record:
        raise NotImplementedError

    def __call__(self, ctx: CheckpointContext) -> Record:
        before = ctx.engine.cost.copy()
        record = self.compute(ctx)
        record["cost"] = (ctx.engine.cost - before).as_dict()
        return record


def finite(value: float) -> float | None:
    """A float for JSON: non-finite becomes None."""
    return float(value) if math.isfinite(value) else None


def as_float(t: Tensor | float) -> float:
    return float(t.item()) if isinstance(t, torch.Tensor) else float(t)


__all__ = ["CheckpointContext", "Cost", "Quantity", "Record", "as_float", "finite"]

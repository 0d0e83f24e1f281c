"""The memory plan: what the battery holds per checkpoint, planned to a budget before any work.

The analysis' peak is a small multiple of the model, independent of Lanczos iterations and of
the sequence length. Counted in vectors of the model's size in the analysis dtype:

- **fixed** (:data:`FIXED_VECTORS`): θ, the gradient and its graph, a Hessian-vector
  product and one vector of autograd's temporaries (:data:`PRODUCT_TEMPORARY_VECTORS`),
  Lanczos' work and Ritz vectors, a probe point of the escape test or a landscape plot, the
  checkpoint being read, the optimizer's state and step;
- **Lanczos basis**: ``lanczos_max_vectors`` (thick restart keeps it fixed);
- **per-batch gradients**: ``2 × batch_gradient_chunk`` (a chunk, and the optimizer steps made
  from it or a second chunk of the Gram matrix); all K only when they fit.

Beside the vectors, what grows with the probe's batch size, sequence length and vocabulary, not
with the parameters, so it is measured, not modelled (:meth:`LossEngine.operator_memory`, one
batch's operator at θ₀):

- **the Hessian operator's graphs** (``graph_bytes``): it keeps one gradient graph per probe
  batch, each holding the activations its products need (a 25M-parameter GPT at 4 × 16 tokens:
  30 MiB per batch, 2.5 vectors for K = 8); one batch's saved tensors (``batch_graph_bytes``)
  × the graphs kept (``kept_graphs``, all K unless they do not fit; one more while a product
  builds a batch's graph again);
- **one product's temporaries** (``product_bytes``): the peak of the tensors a product makes
  while it runs (products go batch by batch, so once), beyond the one vector the fixed ones
  allow. Within it for narrow outputs (an MLP: 1.1–1.6 vectors); for a softmax over a large
  vocabulary as large as a graph (GPT-2's 50,257 tokens at 16 × 16 tokens: 14 vectors of a
  4M-parameter model beyond the parameter-shaped ones).

``plan_memory`` starts from the preferred plan (24 Lanczos vectors, all K gradients at once up
to :data:`DEFAULT_BATCH_GRADIENT_BYTES`, all K graphs) and, over the budget, first takes the
gradients in smaller chunks (more gradient passes); then keeps fewer graphs if that alone fits
(more time per product), else shrinks the basis to :data:`MIN_PLANNED_VECTORS` (more HVPs) and
keeps fewer graphs only if that is not enough. If even that does not fit it raises
:class:`MemoryBudgetError` before any quantity is computed, saying what to lower. The process
itself (Python, torch: a few hundred MB) comes on top; the estimate is what the battery's own
tensors need. The default budget is what the device has free.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

import torch

from obstacle._validation import check_int
from obstacle.battery.lanczos import DEFAULT_MAX_VECTORS
from obstacle.errors import MemoryBudgetError, ParameterError

__all__ = [
    "DEFAULT_BATCH_GRADIENT_BYTES",
    "FIXED_VECTORS",
    "MIN_PLANNED_VECTORS",
    "PRODUCT_TEMPORARY_VECTORS",
    "MemoryPlan",
    "available_memory",
    "parse_size",
    "plan_memory",
]

FIXED_VECTORS = 11
# Of the fixed vectors, those for the temporaries of a product; a product measured to make more
# (LossEngine.operator_memory) adds the excess to the plan.
PRODUCT_TEMPORARY_VECTORS = 1
# Per-batch gradients held at once by default, in bytes: all K for models up to 16 MB per vector
# (K = 8), three of a 10M-parameter float32 model, one of a 25M one. Over it the Gram matrix is
# built chunk by chunk (more gradient passes, a few % of a checkpoint's time beside Lanczos).
DEFAULT_BATCH_GRADIENT_BYTES = 128 * 2**20
# Fewer kept vectors than this: restarts cost 2× the HVPs or more, and a dense end can be
# mistaken for its neighbour (measured on bench/lanczos_restart.py's models at 10 and 16).
MIN_PLANNED_VECTORS = 16
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_IUNITS = {"ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


@dataclass(frozen=True)
class MemoryPlan:
    """How the battery will hold a checkpoint's analysis, and what it estimates that takes."""

    num_parameters: int
    dtype: str
    vector_bytes: int
    num_batches: int
    lanczos_max_vectors: int
    batch_gradient_chunk: int
    kept_graphs: int  # probe batches whose gradient graph the Hessian operator keeps
    batch_graph_bytes: int  # what one batch's graph holds (measured)
    graph_bytes: int  # the graphs alive at once: the kept ones, and one rebuilt if any is not
    product_bytes: int  # one product's temporaries at their peak (measured; a vector is fixed)
    estimate_bytes: int
    budget_bytes: int | None
    budget_source: str  # "requested", "device" or "none"

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def parse_size(value: str | int) -> int:
    """Bytes from ``8GiB``, ``500MB``, ``2g`` or a plain number of bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        return check_int("memory_budget", value, low=1)
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]i?)?b?\s*", str(value), re.IGNORECASE)
    if not match:
        raise ParameterError(
            f"The 'memory_budget' parameter must be a size such as 8GiB, 500MB or 2000000000. "
            f"Got {value!r} instead."
        )
    unit = (match.group(2) or "").lower()
    scale = _IUNITS.get(unit) or _UNITS[unit]
    size = int(float(match.group(1)) * scale)
    if size < 1:
        raise ParameterError(
            f"The 'memory_budget' parameter must be a positive size. Got {value!r} instead."
        )
    return size


def available_memory(device: torch.device) -> int | None:
    """Free memory on ``device``: CUDA's free bytes, or the CPU's MemAvailable; None if unknown.

    On CUDA the blocks torch's caching allocator holds that no tensor uses count as free: the
    driver sees them as taken, but they are this process's to reuse (a worker's previous analysis,
    or the training step before an in-process one, would otherwise shrink every later plan).
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free) + max(int(cached), 0)
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _estimate(vector_bytes: int, vectors: int, chunk: int, activation_bytes: int) -> int:
    return vector_bytes * (FIXED_VECTORS + vectors + 2 * chunk) + activation_bytes


def _held_graphs(kept: int, num_batches: int) -> int:
    """Graphs alive at once when ``kept`` of ``num_batches`` are kept: one more while a product
    builds one of the others again."""
    return kept if kept >= num_batches else kept + 1


def plan_memory(
    *,
    num_parameters: int,
    dtype: torch.dtype,
    num_batches: int,
    budget_bytes: int | None,
    budget_source: str = "requested",
    max_vectors: int = DEFAULT_MAX_VECTORS,
    batch_graph_bytes: int = 0,
    product_bytes: int = 0,
) -> MemoryPlan:
    """The largest plan within ``budget_bytes`` (None: no limit); raises if none fits.

    ``batch_graph_bytes``: what one probe batch's gradient graph holds for the products;
    ``product_bytes``: the peak of one product's temporaries (both measured by the caller), of
    which the fixed vectors already hold :data:`PRODUCT_TEMPORARY_VECTORS`.

    Over the budget: the per-batch gradients go in smaller chunks first (a few % of the time).
    Then, if keeping fewer gradient graphs alone would fit (activations dominate: long
    sequences, a large vocabulary), the fewest graphs are given up (each product builds those
    batches' again: about 1.6× a product's time per batch); otherwise the Lanczos basis shrinks
    (more products), and graphs go too only if that is not enough (the basis then takes back
    what they freed).
    """
    vector_bytes = num_parameters * torch.empty(0, dtype=dtype).element_size()
    beyond = max(0, product_bytes - PRODUCT_TEMPORARY_VECTORS * vector_bytes)
    vectors = max_vectors
    kept = num_batches
    chunk = max(1, min(num_batches, DEFAULT_BATCH_GRADIENT_BYTES // max(vector_bytes, 1)))

    def need(graphs: int | None = None, basis: int | None = None) -> int:
        held = _held_graphs(kept if graphs is None else graphs, num_batches)
        basis = vectors if basis is None else basis
        return _estimate(vector_bytes, basis, chunk, batch_graph_bytes * held + beyond)

    if budget_bytes is not None:
        while need() > budget_bytes and chunk > 1:
            chunk = math.ceil(chunk / 2)
        if need() > budget_bytes and need(0) <= budget_bytes:
            while need() > budget_bytes:
                kept -= 1
        while need() > budget_bytes and vectors > MIN_PLANNED_VECTORS:
            vectors -= 1
        while need() > budget_bytes and kept > 0:
            kept -= 1
        while vectors < max_vectors and need(basis=vectors + 1) <= budget_bytes:
            vectors += 1  # what the graphs gave back
        if need() > budget_bytes:
            hint = "--dtype float32 (half the bytes per vector), " if dtype == torch.float64 else ""
            activations = (
                f", plus {_fmt(batch_graph_bytes + beyond)} of activations (one probe batch's "
                f"gradient graph at a time, {_fmt(batch_graph_bytes)}; {_fmt(beyond)} of one "
                "product's temporaries beyond a vector)"
                if batch_graph_bytes + beyond
                else ""
            )
            raise MemoryBudgetError(
                f"The analysis of a {num_parameters:,}-parameter model in "
                f"{str(dtype).removeprefix('torch.')} needs at least {_fmt(need())} "
                f"({FIXED_VECTORS + vectors + 2 * chunk} vectors of {_fmt(vector_bytes)}: "
                f"{FIXED_VECTORS} fixed, a {vectors}-vector Lanczos basis, per-batch gradients "
                f"one at a time{activations}), but the memory budget is {_fmt(budget_bytes)} "
                f"({budget_source}). Lower what it needs with {hint}a smaller model or a probe "
                "of fewer or smaller batches, or raise --memory-budget (OBSTACLE_MEMORY_BUDGET "
                "for a worker)."
            )
    return MemoryPlan(
        num_parameters=num_parameters,
        dtype=str(dtype).removeprefix("torch."),
        vector_bytes=vector_bytes,
        num_batches=num_batches,
        lanczos_max_vectors=vectors,
        batch_gradient_chunk=chunk,
        kept_graphs=kept,
        batch_graph_bytes=batch_graph_bytes,
        graph_bytes=batch_graph_bytes * _held_graphs(kept, num_batches),
        product_bytes=product_bytes,
        estimate_bytes=need(),
        budget_bytes=budget_bytes,
        budget_source=budget_source if budget_bytes is not None else "none",
    )


def _fmt(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"

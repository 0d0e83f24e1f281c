"""The loss engine: a probe bound to parameters, on a device, in a dtype.

Everything works on one flat parameter vector θ (the model's trainable parameters in manifest
order), which is what Lanczos, interpolation and the subspace plots need. Evaluations are counted
so that each battery record can state its cost.

Hessian-vector products use double backward: measured here 2.3–3.3× a gradient on CPU, and
keeping the gradient's graph to reuse for many HVPs 1.2–1.7× (``HessianOperator``).
Forward-over-reverse (``hvp_forward_over_reverse``) is kept as a cross-check.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from obstacle._validation import check_choice, check_int
from obstacle.battery.live_bytes import LiveBytes
from obstacle.battery.probe import _MODEL_PREFIX, Batch, Probe
from obstacle.battery.program_dtype import cast_graph, run_graph
from obstacle.errors import CheckpointError, DeviceError, ParameterError

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class Cost:
    """How many evaluations a computation used.

    ``loss``/``grad``/``hvp`` count calls, each over whatever batches it touched (the whole probe
    or one batch); the ``*_batches`` fields count single-batch passes, the unit in which
    ``bench/battery_floor.py`` prices the battery's floor.
    """

    loss: int = 0
    grad: int = 0
    hvp: int = 0
    loss_batches: int = 0
    grad_batches: int = 0
    hvp_batches: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "loss_evals": self.loss,
            "grad_evals": self.grad,
            "hvp_evals": self.hvp,
            "loss_batch_passes": self.loss_batches,
            "grad_batch_passes": self.grad_batches,
            "hvp_batch_passes": self.hvp_batches,
        }

    def __sub__(self, other: Cost) -> Cost:
        return Cost(*(a - b for a, b in zip(self._values(), other._values(), strict=True)))

    def copy(self) -> Cost:
        return Cost(*self._values())

    def _values(self) -> tuple[int, ...]:
        return (
            self.loss,
            self.grad,
            self.hvp,
            self.loss_batches,
            self.grad_batches,
            self.hvp_batches,
        )


def resolve_device(device: str) -> torch.device:
    """``"auto"`` picks CUDA when present, else CPU; a missing CUDA is a clear error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(
            f"The 'device' parameter is {device!r} but no CUDA device is available. "
            "Use --device cpu (or auto)."
        )
    return dev


@dataclass
class LossEngine:
    """Evaluate the probe loss J(θ) = mean_k J_k(θ), its gradient, and Hessian-vector products."""

    probe: Probe
    device: torch.device
    dtype: torch.dtype
    graph: torch.fx.GraphModule
    inputs: list[tuple[str, Any]]
    names: list[str]
    shapes: list[torch.Size]
    numels: list[int]
    batches: list[Batch]
    validation: Batch | None
    buffers: dict[str, Tensor] = field(default_factory=dict)
    cost: Cost = field(default_factory=Cost)
    # Called after each Hessian-vector product of an operator (a progress bar's tick).
    on_product: Callable[[], None] | None = None
    _vmap_ok: bool = True

    @classmethod
    def create(
        cls,
        probe: Probe,
        *,
        device: str = "cpu",
        dtype: str = "float64",
        max_batches: int | None = None,
    ) -> LossEngine:
        """Bind ``probe`` on ``device`` in ``dtype``, using its first ``max_batches`` batches."""
        check_choice("dtype", dtype, _DTYPES)
        batches = (
            probe.batches
            if max_batches is None
            else probe.batches[: check_int("max_batches", max_batches, low=1)]
        )
        dev = resolve_device(device)
        dt = _DTYPES[dtype]
        names = [s.name for s in probe.manifest.parameters]
        shapes = [torch.Size(s.shape) for s in probe.manifest.parameters]
        numels = [math.prod(s.shape) for s in probe.manifest.parameters]
        return cls(
            probe=probe,
            device=dev,
            dtype=dt,
            # tensors the graph creates itself follow dt and dev too (GRU/LSTM initial states)
            graph=cast_graph(probe.program.graph_module, dt, dev),
            inputs=_input_plan(probe.program, dev, dt),
            names=names,
            shapes=shapes,
            numels=numels,
            batches=[_to(b, dev, dt) for b in batches],
            validation=_to(probe.validation, dev, dt) if probe.validation is not None else None,
            # the capture-time buffers until a checkpoint is bound by ``flatten``
            buffers={
                name: t.detach().to(dev, dt if t.is_floating_point() else t.dtype)
                for name, t in _model_buffers(probe.program).items()
            },
        )

    # -- parameters --------------------------------------------------------------------------

    @property
    def num_parameters(self) -> int:
        return sum(self.numels)

    @property
    def num_batches(self) -> int:
        return len(self.batches)

    def flatten(self, state: Mapping[str, Tensor]) -> Tensor:
        """θ from a state dict; also binds the state's buffers (batch-norm statistics)."""
        missing = [n for n in self.names if n not in state]
        if missing:
            raise CheckpointError(
                f"The state dict lacks parameters {missing}; it does not match the probe."
            )
        # Update, not replace: non-persistent buffers are in no checkpoint and keep their
        # capture-time values.
        self.buffers.update(
            {
                _MODEL_PREFIX + s.name: state[s.name].to(self.device, self._cast(state[s.name]))
                for s in self.probe.manifest.buffers
                if s.name in state
            }
        )
        return torch.cat(
            [state[n].detach().reshape(-1).to(self.device, self.dtype) for n in self.names]
        )

    def unflatten(self, theta: Tensor) -> dict[str, Tensor]:
        """Views of θ shaped as the model's parameters (gradients flow back to θ).

        One ``split``, not a slice per parameter: a slice's backward writes a zero-filled vector
        of θ's size for each parameter and autograd sums them, while ``split``'s backward writes
        the parameters' gradients into one. On a 25M-parameter, 8-tensor MLP an HVP took 252 ms
        instead of 552 (most of it the kernel faulting in the fresh zero pages) and peaked 1.3
        vectors lower.
        """
        pieces = torch.split(theta, self.numels)
        return {
            name: piece.view(shape)
            for name, shape, piece in zip(self.names, self.shapes, pieces, strict=True)
        }

    def _cast(self, tensor: Tensor) -> torch.dtype:
        return self.dtype if tensor.is_floating_point() else tensor.dtype

    # -- evaluations ---------------------------------------------------------------------------

    def _call(self, theta: Tensor | Mapping[str, Tensor], batch: Batch) -> Tensor:
        # Call the exported graph directly with every input positional: the unlifted module of
        # ``ExportedProgram.module()`` re-checks input constraints and swaps attributes on each
        # call, which cost ~3 ms per evaluation here (more than a small model's whole forward).
        views = self.unflatten(theta) if isinstance(theta, Tensor) else theta
        user = iter(batch)
        args: list[Tensor] = []
        for kind, value in self.inputs:
            if kind == "param":
                args.append(views[value])
            elif kind == "buffer":
                args.append(self.buffers[value])
            elif kind == "fixed":
                args.append(value)
            else:
                args.append(next(user))
        out = run_graph(self.graph, args, probe=self.probe.manifest.model_class)
        return out[0] if isinstance(out, tuple | list) else out  # type: ignore[no-any-return]

    def _batch(self, index: int | str) -> Batch:
        if index == "validation":
            if self.validation is None:
                raise CheckpointError("The probe has no validation batch.")
            return self.validation
        assert isinstance(index, int)
        return self.batches[index]

    def batch_losses(self, theta: Tensor) -> Tensor:
        """J_k(θ) for each probe batch (non-finite values are returned, not raised)."""
        with torch.no_grad():
            self.cost.loss += 1
            self.cost.loss_batches += len(self.batches)
            return torch.stack([self._call(theta, b) for b in self.batches])

    def loss(self, theta: Tensor, batch: int | str | None = None) -> float:
        """J(θ) (mean over the probe batches), or one batch's loss, or ``"validation"``."""
        with torch.no_grad():
            if batch is None:
                return float(self.batch_losses(theta).mean())
            self.cost.loss += 1
            self.cost.loss_batches += 1
            return float(self._call(theta, self._batch(batch)))

    def _objective(self, theta: Tensor, batch: int | None) -> Tensor:
        if batch is not None:
            return self._call(theta, self.batches[batch])
        return torch.stack([self._call(theta, b) for b in self.batches]).mean()

    def loss_and_grad(self, theta: Tensor, batch: int | None = None) -> tuple[float, Tensor]:
        """(J, ∇J) at θ for the whole probe, or for one batch."""
        t = theta.detach().requires_grad_(True)
        with torch.enable_grad():
            value = self._objective(t, batch)
            (g,) = torch.autograd.grad(value, t)
        self.cost.grad += 1
        self.cost.grad_batches += self._passes(batch)
        return float(value.detach()), g.detach()

    def batch_grads(
        self, theta: Tensor, batches: Sequence[int] | None = None
    ) -> tuple[Tensor, Tensor]:
        """(J_k, g_k) for the probe batches ``batches`` (default all): a (k,) vector and (k, P).

        One vmapped gradient over the stacked batches where the program allows it (measured
        3× faster than a loop on the architecture families of the tests), else a loop.
        """
        chosen = list(range(self.num_batches)) if batches is None else list(batches)
        if self._vmap_ok:
            try:
                grads, losses = self._vmapped_grads(theta, chosen)
            except Exception:  # an op without a batching rule: fall back for this engine
                self._vmap_ok = False
            else:
                self.cost.grad += len(chosen)
                self.cost.grad_batches += len(chosen)
                return losses.detach(), grads.detach()
        values, rows = [], []
        for k in chosen:
            value, g = self.loss_and_grad(theta, k)
            values.append(value)
            rows.append(g)
        return torch.tensor(values, dtype=self.dtype, device=self.device), torch.stack(rows)

    def _vmapped_grads(self, theta: Tensor, chosen: list[int]) -> tuple[Tensor, Tensor]:
        stacked = [
            torch.stack(column) for column in zip(*(self.batches[k] for k in chosen), strict=True)
        ]

        def batch_loss(t: Tensor, *batch: Tensor) -> Tensor:
            return self._call(t, batch)

        grad_and_value = torch.func.grad_and_value(batch_loss)
        in_dims = (None, *([0] * len(stacked)))
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message=r".*torch\.jit\.script.*deprecated", category=DeprecationWarning
            )
            grads, losses = torch.func.vmap(grad_and_value, in_dims=in_dims)(
                theta.detach(), *stacked
            )
        return grads, losses

    def hessian_operator(
        self, theta: Tensor, batch: int | None = None, *, kept_graphs: int | None = None
    ) -> HessianOperator:
        """H(θ)·v as a reusable operator: the gradient's graph is built once and kept.

        Memory is what shapes it (a product on a 100M-parameter model must not hold K gradients):

        - The graph's leaves are the parameters (views of θ), not θ: a product lands in each
          parameter's ``.grad``, which the operator points into its output vector, so no θ-sized
          concatenation or per-parameter buffer is made (:meth:`HessianOperator.__call__`).
        - One graph per probe batch, its gradient added to the total at once: the operator runs
          one backward per batch. In one backward over all K batches, autograd reaches every
          batch's second-order terms before any forward-graph node (they are newer), so each
          batch's parameter-sized partial products waited in its own buffers: K + ½ vectors per
          product, measured on an MLP with K = 1, 2, 4, 8 batches; one batch at a time, 1½.
        - The graph keeps each batch's gradient tensors only as the roots of its backward; their
          values are in the total, so their storage is released (as FSDP releases gathered
          parameters) unless the graph saved that storage for the products (the roots are made
          by the first backward, so that backward's saved tensors are the ones checked).
        - ``kept_graphs``: the graphs of only the first that many batches are kept (the memory
          plan's choice when the K graphs do not fit: long sequences, a large vocabulary); each
          product builds the others' again, one batch at a time, and frees each after its
          backward (one gradient pass with its graph per batch and product: about 1.6× the
          product's time per rebuilt batch, for one graph held instead of K). None: all.
        """
        params = {
            name: view.detach().requires_grad_(True)
            for name, view in self.unflatten(theta.detach()).items()
        }
        leaves = list(params.values())
        chosen = range(self.num_batches) if batch is None else [batch]
        keep = len(chosen) if kept_graphs is None else max(0, min(int(kept_graphs), len(chosen)))
        weight = 1.0 / len(chosen)
        total = torch.zeros_like(theta, dtype=self.dtype, device=self.device)
        pieces = [
            piece.view(p.shape)
            for piece, p in zip(torch.split(total, self.numels), leaves, strict=True)
        ]
        roots: list[tuple[list[Tensor], list[int]]] = []
        rebuilt: list[int] = []
        value = 0.0
        for position, k in enumerate(chosen):
            loss, grads, saved = self._batch_graph(params, k, weight)
            value += loss
            # A parameter this batch does not use (None) has no second-order term either.
            present = [(i, g) for i, g in enumerate(grads) if g is not None]
            del grads
            for i, g in present:
                pieces[i].add_(g.detach())
            if position >= keep:
                rebuilt.append(k)  # its graph goes with ``present`` when the loop moves on
                continue
            if saved:  # no hook ran: nothing proves a root unsaved, so none is freed
                for _, g in present:
                    _release(g, saved)
            roots.append(([g for _, g in present], [i for i, _ in present]))
        self.cost.grad += 1
        self.cost.grad_batches += len(chosen)
        return HessianOperator(
            params=leaves,
            roots=roots,
            grad=total,
            loss=value,
            engine=self,
            passes=len(chosen),
            rebuilt=rebuilt,
        )

    def _batch_graph(
        self, params: dict[str, Tensor], k: int, weight: float
    ) -> tuple[float, tuple[Tensor | None, ...], set[int]]:
        """weight·J_k at the leaves ``params``, its gradient with the graph for products, and
        the storages that graph saved."""
        saved: set[int] = set()

        def pack(t: Tensor) -> Tensor:
            # What the gradient's own graph keeps for the products: its storage is not ours to
            # free. Detached: a node that saves its own output would otherwise hold itself (a
            # cycle through C++ that Python's collector cannot see: every checkpoint's θ and
            # graph stayed alive, measured). Products never differentiate these values.
            saved.add(t.untyped_storage().data_ptr())
            return t.detach()

        leaves = list(params.values())
        with torch.enable_grad():
            loss = self._call(params, self.batches[k]) * weight
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                grads = torch.autograd.grad(loss, leaves, create_graph=True, allow_unused=True)
        return float(loss.detach()), grads, saved

    def operator_memory(self, theta: Tensor, batch: int = 0) -> OperatorMemory:
        """What one probe batch's Hessian operator needs at ``theta`` beyond the parameter-sized
        vectors: the activations its graph keeps, and the peak of the temporaries one product
        makes (a softmax over a vocabulary, an attention map, the parameters' partial products).

        Measured, not modelled: the operator of ``batch`` is built as the analysis builds it (one
        counted gradient pass), its graph walked for its saved tensors, and one counted product
        made into a given output under :class:`~obstacle.battery.live_bytes.LiveBytes` (every
        tensor it makes, parameter-shaped ones too).
        """
        op = self.hessian_operator(theta, batch)
        roots = [g.grad_fn for kept, _ in op.roots for g in kept if g.grad_fn is not None]
        held = _saved_storages(roots)
        persistent = self._persistent_storages(theta)
        graph = sum(nbytes for ptr, nbytes in held.items() if ptr not in persistent)
        out = torch.empty_like(op.grad)
        direction = torch.ones_like(op.grad)  # the temporaries' sizes do not depend on it
        with LiveBytes() as live:
            op(direction, out=out)
        return OperatorMemory(graph_bytes=graph, product_bytes=live.peak)

    def _persistent_storages(self, theta: Tensor) -> set[int]:
        """Storages that outlive any one graph: θ, buffers, constants, the probe's batches."""
        tensors: list[Tensor] = [theta, *self.buffers.values()]
        tensors += [value for kind, value in self.inputs if kind == "fixed"]
        for batch in [*self.batches, *([self.validation] if self.validation is not None else [])]:
            tensors += [t for t in batch if isinstance(t, Tensor)]
        tensors += [t for _, t in self.graph.named_buffers()]
        tensors += [t for _, t in self.graph.named_parameters()]
        tensors += [t for t in vars(self.graph).values() if isinstance(t, Tensor)]
        return {t.untyped_storage().data_ptr() for t in tensors}

    def _passes(self, batch: int | None) -> int:
        return len(self.batches) if batch is None else 1

    def hvp_forward_over_reverse(
        self, theta: Tensor, v: Tensor, batch: int | None = None
    ) -> Tensor:
        """H·v by forward-mode over reverse-mode (a cross-check of the double-backward path)."""

        def grad_fn(t: Tensor) -> Tensor:
            return torch.func.grad(lambda u: self._objective(u, batch))(t)  # type: ignore[no-any-return]

        with warnings.catch_warnings():
            # torch.func's first use scripts a helper with the deprecated torch.jit.script.
            warnings.filterwarnings(
                "ignore", message=r".*torch\.jit\.script.*deprecated", category=DeprecationWarning
            )
            _, hv = torch.func.jvp(grad_fn, (theta.detach(),), (v,))[:2]
        self.cost.hvp += 1
        self.cost.hvp_batches += self._passes(batch)
        return hv.detach()  # type: ignore[no-any-return]


@dataclass(frozen=True)
class OperatorMemory:
    """Bytes one probe batch's Hessian operator needs beside the vectors (:meth:`LossEngine.operator_memory`)."""

    graph_bytes: int  # its gradient graph's saved activations: held while the operator lives
    product_bytes: int  # the peak of the temporaries one product makes (into a given output)


@dataclass
class HessianOperator:
    """Hessian-vector products at a fixed θ, reusing the gradient's graph (one per probe batch).

    ``op(v)`` returns H·v in a new vector; ``op(v, out=w)`` writes it into ``w`` (Lanczos passes
    the row of its basis that the next vector will occupy). Autograd accumulates each
    parameter's share in place, into the slice of the output set as that parameter's ``.grad``,
    one batch's backward at a time. Measured on a 4M-parameter MLP with 8 probe batches
    (float32): 1.6 vectors of temporaries per product, against 9.0 for one backward over all
    batches with respect to θ.
    """

    params: list[Tensor]  # the graph's leaves: views of θ shaped as the model's parameters
    roots: list[tuple[list[Tensor], list[int]]]  # per batch: its gradient tensors, their params
    grad: Tensor  # ∇J(θ), flat, without graph
    loss: float
    engine: LossEngine
    passes: int = 1  # probe batches in the graph: the unit cost of one product
    supports_out: bool = True  # ``__call__`` takes ``out=``: Lanczos' cue to pass a basis row
    rebuilt: list[int] = field(default_factory=list)  # batches whose graph each product rebuilds

    @property
    def gradient(self) -> Tensor:
        return self.grad

    @property
    def size(self) -> int:
        return int(self.grad.numel())

    def __call__(self, v: Tensor, out: Tensor | None = None) -> Tensor:
        if v.shape != self.grad.shape or v.dtype != self.grad.dtype:
            raise ParameterError(
                f"A Hessian-vector product takes a {self.grad.dtype} vector of {self.size} "
                f"entries. Got shape {tuple(v.shape)}, {v.dtype} instead."
            )
        if out is None:
            out = torch.zeros_like(self.grad)
        elif not (
            out.shape == self.grad.shape and out.dtype == self.grad.dtype and out.is_contiguous()
        ):
            raise ParameterError(
                f"The 'out' vector of a Hessian-vector product must be a contiguous "
                f"{self.grad.dtype} vector of {self.size} entries. Got shape "
                f"{tuple(out.shape)}, {out.dtype} instead."
            )
        elif _overlaps(out, v):
            raise ParameterError(
                "The 'out' vector of a Hessian-vector product must not share memory with the "
                "input vector v: it is zeroed before the product. Pass a separate vector."
            )
        else:
            out.zero_()
        numels = self.engine.numels
        directions = [
            d.view(p.shape) for d, p in zip(torch.split(v, numels), self.params, strict=True)
        ]
        for param, piece in zip(self.params, torch.split(out, numels), strict=True):
            param.grad = piece.view(param.shape)
        try:
            for kept, which in self.roots:
                if kept:
                    torch.autograd.backward(
                        kept,
                        [directions[i] for i in which],
                        inputs=[self.params[i] for i in which],
                        retain_graph=True,
                    )
            params = dict(zip(self.engine.names, self.params, strict=True))
            for k in self.rebuilt:  # one graph at a time, freed by its own backward
                _, grads, _ = self.engine._batch_graph(params, k, 1.0 / self.passes)
                present = [(i, g) for i, g in enumerate(grads) if g is not None]
                del grads
                if present:
                    torch.autograd.backward(
                        [g for _, g in present],
                        [directions[i] for i, _ in present],
                        inputs=[self.params[i] for i, _ in present],
                    )
                del present
                self.engine.cost.grad_batches += 1
        finally:
            for param in self.params:
                param.grad = None
        self.engine.cost.hvp += 1
        self.engine.cost.hvp_batches += self.passes
        if self.engine.on_product is not None:
            self.engine.on_product()
        return out


# Per autograd node type, its attributes that hold saved tensors (``_saved_self``, ...).
_SAVED_ATTRIBUTES: dict[type, tuple[str, ...]] = {}


def _saved_storages(roots: Sequence[Any]) -> dict[int, int]:
    """{storage data pointer: bytes} of every tensor the autograd graph below ``roots`` saved."""
    held: dict[int, int] = {}
    seen: set[int] = set()
    stack = list(roots)
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        kind = type(node)
        if kind not in _SAVED_ATTRIBUTES:
            _SAVED_ATTRIBUTES[kind] = tuple(
                a for a in dir(node) if a.startswith("_saved_") and not a.endswith(_SHAPE_SUFFIXES)
            )
        for attribute in _SAVED_ATTRIBUTES[kind]:
            try:
                value = getattr(node, attribute)
            except RuntimeError:  # released, or not a tensor torch can hand out
                continue
            for t in value if isinstance(value, tuple | list) else (value,):
                if isinstance(t, Tensor) and t.device.type != "meta":
                    storage = t.untyped_storage()
                    held[storage.data_ptr()] = storage.nbytes()
        stack.extend(next_node for next_node, _ in node.next_functions)
    return held


_SHAPE_SUFFIXES = ("_sym_sizes", "_sym_strides", "_sizes", "_strides", "_numel", "_dim", "_dtype")


def _release(tensor: Tensor, saved: set[int]) -> None:
    """Free ``tensor``'s storage, keeping it as a graph root, unless the graph saved that storage."""
    storage = tensor.untyped_storage()
    if storage.data_ptr() in saved:
        return
    if storage.nbytes() != tensor.numel() * tensor.element_size():
        return  # a view into something larger (or an expanded scalar): not ours to free
    storage.resize_(0)


def _overlaps(a: Tensor, b: Tensor) -> bool:
    lo_a, lo_b = a.data_ptr(), b.data_ptr()
    hi_a = lo_a + a.numel() * a.element_size()
    hi_b = lo_b + b.numel() * b.element_size()
    return lo_a < hi_b and lo_b < hi_a


def _model_buffers(program: torch.export.ExportedProgram) -> dict[str, Tensor]:
    out = {}
    for name in program.graph_signature.buffers:
        if name.startswith(_MODEL_PREFIX):
            out[name] = (
                program.state_dict[name] if name in program.state_dict else program.constants[name]
            )
    return out


def _input_plan(
    program: torch.export.ExportedProgram, device: torch.device, dtype: torch.dtype
) -> list[tuple[str, Any]]:
    """How to fill each placeholder of the exported graph, in order.

    The model's parameters come from θ, its buffers from the bound checkpoint; anything else (a
    loss module's buffers, lifted constants) is fixed, cast once to the engine's device and dtype.
    """
    from torch.export.graph_signature import InputKind

    plan: list[tuple[str, Any]] = []
    for spec in program.graph_signature.input_specs:
        target = spec.target or ""
        if spec.kind == InputKind.USER_INPUT:
            plan.append(("user", None))
        elif spec.kind == InputKind.PARAMETER and target.startswith(_MODEL_PREFIX):
            plan.append(("param", target[len(_MODEL_PREFIX) :]))
        elif spec.kind == InputKind.BUFFER and target.startswith(_MODEL_PREFIX):
            plan.append(("buffer", target))
        else:
            source = program.state_dict.get(target)
            if source is None:
                source = program.constants[target]
            tensor = source.detach().to(device)
            plan.append(("fixed", tensor.to(dtype) if tensor.is_floating_point() else tensor))
    return plan


def _to(batch: Batch, device: torch.device, dtype: torch.dtype) -> Batch:
    return tuple(t.to(device, dtype) if t.is_floating_point() else t.to(device) for t in batch)

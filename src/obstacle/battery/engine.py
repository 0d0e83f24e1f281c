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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from obstacle._validation import check_choice, check_int
from obstacle.battery.probe import _MODEL_PREFIX, Batch, Probe
from obstacle.battery.program_dtype import cast_graph, run_graph
from obstacle.errors import CheckpointError, DeviceError

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

    def _call(self, theta: Tensor, batch: Batch) -> Tensor:
        # Call the exported graph directly with every input positional: the unlifted module of
        # ``ExportedProgram.module()`` re-checks input constraints and swaps attributes on each
        # call, which cost ~3 ms per evaluation here (more than a small model's whole forward).
        views = self.unflatten(theta)
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

    def hessian_operator(self, theta: Tensor, batch: int | None = None) -> HessianOperator:
        """H(θ)·v as a reusable operator: the gradient's graph is built once and kept."""
        t = theta.detach().requires_grad_(True)
        with torch.enable_grad():
            value = self._objective(t, batch)
            (g,) = torch.autograd.grad(value, t, create_graph=True)
        self.cost.grad += 1
        self.cost.grad_batches += self._passes(batch)
        return HessianOperator(
            theta=t, grad=g, loss=float(value.detach()), engine=self, passes=self._passes(batch)
        )

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


@dataclass
class HessianOperator:
    """Hessian-vector products at a fixed θ, reusing one gradient graph."""

    theta: Tensor
    grad: Tensor
    loss: float
    engine: LossEngine
    passes: int = 1  # probe batches in the graph: the unit cost of one product

    @property
    def gradient(self) -> Tensor:
        return self.grad.detach()

    @property
    def size(self) -> int:
        return int(self.theta.numel())

    def __call__(self, v: Tensor) -> Tensor:
        (hv,) = torch.autograd.grad(self.grad, self.theta, v, retain_graph=True)
        self.engine.cost.hvp += 1
        self.engine.cost.hvp_batches += self.passes
        return hv.detach()


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

"""The step the run's optimizer would take from a gradient, rebuilt from its saved state.

Most runs use Adam or SGD with momentum, whose step is not ``-lr·g``: the battery asks "would
this step go uphill?" of the step the run really takes. :class:`OptimizerModel` reads the
optimizer's class, hyperparameters and per-parameter state from a checkpoint and replays one
``torch.optim`` update, on flat tensors aligned with θ (manifest parameter order), without
touching the saved state. The formulas follow torch's single-tensor implementations (torch 2.x):

- SGD: ``p = g + wd·θ``; with momentum ``b = μ·b + (1-τ)·p`` (``b = p`` on the first step),
  ``p = b`` or, with Nesterov, ``p + μ·b``; ``d = -lr·p``.
- Adam/AdamW: ``m = β1·m + (1-β1)·g``, ``v = β2·v + (1-β2)·g²`` at ``t = step + 1``;
  ``d = -lr/(1-β1ᵗ) · m / (sqrt(v/(1-β2ᵗ)) + eps)``; Adam adds ``wd·θ`` to g (L2), AdamW subtracts
  ``lr·wd·θ`` from the step (decoupled); AMSGrad uses ``max(v_max, v)``.
- RMSprop (centered, momentum) and Adagrad (``lr_decay``) likewise.

A checkpoint without optimizer state, or with an optimizer class not modelled here, gets plain
SGD at the checkpoint's learning rate (``source == "sgd_at_lr"``; ``note`` says why).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from numbers import Real
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from obstacle._validation import check_choice, check_float
from obstacle.battery.checkpoint import Checkpoint, OptimizerState
from obstacle.battery.engine import LossEngine
from obstacle.errors import CheckpointError, ParameterError

if TYPE_CHECKING:
    from obstacle.battery.quantities.base import CheckpointContext

__all__ = [
    "ADAPTIVE_KINDS",
    "THRESHOLD_KINDS",
    "OptimizerModel",
    "optimizer_model_for",
    "stability_threshold",
]

# Kinds whose step is preconditioned by a per-coordinate second-moment estimate: their stability
# is judged on the preconditioned sharpness λmax(P^-1/2·H·P^-1/2), not on λmax(H).
ADAPTIVE_KINDS = frozenset({"adam", "adamw", "rmsprop", "adagrad"})
# Kinds (and aliases) with a known stability threshold.
THRESHOLD_KINDS = ("sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop", "adagrad")

# The optimizer's class name as saved by ``save_checkpoint`` -> the slots its state must hold
# once it has taken a step, given that parameter's hyperparameters.
_SLOTS: dict[str, Callable[[Mapping[str, Any]], list[str]]] = {
    "SGD": lambda h: ["momentum_buffer"] if h["momentum"] != 0 else [],
    "Adam": lambda h: (
        ["step", "exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if h["amsgrad"] else [])
    ),
    "RMSprop": lambda h: (
        ["step", "square_avg"]
        + (["momentum_buffer"] if h["momentum"] > 0 else [])
        + (["grad_avg"] if h["centered"] else [])
    ),
    "Adagrad": lambda h: ["step", "sum"],
}
_SLOTS["AdamW"] = _SLOTS["Adam"]

# Hyperparameters each class must have saved (numbers), and flags that default to False.
_NUMBERS = {
    "SGD": ("lr", "momentum", "dampening", "weight_decay"),
    "Adam": ("lr", "eps", "weight_decay"),
    "AdamW": ("lr", "eps", "weight_decay"),
    "RMSprop": ("lr", "alpha", "eps", "weight_decay", "momentum"),
    "Adagrad": ("lr", "lr_decay", "eps", "weight_decay"),
}
_NEVER_MOVES = torch.finfo(torch.float32).max  # preconditioner entry of a parameter not optimized

_FLAGS = ("maximize", "nesterov", "amsgrad", "centered", "decoupled_weight_decay")


def stability_threshold(
    kind: str, hyper: Mapping[str, Any] | None = None, *, steps_taken: float = 0.0
) -> float:
    """The largest lr·λ for which the optimizer's step is stable on a quadratic of curvature λ.

    For SGD-type optimizers λ is λmax(H); for adaptive ones (Adam, AdamW, RMSprop) it is the
    preconditioned sharpness λmax(P^-1/2·H·P^-1/2) with P the optimizer's diagonal preconditioner.
    ``kind`` is the torch class name or an alias (case-insensitive); ``hyper`` its hyperparameters
    as saved with the checkpoint (PyTorch's names: momentum, dampening, nesterov, betas).

    - plain SGD: 2 (gradient descent on a quadratic diverges once lr·λ > 2).
    - heavy-ball momentum μ with dampening τ (``torch.optim.SGD``: b ← μb + (1−τ)g, θ ← θ − lr·b):
      2(1+μ)/(1−τ); 2(1+μ) without dampening (Cohen et al. 2021, ICLR, "Gradient descent on
      neural networks typically occurs at the edge of stability", Appendix on momentum).
    - Nesterov μ (``SGD(nesterov=True)``: θ ← θ − lr·(g + μb)): (2+2μ)/(1+2μ) (ibid.; the root
      z = −1 of z² − (1+μ)(1−h)z + μ(1−h) at h = lr·λ).
    - Adam / AdamW with β1: (2+2β1)/(1−β1), 38 for β1 = 0.9, on the preconditioned sharpness
      (Cohen et al. 2022, "Adaptive gradient methods at the edge of stability"): the EMA momentum
      m ← β1·m + (1−β1)g is heavy ball with μ = τ = β1 in
      torch's SGD terms. AdamW's decoupled decay only shrinks.
    - Adagrad with lr_decay d after t steps: 2(1 + t·d) on the preconditioned sharpness.
    - RMSprop with momentum μ (``torch.optim.RMSprop``: b ← μb + g/(√v+ε)): 2(1+μ) on the
      preconditioned sharpness; 2 without momentum.

    The loss engine's J excludes coupled (L2) weight decay wd; SGD then sees H + wd·I.
    """
    hyper = hyper or {}
    name = check_choice("kind", kind.lower(), THRESHOLD_KINDS)
    if name == "adagrad":
        # Adagrad's effective lr decays as lr/(1 + t·lr_decay): its bound grows with it.
        decay = check_float("lr_decay", hyper.get("lr_decay", 0.0), low=0.0)
        return 2.0 * (1.0 + steps_taken * decay)
    if name in ("sgd", "momentum", "nesterov"):
        mu = check_float("momentum", hyper.get("momentum", 0.0), low=0.0, high=1.0, closed="left")
        if name == "nesterov" or bool(hyper.get("nesterov", False)):
            return (2.0 + 2.0 * mu) / (1.0 + 2.0 * mu)
        tau = check_float(
            "dampening", hyper.get("dampening", 0.0), low=0.0, high=1.0, closed="left"
        )
        return 2.0 * (1.0 + mu) / (1.0 - tau)
    if name in ("adam", "adamw"):
        betas = hyper.get("betas", (0.9, 0.999))
        beta1 = check_float("betas[0]", betas[0], low=0.0, high=1.0, closed="left")
        return (2.0 + 2.0 * beta1) / (1.0 - beta1)
    mu = check_float("momentum", hyper.get("momentum", 0.0), low=0.0, high=1.0, closed="left")
    return 2.0 * (1.0 + mu)


@dataclass
class _Segment:
    """One parameter's slice of θ, its hyperparameters and its optimizer state (flat)."""

    name: str
    start: int
    stop: int
    hyper: dict[str, Any]
    state: dict[str, Tensor] = field(default_factory=dict)
    steps_taken: float = 0.0
    optimized: bool = True  # False: the optimizer holds no state for it (frozen or unused)


@dataclass
class OptimizerModel:
    """The update ``d`` (θ_next = θ + d) that the run's optimizer takes from a gradient g.

    ``kind`` is ``"sgd"``, ``"momentum"``, ``"adam"``, ``"adamw"``, ``"rmsprop"`` or
    ``"adagrad"``; ``source`` is ``"optimizer_state"`` or ``"sgd_at_lr"``. ``lr`` is the
    learning rate the next step uses (the optimizer's param-group lr, which a scheduler keeps
    current; the checkpoint's lr when no optimizer was saved; NaN when unknown). ``lr``,
    ``momentum`` (heavy-ball μ: SGD's momentum, RMSprop's, Adam's β1; 0 if none) and
    ``dampening`` (τ; β1 for Adam, whose m = β1·m + (1-β1)·g) are the first param group's;
    per-parameter overrides (``hyperparameters["per_parameter"]``) apply inside :meth:`step`.
    Parameters with no saved state while others have some are taken as frozen: step 0.
    """

    kind: str
    source: str
    lr: float
    momentum: float
    dampening: float
    nesterov: bool
    fresh: bool
    note: str | None
    optimizer_class: str | None
    hyperparameters: dict[str, Any]
    segments: list[_Segment]
    num_parameters: int
    dtype: torch.dtype
    device: torch.device

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint, engine: LossEngine) -> OptimizerModel:
        """Read the optimizer of ``checkpoint`` (if saved) for the parameters of ``engine``.

        Raises :class:`CheckpointError` naming the parameter and slot when the saved state is
        missing a slot, mis-shaped or not a tensor of numbers, or a hyperparameter is malformed.
        """
        opt = checkpoint.optimizer
        if opt is None:
            return cls._plain_sgd(
                checkpoint, engine, note="the checkpoint holds no optimizer state"
            )
        if opt.kind not in _SLOTS:
            return cls._plain_sgd(
                checkpoint,
                engine,
                note=f"optimizer class {opt.kind!r} is not modelled (SGD, Adam, AdamW, RMSprop, "
                "Adagrad are); its real step is unknown",
                optimizer_class=opt.kind,
            )
        return cls._from_state(opt, checkpoint, engine)

    @classmethod
    def _plain_sgd(
        cls,
        checkpoint: Checkpoint,
        engine: LossEngine,
        *,
        note: str,
        optimizer_class: str | None = None,
    ) -> OptimizerModel:
        hyper = {"lr": float(checkpoint.lr), "momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0}
        hyper.update(dict.fromkeys(_FLAGS, False))
        segments = _segments(engine, lambda name: dict(hyper))
        return cls(
            kind="sgd",
            source="sgd_at_lr",
            lr=float(checkpoint.lr),
            momentum=0.0,
            dampening=0.0,
            nesterov=False,
            fresh=True,
            note=note,
            optimizer_class=optimizer_class,
            hyperparameters=hyper,
            segments=segments,
            num_parameters=engine.num_parameters,
            dtype=engine.dtype,
            device=engine.device,
        )

    @classmethod
    def _from_state(
        cls, opt: OptimizerState, checkpoint: Checkpoint, engine: LossEngine
    ) -> OptimizerModel:
        base = {k: v for k, v in opt.hyperparameters.items() if k != "per_parameter"}
        per_parameter = opt.hyperparameters.get("per_parameter") or {}
        if not isinstance(per_parameter, Mapping) or not all(
            isinstance(v, Mapping) for v in per_parameter.values()
        ):
            raise CheckpointError(
                f"The optimizer's 'per_parameter' hyperparameters must map parameter names to "
                f"dicts of overrides; got {per_parameter!r}. Save the checkpoint again."
            )
        global_hyper = _hyperparameters(opt.kind, base, "all parameters", checkpoint.lr)
        segments = _segments(
            engine,
            lambda name: _hyperparameters(
                opt.kind,
                {**base, **dict(per_parameter.get(name, {}))},
                f"parameter {name!r}",
                checkpoint.lr,
            ),
        )
        # A fresh optimizer (saved before its first step) has no state at all: torch then starts
        # from zero moments / copies the first gradient into the momentum buffer.
        fresh = not any(opt.state.get(seg.name) for seg in segments)
        for seg in segments:
            _bind_state(seg, opt, engine, fresh=fresh)
        unoptimized = [seg.name for seg in segments if not seg.optimized]

        kind = _kind(opt.kind, segments)
        momentum, dampening = _heavy_ball(opt.kind, global_hyper)
        return cls(
            kind=kind,
            source="optimizer_state",
            lr=float(global_hyper["lr"]),
            momentum=momentum,
            dampening=dampening,
            nesterov=bool(global_hyper.get("nesterov", False)),
            fresh=fresh,
            note=(
                f"no optimizer state for {unoptimized}: taken as not optimized (frozen or "
                "unused), so their step is 0"
                if unoptimized
                else None
            ),
            optimizer_class=opt.kind,
            hyperparameters=global_hyper,
            segments=segments,
            num_parameters=engine.num_parameters,
            dtype=engine.dtype,
            device=engine.device,
        )

    # -- the step -------------------------------------------------------------------------------

    @property
    def adaptive(self) -> bool:
        return self.kind in ADAPTIVE_KINDS

    def step(self, g: Tensor, theta: Tensor) -> Tensor:
        """The update d from gradient ``g`` at ``theta`` (θ_next = θ + d); the state is unchanged.

        ``g`` may be one gradient ``(P,)`` or a stack ``(K, P)`` (one step per row, each from
        the saved state). Non-finite inputs give non-finite steps; nothing is raised.
        """
        if g.shape[-1] != self.num_parameters or theta.shape != (self.num_parameters,):
            raise ParameterError(
                f"OptimizerModel.step needs g of shape (P,) or (K, P) and theta of shape (P,) with "
                f"P={self.num_parameters}; got g {tuple(g.shape)} and theta {tuple(theta.shape)}."
            )
        g = g.to(self.device, self.dtype)
        theta = theta.detach().to(self.device, self.dtype)
        out = torch.empty_like(g)
        rule = _RULES[
            self.optimizer_class
            if self.source == "optimizer_state" and self.optimizer_class
            else "SGD"
        ]
        for seg in self.segments:
            sl = slice(seg.start, seg.stop)
            if seg.optimized:
                out[..., sl] = rule(seg, g[..., sl], theta[sl], self.fresh)
            else:
                out[..., sl] = 0
        return out

    def preconditioner(self) -> Tensor | None:
        """The flat diagonal P of the adaptive step at the checkpoint's state, else None.

        Adam/AdamW: ``P = sqrt(v̂) + eps`` with ``v̂ = v/(1-β2ᵗ)`` (``v_max`` under AMSGrad), so
        the step is ``-lr·P⁻¹·m̂``; RMSprop: ``sqrt(v) + eps`` (centered: ``sqrt(v - ḡ²) + eps``);
        Adagrad: ``sqrt(Σg²) + eps``. Parameters the optimizer does not hold take no step: their
        P is the dtype's largest finite value (P⁻¹ ≈ 0, and validators that want finite
        entries accept it). None for SGD and momentum, for an optimizer that has not taken a
        step yet (no second-moment estimate), and for non-finite state (a diverged run).
        """
        if not self.adaptive or self.fresh:
            return None
        parts = []
        for seg in self.segments:
            h, s = seg.hyper, seg.state
            if not seg.optimized:
                parts.append(
                    torch.full(
                        (seg.stop - seg.start,), _NEVER_MOVES, dtype=self.dtype, device=self.device
                    )
                )
            elif self.optimizer_class in ("Adam", "AdamW"):
                v = s["max_exp_avg_sq"] if h["amsgrad"] else s["exp_avg_sq"]
                beta2 = h["betas"][1]
                parts.append(v.sqrt() / math.sqrt(1 - beta2**seg.steps_taken) + h["eps"])
            elif self.optimizer_class == "RMSprop":
                v = s["square_avg"] - s["grad_avg"] ** 2 if h["centered"] else s["square_avg"]
                parts.append(v.sqrt() + h["eps"])
            else:  # Adagrad
                parts.append(s["sum"].sqrt() + h["eps"])
        diagonal = torch.cat(parts).to(self.device)
        return diagonal if bool(torch.isfinite(diagonal).all()) else None

    def stability_threshold(self) -> float:
        """The bound on ``lr·λmax`` (of H, or of P^-1/2·H·P^-1/2 when adaptive) for stability.

        On a quadratic with a frozen preconditioner: plain SGD 2; heavy-ball momentum μ with
        dampening τ 2(1+μ)/(1-τ); Nesterov (τ=0) 2(1+μ)/(1+2μ); Adam's EMA momentum is
        heavy-ball with effective lr lr·(1-β1), hence 2(1+β1)/(1-β1) (Cohen et al. 2022);
        Adagrad's lr decays: 2(1 + t·lr_decay). Weight decay is ignored (it shifts H by wd·I).
        """
        hyper = {
            **self.hyperparameters,
            "momentum": self.momentum,
            "dampening": self.dampening,
            "nesterov": self.nesterov,
        }
        if self.kind in ("adam", "adamw"):
            hyper["betas"] = (self.momentum, 0.999)
        steps = self.segments[0].steps_taken if self.segments else 0.0
        kind = "sgd" if self.kind == "momentum" else self.kind
        return stability_threshold(kind, hyper, steps_taken=steps)

    @property
    def unoptimized(self) -> list[str]:
        """Parameters the optimizer holds no state for (taken as frozen or unused: step 0)."""
        return [seg.name for seg in self.segments if not seg.optimized]

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary of what the model replays."""
        return {
            "kind": self.kind,
            "source": self.source,
            "optimizer_class": self.optimizer_class,
            "lr": self.lr,
            "momentum": self.momentum,
            "dampening": self.dampening,
            "nesterov": self.nesterov,
            "fresh_state": self.fresh,
            "stability_threshold": self.stability_threshold(),
            "hyperparameters": _json_ready(self.hyperparameters),
            "unoptimized_parameters": self.unoptimized,
            "note": self.note,
        }


def _json_ready(hyper: Mapping[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in hyper.items()}


def optimizer_model_for(ctx: CheckpointContext) -> OptimizerModel:
    """The model given in ``ctx.options["optimizer_model"]``, else one built from the checkpoint."""
    given = ctx.options.get("optimizer_model")
    if given is None:
        return OptimizerModel.from_checkpoint(ctx.checkpoint, ctx.engine)
    if not isinstance(given, OptimizerModel):
        raise ParameterError(
            f"The 'optimizer_model' option must be an OptimizerModel; got {type(given).__name__}. "
            "Build one with OptimizerModel.from_checkpoint(checkpoint, engine) or leave it out."
        )
    return given


# -- reading the checkpoint ----------------------------------------------------------------------


def _segments(engine: LossEngine, hyper_for: Callable[[str], dict[str, Any]]) -> list[_Segment]:
    segments, offset = [], 0
    for name, n in zip(engine.names, engine.numels, strict=True):
        segments.append(_Segment(name=name, start=offset, stop=offset + n, hyper=hyper_for(name)))
        offset += n
    return segments


def _hyperparameters(
    kind: str, raw: Mapping[str, Any], where: str, checkpoint_lr: float
) -> dict[str, Any]:
    """Checked hyperparameters for one parameter (or the whole optimizer)."""
    out: dict[str, Any] = {}
    for key in _NUMBERS[kind]:
        # a tensor lr is not saved as a scalar: fall back to the checkpoint's
        value = checkpoint_lr if key == "lr" and key not in raw else raw.get(key)
        out[key] = _number(value, key, where)
    if kind in ("Adam", "AdamW"):
        betas = raw.get("betas")
        if not (isinstance(betas, list | tuple) and len(betas) == 2):
            raise CheckpointError(
                f"The optimizer hyperparameter 'betas' of {where} must be a pair of numbers; got "
                f"{betas!r}. Save the checkpoint again with obstacle.save_checkpoint(optimizer=...)."
            )
        out["betas"] = tuple(_number(b, f"betas[{i}]", where) for i, b in enumerate(betas))
        if not all(0 <= b < 1 for b in out["betas"]):
            raise CheckpointError(
                f"The optimizer hyperparameter 'betas' of {where} must lie in [0, 1); got "
                f"{list(betas)!r}. Save the checkpoint again with obstacle.save_checkpoint(optimizer=...)."
            )
    for flag in _FLAGS:
        out[flag] = bool(raw.get(flag, False))
    if kind == "AdamW":
        out["decoupled_weight_decay"] = True
    return out


def _number(value: object, key: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise CheckpointError(
            f"The optimizer hyperparameter {key!r} of {where} must be a number; got {value!r}. "
            "Save the checkpoint again with obstacle.save_checkpoint(optimizer=...)."
        )
    return float(value)


def _bind_state(seg: _Segment, opt: OptimizerState, engine: LossEngine, *, fresh: bool) -> None:
    """Attach the flat, checked state slots this parameter's update needs."""
    needed = _SLOTS[opt.kind](seg.hyper)
    saved = opt.state.get(seg.name, {})
    numel = seg.stop - seg.start
    if fresh:
        seg.steps_taken = 0.0
        if opt.kind == "Adagrad":
            init = float(opt.hyperparameters.get("initial_accumulator_value", 0.0))
            seg.state["sum"] = torch.full((numel,), init, dtype=engine.dtype, device=engine.device)
        return
    if needed and not saved:
        # Others have state, this one none: torch never stepped it (frozen, left out of the
        # optimizer, or unused by the loss), so it does not move. A partial state is an error.
        seg.optimized = False
        return
    for slot in needed:
        tensor = saved.get(slot)
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(
                f"The {opt.kind} optimizer state lacks slot {slot!r} of parameter {seg.name!r} "
                f"(it holds {sorted(saved) or 'nothing'}), so its next step cannot be rebuilt. "
                "Save the checkpoint with the optimizer that trained the model."
            )
        if not (tensor.is_floating_point() or slot == "step"):
            raise CheckpointError(
                f"Slot {slot!r} of parameter {seg.name!r} in the optimizer state must hold floats; "
                f"got dtype {tensor.dtype}. Save the checkpoint again."
            )
        if slot == "step":
            if tensor.numel() != 1 or not math.isfinite(float(tensor)) or float(tensor) < 0:
                raise CheckpointError(
                    f"Slot 'step' of parameter {seg.name!r} in the optimizer state must be one "
                    f"non-negative count; got a tensor of shape {tuple(tensor.shape)}. Save the "
                    "checkpoint again."
                )
            seg.steps_taken = float(tensor)
            continue
        if tensor.numel() != numel:
            raise CheckpointError(
                f"Slot {slot!r} of parameter {seg.name!r} in the optimizer state has shape "
                f"{tuple(tensor.shape)}; the parameter has {numel} elements. The optimizer state "
                "belongs to another model: save it with the model the probe was captured from."
            )
        seg.state[slot] = tensor.detach().reshape(-1).to(engine.device, engine.dtype)


def _kind(cls_name: str, segments: list[_Segment]) -> str:
    if cls_name == "SGD":
        return "momentum" if any(s.hyper["momentum"] != 0 for s in segments) else "sgd"
    if cls_name in ("Adam", "AdamW"):
        return (
            "adamw"
            if segments and all(s.hyper["decoupled_weight_decay"] for s in segments)
            else "adam"
        )
    return cls_name.lower()


def _heavy_ball(cls_name: str, h: Mapping[str, Any]) -> tuple[float, float]:
    """(μ, τ): momentum and dampening of the heavy-ball form of the update."""
    if cls_name == "SGD":
        return float(h["momentum"]), float(h["dampening"])
    if cls_name in ("Adam", "AdamW"):
        beta1 = float(h["betas"][0])
        return beta1, beta1  # m = β1·m + (1-β1)·g: dampening τ = β1
    if cls_name == "RMSprop":
        return float(h["momentum"]), 0.0
    return 0.0, 0.0


# -- the update rules (one parameter's slice; g may carry a leading batch dimension) --------------


def _signed(g: Tensor, h: Mapping[str, Any]) -> Tensor:
    return -g if h["maximize"] else g


def _sgd(seg: _Segment, g: Tensor, theta: Tensor, fresh: bool) -> Tensor:
    h = seg.hyper
    lr, wd, mu = float(h["lr"]), float(h["weight_decay"]), float(h["momentum"])
    p = _signed(g, h)
    if wd != 0:
        p = p + wd * theta
    if mu != 0:
        buf = p if fresh else mu * seg.state["momentum_buffer"] + (1 - h["dampening"]) * p
        p = p + mu * buf if h["nesterov"] else buf
    return -lr * p


def _adam(seg: _Segment, g: Tensor, theta: Tensor, fresh: bool) -> Tensor:
    h, s = seg.hyper, seg.state
    lr, wd, eps = float(h["lr"]), float(h["weight_decay"]), float(h["eps"])
    beta1, beta2 = float(h["betas"][0]), float(h["betas"][1])
    decoupled = bool(h["decoupled_weight_decay"])
    grad = _signed(g, h)
    if wd != 0 and not decoupled:
        grad = grad + wd * theta
    t = seg.steps_taken + 1
    m0 = torch.zeros_like(theta) if fresh else s["exp_avg"]
    v0 = torch.zeros_like(theta) if fresh else s["exp_avg_sq"]
    m = m0 + (1 - beta1) * (grad - m0)  # torch's lerp
    v = beta2 * v0 + (1 - beta2) * grad * grad
    if h["amsgrad"]:
        v = torch.maximum(v if fresh else s["max_exp_avg_sq"], v)
    denom = v.sqrt() / math.sqrt(1 - beta2**t) + eps
    d: Tensor = -(lr / (1 - beta1**t)) * m / denom
    if wd != 0 and decoupled:
        d = d - lr * wd * theta
    return d


def _rmsprop(seg: _Segment, g: Tensor, theta: Tensor, fresh: bool) -> Tensor:
    h, s = seg.hyper, seg.state
    lr, wd, eps = float(h["lr"]), float(h["weight_decay"]), float(h["eps"])
    alpha, mu = float(h["alpha"]), float(h["momentum"])
    grad = _signed(g, h)
    if wd != 0:
        grad = grad + wd * theta
    zero = torch.zeros_like(theta)
    sq = alpha * (zero if fresh else s["square_avg"]) + (1 - alpha) * grad * grad
    if h["centered"]:
        ga0 = zero if fresh else s["grad_avg"]
        ga = ga0 + (1 - alpha) * (grad - ga0)
        avg = (sq - ga * ga).sqrt() + eps
    else:
        avg = sq.sqrt() + eps
    if mu > 0:
        return -lr * (mu * (zero if fresh else s["momentum_buffer"]) + grad / avg)
    return -lr * grad / avg


def _adagrad(seg: _Segment, g: Tensor, theta: Tensor, fresh: bool) -> Tensor:
    h, s = seg.hyper, seg.state
    lr, wd, eps = float(h["lr"]), float(h["weight_decay"]), float(h["eps"])
    grad = _signed(g, h)
    if wd != 0:
        grad = grad + wd * theta
    t = seg.steps_taken + 1
    clr = lr / (1 + (t - 1) * float(h["lr_decay"]))
    total = s["sum"] + grad * grad
    return -clr * grad / (total.sqrt() + eps)


_RULES: dict[str, Callable[[_Segment, Tensor, Tensor, bool], Tensor]] = {
    "SGD": _sgd,
    "Adam": _adam,
    "AdamW": _adam,
    "RMSprop": _rmsprop,
    "Adagrad": _adagrad,
}

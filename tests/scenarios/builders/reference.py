"""The exact references: the probe loss as a function of θ, in plain float64 torch (never the battery).

:class:`Problem` is J(θ) = the mean of the probe batches' losses, with its gradient, Hessian-vector
products, full Hessian and spectrum; :class:`Saved` is a checkpoint read back from disk, and
:func:`optimizer_step` the update its optimizer takes from a gradient, rebuilt from the saved state.
The ``*_facts`` functions turn them into the numbers that make a scenario's label right.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from scipy.sparse.linalg import LinearOperator, eigsh
from torch import Tensor, nn
from torch.func import functional_call

from obstacle.artifacts.layout import CHECKPOINT_DIR, checkpoint_filename, optimizer_filename

Batch = tuple[Tensor, ...]
LossFn = Callable[[Tensor, Tensor], Tensor]

DTYPE = torch.float64
# Models up to this many parameters get the full Hessian; λmax of larger ones comes from Lanczos
# (scipy eigsh) on exact Hessian-vector products, converged to EIGSH_TOL relative.
FULL_HESSIAN_MAX = 1200
EIGSH_TOL = 1e-8


def full_batch(batches: Sequence[Batch]) -> Batch:
    """The K batches joined into one."""
    return tuple(torch.cat(parts) for parts in zip(*batches, strict=True))


def as_float64(batch: Batch) -> Batch:
    """Floating tensors of ``batch`` in float64 (integer class labels stay as they are)."""
    return tuple(t.to(DTYPE) if t.is_floating_point() else t for t in batch)


class Problem:
    """J(θ) = mean over the probe batches of ``loss_fn(model(*inputs), target)``, θ flattened.

    Always float64: a model trained in float32 (the recurrent scenarios, as a user trains them) is
    copied to float64 with its batches, so the facts are those of the loss the battery analyses
    by default, at the parameters the checkpoints hold.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        batches: Sequence[Batch],
        validation: Batch | None = None,
    ) -> None:
        self.model = copy.deepcopy(model).to(DTYPE)
        self.loss_fn = loss_fn
        self.batches = [as_float64(b) for b in batches]
        self.validation = None if validation is None else as_float64(validation)
        # Every loss here is a mean over examples and the K batches are equally sized, so the mean of
        # the K batch losses is the loss of their concatenation: one forward pass instead of K.
        self.joined = full_batch(self.batches)
        named = list(model.named_parameters())
        self.names = [n for n, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.sizes = [p.numel() for _, p in named]
        self.size = sum(self.sizes)

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        chunks = torch.split(flat, self.sizes)
        return {n: c.view(s) for n, c, s in zip(self.names, chunks, self.shapes, strict=True)}

    def flatten(self, tensors: dict[str, Tensor]) -> Tensor:
        return torch.cat([tensors[n].reshape(-1).to(DTYPE) for n in self.names])

    def batch_loss(self, flat: Tensor, batch: Batch) -> Tensor:
        batch = as_float64(batch)
        out = functional_call(self.model, self.unflatten(flat), batch[:-1])
        return self.loss_fn(out, batch[-1])

    def loss(self, flat: Tensor) -> Tensor:
        """The full probe loss: the mean of the K batch losses."""
        return self.batch_loss(flat, self.joined)

    def loss_by_batches(self, flat: Tensor) -> float:
        """The same probe loss computed batch by batch (checks the joined shortcut)."""
        with torch.no_grad():
            return float(torch.stack([self.batch_loss(flat, b) for b in self.batches]).mean())

    def val_loss(self, flat: Tensor) -> float:
        assert self.validation is not None
        with torch.no_grad():
            return float(self.batch_loss(flat, self.validation))

    def grad(self, flat: Tensor, batch: Batch | None = None) -> Tensor:
        """∇J (or the gradient of one batch's loss)."""
        x = flat.detach().clone().requires_grad_(True)
        value = self.loss(x) if batch is None else self.batch_loss(x, batch)
        (g,) = torch.autograd.grad(value, x)
        return g.detach()

    def hvp(self, flat: Tensor, v: Tensor) -> Tensor:
        x = flat.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(self.loss(x), x, create_graph=True)
        (hv,) = torch.autograd.grad(g @ v, x)
        return hv.detach()

    def hessian(self, flat: Tensor) -> Tensor:
        h = torch.autograd.functional.hessian(self.loss, flat.detach().clone())
        assert isinstance(h, Tensor)
        return 0.5 * (h + h.T)

    def spectrum(self, flat: Tensor) -> tuple[Tensor, Tensor]:
        """All eigenvalues (ascending) and eigenvectors of the exact Hessian (small models only)."""
        assert self.size <= FULL_HESSIAN_MAX, f"{self.size} parameters: use lambda_max"
        values, vectors = torch.linalg.eigh(self.hessian(flat))
        return values, vectors

    def lambda_max(self, flat: Tensor, scale: Tensor | None = None) -> float:
        """λmax of H, or of D·H·D for a diagonal ``scale`` D, by Lanczos on exact HVPs."""
        d = torch.ones(self.size, dtype=DTYPE) if scale is None else scale
        if self.size <= FULL_HESSIAN_MAX // 4:
            return float(torch.linalg.eigvalsh(d[:, None] * self.hessian(flat) * d[None, :])[-1])

        def matvec(v: np.ndarray) -> np.ndarray:
            vec = torch.as_tensor(v, dtype=DTYPE).reshape(-1)
            return (d * self.hvp(flat, d * vec)).numpy()

        op = LinearOperator((self.size, self.size), matvec=matvec, dtype=np.float64)
        start = np.random.default_rng(0).standard_normal(self.size)
        top = eigsh(op, k=1, which="LA", tol=EIGSH_TOL, v0=start, return_eigenvectors=False)
        return float(top[0])

    def value(self, flat: Tensor) -> float:
        with torch.no_grad():
            return float(self.loss(flat))


# --------------------------------------------------------------------------------------------
# Saved checkpoints and the step their optimizer would take (read back with safetensors)
# --------------------------------------------------------------------------------------------


@dataclass
class Saved:
    """One checkpoint as written to disk: θ flattened, lr, and the optimizer's flattened state."""

    step: int
    lr: float
    train_loss: float | None
    flat: Tensor
    optimizer: str | None = None
    hyper: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Tensor] = field(default_factory=dict)


def live_saved(
    problem: Problem, model: nn.Module, optimizer: torch.optim.Optimizer, step: int
) -> Saved:
    """A :class:`Saved` of a model and optimizer still in memory (what a checkpoint now would hold)."""
    group = optimizer.param_groups[0]
    saved = Saved(
        step=step,
        lr=float(group["lr"]),
        train_loss=None,
        flat=problem.flatten(dict(model.named_parameters())).detach().clone(),
        optimizer=type(optimizer).__name__,
        hyper={k: v for k, v in group.items() if k != "params"},
    )
    params = dict(model.named_parameters())
    states = [optimizer.state.get(params[n], {}) for n in problem.names]
    for slot in {k for state in states for k in state}:
        if slot == "step":
            saved.state[slot] = torch.as_tensor(states[0][slot], dtype=DTYPE).reshape(())
        elif all(slot in state for state in states):
            saved.state[slot] = torch.cat(
                [state[slot].detach().reshape(-1).to(DTYPE) for state in states]
            )
    if saved.optimizer == "SGD" and not group.get("momentum"):
        saved.optimizer = None
    return saved


def load_saved(run_dir: Path, problem: Problem, step: int) -> Saved:
    """Read checkpoint ``step`` of ``run_dir`` (and its optimizer file) into flat tensors."""
    path = Path(run_dir) / CHECKPOINT_DIR / checkpoint_filename(step)
    with safe_open(str(path), "pt") as handle:
        meta = handle.metadata()
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    saved = Saved(
        step=int(meta["step"]),
        lr=float(meta["lr"]),
        train_loss=float(meta["train_loss"]) if "train_loss" in meta else None,
        flat=problem.flatten(tensors),
    )
    if "optimizer" in meta:
        info = json.loads(meta["optimizer"])
        saved.optimizer = str(info["class"])
        saved.hyper = dict(info["hyperparameters"])
        slots: dict[str, dict[str, Tensor]] = {}
        with safe_open(str(path.with_name(optimizer_filename(step))), "pt") as handle:
            for key in handle.keys():  # noqa: SIM118
                slot, _, name = key.partition("/")
                slots.setdefault(slot, {})[name] = handle.get_tensor(key)
        for slot, by_name in slots.items():
            if slot == "step":
                saved.state[slot] = by_name[problem.names[0]].to(DTYPE).reshape(())
            elif set(by_name) == set(problem.names):
                saved.state[slot] = problem.flatten(by_name)
    return saved


def optimizer_step(saved: Saved, g: Tensor) -> Tensor:
    """The update d the saved optimizer takes from gradient ``g`` (θ ← θ + d), as torch does it."""
    lr, hyper, state, theta = saved.lr, saved.hyper, saved.state, saved.flat
    if saved.optimizer is None:
        return -lr * g
    if saved.optimizer == "SGD":
        assert not hyper.get("nesterov") and not hyper.get("weight_decay")
        mu, damp = float(hyper.get("momentum", 0.0)), float(hyper.get("dampening", 0.0))
        if mu == 0.0:
            return -lr * g
        buf = state.get("momentum_buffer")
        new = g.clone() if buf is None else mu * buf + (1 - damp) * g
        return -lr * new
    if saved.optimizer in ("Adam", "AdamW"):
        assert not hyper.get("amsgrad")
        b1, b2 = (float(b) for b in hyper["betas"])
        eps, wd = float(hyper["eps"]), float(hyper.get("weight_decay", 0.0))
        decay = torch.zeros_like(theta)
        if saved.optimizer == "AdamW":
            decay = -lr * wd * theta
        elif wd:
            g = g + wd * theta
        t = float(state["step"]) + 1 if "step" in state else 1.0
        m = b1 * state.get("exp_avg", torch.zeros_like(g)) + (1 - b1) * g
        v = b2 * state.get("exp_avg_sq", torch.zeros_like(g)) + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
        step: Tensor = decay - lr * m_hat / (v_hat.sqrt() + eps)
        return step
    raise ValueError(f"no reference step for optimizer {saved.optimizer}")


def step_facts(problem: Problem, saved: Saved) -> dict[str, float]:
    """ΔJ on the full probe loss of the optimizer's step from ∇J and from each batch gradient."""
    with torch.no_grad():
        base = float(problem.loss(saved.flat))
    full = problem.value(saved.flat + optimizer_step(saved, problem.grad(saved.flat))) - base
    mini = [
        problem.value(saved.flat + optimizer_step(saved, problem.grad(saved.flat, b))) - base
        for b in problem.batches
    ]
    return {
        "full_step_dJ": full,
        "minibatch_uphill_fraction": float(np.mean([d > 0 for d in mini])),
        "minibatch_dJ_mean": float(np.mean(mini)),
    }


def late_step_facts(problem: Problem, late: Sequence[Saved]) -> dict[str, float]:
    """:func:`step_facts` over the late checkpoints: the worst and mean full-batch step, the mean
    minibatch step and how often it goes uphill (one checkpoint's K batches are too few to say)."""
    per = [step_facts(problem, s) for s in late]
    return {
        "late_checkpoints": float(len(late)),
        "late_full_step_dJ_max": max(p["full_step_dJ"] for p in per),
        "late_full_step_dJ_mean": float(np.mean([p["full_step_dJ"] for p in per])),
        "late_minibatch_dJ_mean": float(np.mean([p["minibatch_dJ_mean"] for p in per])),
        "late_minibatch_uphill_fraction": float(
            np.mean([p["minibatch_uphill_fraction"] for p in per])
        ),
    }


def example_gradients(problem: Problem, flat: Tensor, data: Batch) -> Tensor:
    """One row per example of ``data``: the gradient of that example's loss at θ."""
    n = len(data[-1])
    return torch.stack([problem.grad(flat, tuple(p[i : i + 1] for p in data)) for i in range(n)])


def run_batch_facts(
    problem: Problem,
    saved: Saved,
    data: Batch,
    batch_size: int,
    gen: torch.Generator,
    draws: int = 256,
) -> dict[str, float]:
    """The noise at the run's own batch size, from per-example gradients of the training set.

    ``b_noise`` is McCandlish et al.'s B_simple = tr(Σ)/|ḡ|² (Σ the per-example gradient
    covariance): above the run's batch size, a minibatch gradient is mostly noise. The saved
    optimizer's step from minibatches of that size (every one when there are at most ``draws``,
    else ``draws`` drawn from ``gen``) is taken and its ΔJ on the probe loss measured.
    """
    grads = example_gradients(problem, saved.flat, data)
    mean = grads.mean(dim=0)
    trace = float(((grads - mean) ** 2).sum() / (len(grads) - 1))
    n = len(grads)
    if math.comb(n, batch_size) <= draws:
        subsets = [list(c) for c in itertools.combinations(range(n), batch_size)]
    else:
        subsets = [torch.randperm(n, generator=gen)[:batch_size].tolist() for _ in range(draws)]
    base = problem.value(saved.flat)
    mini = [
        problem.value(saved.flat + optimizer_step(saved, grads[idx].mean(dim=0))) - base
        for idx in subsets
    ]
    return {
        "b_noise": trace / float(mean @ mean),
        "run_batch_uphill_fraction": float(np.mean([d > 0 for d in mini])),
        "run_batch_dJ_mean": float(np.mean(mini)),
    }


def step_reconstruction_error(problem: Problem, before: Saved, after: Saved) -> float:
    """‖θ_{t+1} − θ_t − d‖/‖d‖ for the rebuilt step d of a full-batch run's consecutive pair.

    Small means :func:`optimizer_step` (from the saved state) is the step torch really took.
    """
    d = optimizer_step(before, problem.grad(before.flat))
    return float((after.flat - before.flat - d).norm() / d.norm())


# --------------------------------------------------------------------------------------------
# Training: the probe, the loop, checkpoints and the log
# --------------------------------------------------------------------------------------------


def nearest(steps: Sequence[int], target: float) -> int:
    """The index of the step closest to ``target``."""
    return int(np.argmin([abs(s - target) for s in steps]))


def _finite_or_inf(value: float) -> float:
    return value if math.isfinite(value) else math.inf


def trajectory(
    problem: Problem, run_dir: Path, steps: Sequence[int]
) -> tuple[list[Saved], dict[str, float]]:
    """Every checkpoint read back, with its probe loss, validation loss and parameter norm."""
    saved = [load_saved(run_dir, problem, s) for s in steps]
    losses = [problem.value(s.flat) for s in saved]
    mid = nearest(steps, steps[-1] / 2)
    finite = [
        bool(torch.isfinite(s.flat).all()) and math.isfinite(v)
        for s, v in zip(saved, losses, strict=True)
    ]
    facts = {
        "checkpoints": float(len(saved)),
        "loss_first": losses[0],
        "loss_mid": losses[mid],
        "loss_last": losses[-1],
        "final_pair_dJ": losses[-1] - losses[-2],
        "decreasing_pairs": float(np.mean([b < a for a, b in itertools.pairwise(losses)])),
        "loss_peak_over_first": max(_finite_or_inf(v) for v in losses) / losses[0],
        "param_norm_first": float(saved[0].flat.norm()),
        "param_norm_mid": float(saved[mid].flat.norm()),
        "param_norm_last": float(saved[-1].flat.norm()),
        "finite_last": float(finite[-1]),
        "loss_last_by_batches": problem.loss_by_batches(saved[-1].flat),
        "first_nonfinite_step": float(
            next((s for s, f in zip(steps, finite, strict=True) if not f), -1)
        ),
    }
    if problem.validation is not None:
        val = [problem.val_loss(s.flat) for s in saved]
        facts |= {
            "val_first": val[0],
            "val_mid": val[mid],
            "val_last": val[-1],
            "val_min": min(val),
        }
    return saved, facts


def logged_losses(run_dir: Path) -> list[float]:
    """The minibatch losses of ``train_log.jsonl``, in step order."""
    lines = (Path(run_dir) / "train_log.jsonl").read_text(encoding="utf-8").splitlines()
    return [float(json.loads(line)["loss"]) for line in lines]


def uphill_rate(losses: Sequence[float], start: int) -> float:
    """Fraction of steps t ≥ start whose next loss is higher (real uphill steps)."""
    return float(np.mean([b > a for a, b in itertools.pairwise(losses[start:])]))


def hessian_facts(problem: Problem, flat: Tensor) -> dict[str, float]:
    """λmin, λmax of the exact Hessian, ‖∇J‖ and J at θ."""
    values, _ = problem.spectrum(flat)
    return {
        "lambda_min": float(values[0]),
        "lambda_max": float(values[-1]),
        "grad_norm": float(problem.grad(flat).norm()),
    }


def saddle_facts(problem: Problem, flat: Tensor, alpha: float) -> dict[str, float]:
    """Hessian extremes plus the loss change J(θ ± α·v) − J(θ) along the λmin eigenvector v."""
    values, vectors = problem.spectrum(flat)
    v = vectors[:, 0]
    base = problem.value(flat)
    plus, minus = problem.value(flat + alpha * v), problem.value(flat - alpha * v)
    return {
        "lambda_min": float(values[0]),
        "lambda_max": float(values[-1]),
        "negative_eigenvalues": float((values < -1e-3 * values.abs().max()).sum()),
        "grad_norm": float(problem.grad(flat).norm()),
        "escape_dJ": min(plus, minus) - base,
        "escape_second_difference": plus + minus - 2 * base,
        "escape_alpha": alpha,
    }


def sharpness_facts(problem: Problem, saved: Saved) -> dict[str, float]:
    """The step's stability number and its threshold for the saved optimizer.

    Plain GD: lr·λmax against 2. Heavy-ball momentum μ: lr·λmax against 2(1+μ). Adam: the
    preconditioned lr·λmax(P^-1/2·H·P^-1/2), P = (1−β1^t)(sqrt(v̂)+eps), against
    (2+2β1)/(1−β1) (Cohen et al. 2022).
    """
    if saved.optimizer in ("Adam", "AdamW"):
        b1 = float(saved.hyper["betas"][0])
        scale = adam_preconditioner(saved).rsqrt()
        return {
            "sharpness": saved.lr * problem.lambda_max(saved.flat, scale),
            "sharpness_threshold": (2 + 2 * b1) / (1 - b1),
        }
    mu = float(saved.hyper.get("momentum", 0.0)) if saved.optimizer == "SGD" else 0.0
    return {
        "sharpness": saved.lr * problem.lambda_max(saved.flat),
        "sharpness_threshold": 2 * (1 + mu),
    }


def noise_facts(problem: Problem, flat: Tensor) -> dict[str, float]:
    """tr(Σ)/|ḡ|² of the K probe-batch gradients: how much noise each minibatch gradient carries."""
    grads = torch.stack([problem.grad(flat, b) for b in problem.batches])
    mean = grads.mean(dim=0)
    trace = float(((grads - mean) ** 2).sum(dim=1).sum() / (len(grads) - 1))
    return {"noise_to_signal": trace / float(mean @ mean)}


def accuracy(problem: Problem, flat: Tensor, batch: Batch) -> float:
    with torch.no_grad():
        out = functional_call(problem.model, problem.unflatten(flat), batch[:-1])
    return float((out.argmax(dim=1) == batch[-1]).double().mean())


def adam_preconditioner(saved: Saved) -> Tensor:
    """Adam's diagonal P = (1 − β1^t)(sqrt(v̂) + eps): its step is θ ← θ − lr·P⁻¹·m."""
    b1, b2 = (float(b) for b in saved.hyper["betas"])
    t = float(saved.state["step"])
    v_hat = saved.state["exp_avg_sq"] / (1 - b2**t)
    p: Tensor = (1 - b1**t) * (v_hat.sqrt() + float(saved.hyper["eps"]))
    return p


# --------------------------------------------------------------------------------------------


def plateau_span(
    curve: Sequence[float], reference_step: int, *, within: float = 0.01
) -> tuple[int, int | None]:
    """The plateau of the exact loss curve through ``reference_step``: its first step (from which
    the loss stays within ``within`` of its level at ``reference_step``) and the step it ends (the
    first one after where the loss is more than ``within`` below that level; None if never)."""
    level = curve[reference_step]
    start = reference_step
    while start > 0 and abs(curve[start - 1] - level) <= within * level:
        start -= 1
    after = range(reference_step, len(curve))
    end = next((t for t in after if curve[t] < (1 - within) * level), None)
    return start, end

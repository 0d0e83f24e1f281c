"""Small real training runs, each with one known optimization obstacle (the verdict's scenario suite).

Every ``build_<label>_<arch>(run_dir)`` trains a model from scratch (seeded, float64, one CPU thread,
well under 3 s), writes the probe (K minibatches of its training data, a validation batch where it
matters), 6–12 checkpoints (with the optimizer's state when it has one, and a consecutive pair
t, t+1 at the end) and ``train_log.jsonl``, then computes with plain torch — never the battery —
the exact facts that make its label right, and returns them in a :class:`ScenarioInfo`.
``SCENARIOS`` maps ``"<label>/<arch>"`` to its builder. ``test_builders_exact.py`` asserts the facts.
"""

from __future__ import annotations

import copy
import functools
import itertools
import json
import math
import time
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
from torch.nn import functional as F

import obstacle
from obstacle.artifacts.layout import CHECKPOINT_DIR, checkpoint_filename, optimizer_filename
from obstacle.battery.checkpoint import append_train_log
from obstacle.labels import LABELS

Batch = tuple[Tensor, ...]
LossFn = Callable[[Tensor, Tensor], Tensor]
Builder = Callable[[Path], "ScenarioInfo"]


DTYPE = torch.float64
# Models up to this many parameters get the full Hessian; λmax of larger ones comes from Lanczos
# (scipy eigsh) on exact Hessian-vector products, converged to EIGSH_TOL relative.
FULL_HESSIAN_MAX = 1200
EIGSH_TOL = 1e-8


@dataclass
class ScenarioInfo:
    """What a scenario is, why its label is right, and the exact facts that show it."""

    name: str
    label: str
    architecture: str
    optimizer: str
    description: str
    target_loss: float | None
    lr: float
    steps: list[int]
    facts: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    cpu_seconds: float = 0.0


# --------------------------------------------------------------------------------------------
# The probe loss as a function of the flat parameter vector (plain torch, the reference)
# --------------------------------------------------------------------------------------------


class Problem:
    """J(θ) = mean over the probe batches of ``loss_fn(model(*inputs), target)``, θ flattened."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        batches: Sequence[Batch],
        validation: Batch | None = None,
    ) -> None:
        self.model = model
        self.loss_fn = loss_fn
        self.batches = list(batches)
        self.validation = validation
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


def step_reconstruction_error(problem: Problem, before: Saved, after: Saved) -> float:
    """‖θ_{t+1} − θ_t − d‖/‖d‖ for the rebuilt step d of a full-batch run's consecutive pair.

    Small means :func:`optimizer_step` (from the saved state) is the step torch really took.
    """
    d = optimizer_step(before, problem.grad(before.flat))
    return float((after.flat - before.flat - d).norm() / d.norm())


# --------------------------------------------------------------------------------------------
# Training: the probe, the loop, checkpoints and the log
# --------------------------------------------------------------------------------------------


def schedule(steps: int, count: int = 8) -> list[int]:
    """``count`` checkpoint steps spread over [0, steps], ending with the pair steps−1, steps."""
    spread = np.unique(np.linspace(0, steps - 1, count - 1).round().astype(int))
    return sorted({int(s) for s in spread} | {steps - 1, steps})


def train(
    run_dir: Path,
    model: nn.Module,
    loss_fn: LossFn,
    sample: Callable[[int], Batch],
    optimizer: torch.optim.Optimizer,
    *,
    steps: int,
    save_at: Sequence[int],
    lr: float,
    log_every: int = 1,
) -> list[float]:
    """Take ``steps`` optimizer steps on ``sample(t)``; checkpoint θ_t (and the optimizer) at ``save_at``.

    The checkpoint of step t holds the parameters after t updates; its train loss is the loss of
    the minibatch about to be used at step t. Non-finite losses are kept (divergence is evidence).
    """
    wanted = set(save_at)
    has_state = bool(optimizer.defaults.get("momentum")) or "betas" in optimizer.defaults
    losses: list[float] = []
    for t in range(steps + 1):
        batch = sample(t)
        loss = loss_fn(model(*batch[:-1]), batch[-1])
        value = loss.detach().item()
        losses.append(value)
        if t in wanted:
            obstacle.save_checkpoint(
                run_dir,
                model,
                step=t,
                lr=lr,
                train_loss=value,
                optimizer=optimizer if has_state else None,
            )
        if t % log_every == 0:
            append_train_log(run_dir, step=t, lr=lr, loss=value)
        if t < steps:
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return losses


def capture(
    run_dir: Path,
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Batch],
    validation: Batch | None = None,
) -> Problem:
    """Save the probe and return the same loss as a :class:`Problem` for the exact facts."""
    obstacle.Probe.capture(model, loss_fn, list(batches), validation=validation).save(run_dir)
    return Problem(model, loss_fn, batches, validation)


def split(x: Tensor, y: Tensor, k: int) -> list[Batch]:
    """Cut (x, y) into k equal batches in order."""
    b = x.shape[0] // k
    return [(x[i * b : (i + 1) * b], y[i * b : (i + 1) * b]) for i in range(k)]


def full_batch(batches: Sequence[Batch]) -> Batch:
    """The K batches joined into one."""
    return tuple(torch.cat(parts) for parts in zip(*batches, strict=True))


def random_minibatches(data: Batch, size: int, seed: int) -> Callable[[int], Batch]:
    """``sample(t)``: a minibatch of ``size`` examples drawn without replacement, seeded."""
    gen = torch.Generator().manual_seed(seed)
    n = data[0].shape[0]

    def sample(_t: int) -> Batch:
        idx = torch.randperm(n, generator=gen)[:size]
        return tuple(part[idx] for part in data)

    return sample


def _seeded(seed: int) -> torch.Generator:
    """Seed torch's global RNG (model initialization) and return a generator for the data."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------------------------
# Facts read back from the saved run
# --------------------------------------------------------------------------------------------


def _nearest(steps: Sequence[int], target: float) -> int:
    return int(np.argmin([abs(s - target) for s in steps]))


def _finite_or_inf(value: float) -> float:
    return value if math.isfinite(value) else math.inf


def trajectory(
    problem: Problem, run_dir: Path, steps: Sequence[int]
) -> tuple[list[Saved], dict[str, float]]:
    """Every checkpoint read back, with its probe loss, validation loss and parameter norm."""
    saved = [load_saved(run_dir, problem, s) for s in steps]
    losses = [problem.value(s.flat) for s in saved]
    mid = _nearest(steps, steps[-1] / 2)
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
# The registry
# --------------------------------------------------------------------------------------------

SCENARIOS: dict[str, Builder] = {}


def scenario(label: str, architecture: str) -> Callable[[Builder], Builder]:
    """Register a builder as ``"<label>/<architecture>"``; it runs on one thread, RNG forked."""
    assert label in LABELS, label

    def register(fn: Builder) -> Builder:
        @functools.wraps(fn)
        def build(run_dir: Path) -> ScenarioInfo:
            run_dir = Path(run_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            threads = torch.get_num_threads()
            start, cpu = time.perf_counter(), time.process_time()
            with torch.random.fork_rng(devices=[]):
                torch.set_num_threads(1)
                try:
                    info = fn(run_dir)
                finally:
                    torch.set_num_threads(threads)
            info.seconds = time.perf_counter() - start
            info.cpu_seconds = time.process_time() - cpu
            assert (info.label, info.architecture) == (label, architecture), info.name
            return info

        name = f"{label}/{architecture}"
        assert name not in SCENARIOS, name
        SCENARIOS[name] = build
        return build

    return register


def _info(label: str, architecture: str, **kwargs: Any) -> ScenarioInfo:
    return ScenarioInfo(
        name=f"{label}/{architecture}", label=label, architecture=architecture, **kwargs
    )


def mlp(*sizes: int, act: type[nn.Module] = nn.Tanh) -> nn.Sequential:
    """A float64 MLP with ``act`` between its linear layers."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        if i:
            layers.append(act())
        layers.append(nn.Linear(a, b))
    return nn.Sequential(*layers).double()


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[Tensor, Tensor]:
    """sklearn's bundled 8×8 digits (no download): images scaled to [0, 1], labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return torch.tensor(data.images / 16.0, dtype=DTYPE), torch.tensor(data.target)


def _flat_params(model: nn.Module) -> Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _full_batch_sampler(data: Batch) -> Callable[[int], Batch]:
    return lambda _t: data


def bce_logits(out: Tensor, target: Tensor) -> Tensor:
    """Binary logistic loss on a (B, 1) logit and (B,) labels in {0, 1}."""
    return F.binary_cross_entropy_with_logits(out.squeeze(1), target)


# --------------------------------------------------------------------------------------------
# healthy: sensible training that makes steady progress, or has converged with no target
# --------------------------------------------------------------------------------------------


def _digits_split(
    gen: torch.Generator, *, images: bool, train: int, val: int
) -> tuple[Batch, Batch]:
    x, y = _digits()
    x = x.unsqueeze(1) if images else x.reshape(len(x), -1)
    order = torch.randperm(len(x), generator=gen)
    tr, va = order[:train], order[train : train + val]
    return (x[tr], y[tr]), (x[va], y[va])


def _healthy_digits(
    run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, *, lr: float, images: bool
) -> tuple[list[int], dict[str, float]]:
    """Train on 1,400 digits in minibatches of 32; probe: 4 of those batches, 256 held out."""
    gen = torch.Generator().manual_seed(1)
    train_set, val = _digits_split(gen, images=images, train=1400, val=256)
    batches = [
        (train_set[0][i * 32 : (i + 1) * 32], train_set[1][i * 32 : (i + 1) * 32]) for i in range(4)
    ]
    problem = capture(run_dir, model, F.cross_entropy, batches, validation=val)
    steps = 240
    save_at = schedule(steps, 8)
    train(
        run_dir,
        model,
        F.cross_entropy,
        random_minibatches(train_set, 32, seed=2),
        optimizer,
        steps=steps,
        save_at=save_at,
        lr=lr,
    )
    saved, facts = trajectory(problem, run_dir, save_at)
    last = saved[-1]
    facts |= step_facts(problem, last)
    facts |= sharpness_facts(problem, last)
    facts["train_accuracy"] = accuracy(problem, last.flat, train_set)
    facts["val_accuracy"] = accuracy(problem, last.flat, val)
    return save_at, facts


@scenario("healthy", "mlp_digits")
def build_healthy_mlp_digits(run_dir: Path) -> ScenarioInfo:
    """Healthy: a tanh MLP on sklearn digits, SGD with momentum, loss and validation still falling."""
    torch.manual_seed(0)
    model = mlp(64, 32, 10)
    lr = 0.05
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    steps, facts = _healthy_digits(run_dir, model, opt, lr=lr, images=False)
    return _info(
        "healthy",
        "mlp_digits",
        optimizer="SGD(momentum=0.9)",
        description="sensible lr on digits: train and validation loss fall together, steps downhill, "
        "lr·λmax far below 2(1+μ), >90% train accuracy; nothing holds it back",
        target_loss=None,
        lr=lr,
        steps=steps,
        facts=facts,
    )


@scenario("healthy", "cnn_digits")
def build_healthy_cnn_digits(run_dir: Path) -> ScenarioInfo:
    """Healthy: a small CNN on 8×8 digits trained with Adam, steady progress."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(72, 10)
    ).double()
    lr = 0.01
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps, facts = _healthy_digits(run_dir, model, opt, lr=lr, images=True)
    return _info(
        "healthy",
        "cnn_digits",
        optimizer="Adam(lr=0.01)",
        description="Adam at a sensible lr on digits: train and validation loss fall together, the "
        "Adam step goes downhill, preconditioned sharpness below its threshold, >90% accuracy",
        target_loss=None,
        lr=lr,
        steps=steps,
        facts=facts,
    )


@scenario("healthy", "linear_regression")
def build_healthy_linear_regression(run_dir: Path) -> ScenarioInfo:
    """Healthy: least squares converged to its unique minimum with full-batch GD; no target given.

    A converged minimum with no target loss is success, not a local minimum ("converged to a
    minimum at loss L"); minibatch gradients are noisy there but nothing is left to gain.
    """
    gen = _seeded(0)
    x = torch.randn(64, 5, generator=gen, dtype=DTYPE)
    w = torch.randn(5, 1, generator=gen, dtype=DTYPE)
    y = x @ w + 0.3 * torch.randn(64, 1, generator=gen, dtype=DTYPE)
    model = nn.Linear(5, 1).double()
    batches = split(x, y, 4)
    problem = capture(run_dir, model, F.mse_loss, batches)
    lr, steps = 0.3, 150
    save_at = schedule(steps, 8)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    train(
        run_dir,
        model,
        F.mse_loss,
        _full_batch_sampler((x, y)),
        opt,
        steps=steps,
        save_at=save_at,
        lr=lr,
    )
    saved, facts = trajectory(problem, run_dir, save_at)
    facts |= hessian_facts(problem, saved[-1].flat)
    design = torch.cat([x, torch.ones(64, 1, dtype=DTYPE)], dim=1)
    optimum = torch.linalg.lstsq(design, y).solution
    facts["least_squares_loss"] = float(F.mse_loss(design @ optimum, y))
    return _info(
        "healthy",
        "linear_regression",
        optimizer="SGD (full-batch GD)",
        description="convex least squares, GD converged: ‖∇J‖≈0, Hessian positive definite, loss equals "
        "the closed-form optimum; a minimum with no target is a success",
        target_loss=None,
        lr=lr,
        steps=save_at,
        facts=facts,
    )


# --------------------------------------------------------------------------------------------
# local_minimum: converged (‖∇J‖≈0, Hessian ≥ 0) above the target, with a better minimum elsewhere
# --------------------------------------------------------------------------------------------

DOUBLE_WELL_TILT = 0.3


class DoubleWell(nn.Module):
    """Two parameters (a, b) scaled by the inputs; with :func:`double_well_loss` the loss is
    ≈ (a² − 1)² + 0.3·a + ½b² + ½: an asymmetric double well in a, a bowl in b."""

    def __init__(self, a: float, b: float) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor([a], dtype=DTYPE))
        self.b = nn.Parameter(torch.tensor([b], dtype=DTYPE))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.cat([self.a, self.b])


def double_well_loss(out: Tensor, target: Tensor) -> Tensor:
    """mean of (u² − t)² + tilt·u + ½v² + ½ over the batch, (u, v) the model's two outputs."""
    u, v = out[:, 0], out[:, 1]
    return ((u**2 - target) ** 2 + DOUBLE_WELL_TILT * u + 0.5 * v**2 + 0.5).mean()


@scenario("local_minimum", "double_well")
def build_local_minimum_double_well(run_dir: Path) -> ScenarioInfo:
    """Local minimum: GD started in the basin of the worse well of an asymmetric double well."""
    gen = _seeded(0)
    x = 1 + 0.05 * torch.randn(32, 2, generator=gen, dtype=DTYPE)
    t = torch.ones(32, dtype=DTYPE)
    batches = split(x, t, 4)
    model = DoubleWell(1.6, 1.0)
    problem = capture(run_dir, model, double_well_loss, batches)
    lr, steps = 0.1, 300
    save_at = schedule(steps, 8)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    train(
        run_dir,
        model,
        double_well_loss,
        _full_batch_sampler((x, t)),
        opt,
        steps=steps,
        save_at=save_at,
        lr=lr,
    )
    saved, facts = trajectory(problem, run_dir, save_at)
    facts |= hessian_facts(problem, saved[-1].flat)
    # The other well, reached by the same GD from a = −1.6.
    other = DoubleWell(-1.6, 1.0)
    other_opt = torch.optim.SGD(other.parameters(), lr=lr)
    for _ in range(steps):
        other_opt.zero_grad()
        double_well_loss(other(x), t).backward()
        other_opt.step()
    facts["other_minimum_loss"] = problem.value(_flat_params(other))
    facts["other_minimum_grad_norm"] = float(problem.grad(_flat_params(other)).norm())
    target = 0.5
    return _info(
        "local_minimum",
        "double_well",
        optimizer="SGD (full-batch GD)",
        description="asymmetric double well started in the worse basin: GD converged (‖∇J‖≈0, both "
        "Hessian eigenvalues > 0) at loss ≈0.80 while the other well reaches ≈0.21 < target 0.5",
        target_loss=target,
        lr=lr,
        steps=save_at,
        facts=facts,
    )


class Sine(nn.Module):
    """sin as an activation (a one-unit periodic network: fitting a frequency is multimodal)."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(x)


def _sine_unit(w: float) -> nn.Sequential:
    """x ↦ 0.5·sin(w·x), as Linear → Sine → Linear with all four parameters trainable."""
    inner, outer = nn.Linear(1, 1), nn.Linear(1, 1)
    with torch.no_grad():
        inner.weight.fill_(w)
        inner.bias.fill_(0.0)
        outer.weight.fill_(0.5)
        outer.bias.fill_(0.0)
    return nn.Sequential(inner, Sine(), outer).double()


@scenario("local_minimum", "sine_unit")
def build_local_minimum_sine_unit(run_dir: Path) -> ScenarioInfo:
    """Local minimum: a one-unit sine network started at the wrong frequency converges to a
    spurious minimum (the classic multimodal frequency fit); from w = 2 it fits the data."""
    gen = _seeded(0)
    x = torch.linspace(-3, 3, 64, dtype=DTYPE).reshape(-1, 1)
    y = torch.sin(2.5 * x + 0.3) + 0.05 * torch.randn(64, 1, generator=gen, dtype=DTYPE)
    order = torch.randperm(64, generator=gen)
    x, y = x[order], y[order]
    batches = split(x, y, 4)
    model = _sine_unit(0.8)
    problem = capture(run_dir, model, F.mse_loss, batches)
    lr, steps = 0.08, 1200
    save_at = schedule(steps, 8)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    train(
        run_dir,
        model,
        F.mse_loss,
        _full_batch_sampler((x, y)),
        opt,
        steps=steps,
        save_at=save_at,
        lr=lr,
    )
    saved, facts = trajectory(problem, run_dir, save_at)
    facts |= hessian_facts(problem, saved[-1].flat)
    other = _sine_unit(2.0)
    other_opt = torch.optim.SGD(other.parameters(), lr=lr, momentum=0.9)
    for _ in range(steps):
        other_opt.zero_grad()
        F.mse_loss(other(x), y).backward()
        other_opt.step()
    facts["other_minimum_loss"] = problem.value(_flat_params(other))
    facts["other_minimum_grad_norm"] = float(problem.grad(_flat_params(other)).norm())
    target = 0.1
    return _info(
        "local_minimum",
        "sine_unit",
        optimizer="SGD(momentum=0.9), full batch",
        description="one sine unit fitting sin(2.5x+0.3) from frequency 0.8: converged to a spurious "
        "minimum (‖∇J‖≈0, Hessian positive definite) at loss ≈0.49 > target 0.1, while the same run "
        "from frequency 2.0 reaches ≈0.003",
        target_loss=target,
        lr=lr,
        steps=save_at,
        facts=facts,
    )


# --------------------------------------------------------------------------------------------
# saddle_point: a plateau at a critical point with a clearly negative Hessian eigenvalue
# --------------------------------------------------------------------------------------------


def _continue(
    model: nn.Module, loss_fn: LossFn, data: Batch, *, lr: float, steps: int
) -> nn.Module:
    """A copy of ``model`` trained ``steps`` more full-batch GD steps (what staying the course gives)."""
    clone = copy.deepcopy(model)
    opt = torch.optim.SGD(clone.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(clone(*data[:-1]), data[-1]).backward()
        opt.step()
    return clone


@scenario("saddle_point", "deep_linear")
def build_saddle_point_deep_linear(run_dir: Path) -> ScenarioInfo:
    """Saddle: a three-layer linear network W3·W2·W1 from small initialization (Saxe et al. 2014).

    The origin is a saddle of deep linear regression; from scale 0.01 full-batch GD spends its
    whole run on the plateau there, far above the least-squares loss the network can represent.
    """
    gen = _seeded(0)
    x = torch.randn(32, 4, generator=gen, dtype=DTYPE)
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=gen, dtype=DTYPE))
    teacher = q @ torch.diag(torch.tensor([3.0, 2.0, 1.0, 0.5], dtype=DTYPE))
    y = x @ teacher.T + 0.05 * torch.randn(32, 4, generator=gen, dtype=DTYPE)
    model = nn.Sequential(
        nn.Linear(4, 8, bias=False), nn.Linear(8, 8, bias=False), nn.Linear(8, 4, bias=False)
    ).double()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.01, generator=gen)
    batches = split(x, y, 4)
    problem = capture(run_dir, model, F.mse_loss, batches)
    lr, steps = 0.05, 200
    save_at = schedule(steps, 8)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    train(
        run_dir,
        model,
        F.mse_loss,
        _full_batch_sampler((x, y)),
        opt,
        steps=steps,
        save_at=save_at,
        lr=lr,
    )
    saved, facts = trajectory(problem, run_dir, save_at)
    facts |= saddle_facts(problem, saved[-1].flat, alpha=0.1)
    solution = torch.linalg.lstsq(x, y).solution
    facts["least_squares_loss"] = float(F.mse_loss(x @ solution, y))
    facts["plateau_change_last_half"] = (
        abs(facts["loss_last"] - facts["loss_mid"]) / facts["loss_mid"]
    )
    return _info(
        "saddle_point",
        "deep_linear",
        optimizer="SGD (full-batch GD)",
        description="3-layer linear net from scale 0.01: loss flat at ≈3.77 (least squares: 0.002), "
        "‖∇J‖ small, λmin ≈ −0.15 < 0 with |λmin| > λmax, and the loss falls along its eigenvector",
        target_loss=None,
        lr=lr,
        steps=save_at,
        facts=facts,
    )


@scenario("saddle_point", "tanh_mlp")
def build_saddle_point_tanh_mlp(run_dir: Path) -> ScenarioInfo:
    """Saddle: a tanh MLP from tiny initialization (1e-5). The output bias fits the mean at once;
    the weights sit at the origin, a saddle whose negative curvature the signal has yet to grow."""
    gen = _seeded(0)
    x = torch.randn(64, 4, generator=gen, dtype=DTYPE)
    teacher = mlp(4, 3, 2)
    with torch.no_grad():
        for p in teacher.parameters():
            p.copy_(1.5 * torch.randn(p.shape, generator=gen, dtype=DTYPE))
        y = 0.4 * teacher(x) + torch.tensor([1.0, -0.5], dtype=DTYPE)
    model = mlp(4, 8, 2)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 1e-5, generator=gen)
    batches = split(x, y, 4)
    problem = capture(run_dir, model, F.mse_loss, batches)
    lr, steps = 0.1, 100
    save_at = schedule(steps, 8)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    train(
        run_dir,
        model,
        F.mse_loss,
        _full_batch_sampler((x, y)),
        opt,
        steps=steps,
        save_at=save_at,
        lr=lr,
    )
    saved, facts = trajectory(problem, run_dir, save_at)
    facts |= saddle_facts(problem, saved[-1].flat, alpha=0.1)
    facts["plateau_change_last_half"] = (
        abs(facts["loss_last"] - facts["loss_mid"]) / facts["loss_mid"]
    )
    escaped = _continue(model, F.mse_loss, (x, y), lr=lr, steps=400)
    facts["loss_after_400_more_steps"] = problem.value(_flat_params(escaped))
    return _info(
        "saddle_point",
        "tanh_mlp",
        optimizer="SGD (full-batch GD)",
        description="tanh MLP from init 1e-5: after the bias fits the mean the loss is flat at ≈0.44, "
        "‖∇J‖≈0.01, λmin ≈ −0.69 against λmax ≈ 1, the loss falls along its eigenvector, and 400 "
        "more steps of the same run escape far below the plateau",
        target_loss=None,
        lr=lr,
        steps=save_at,
        facts=facts,
    )


# --------------------------------------------------------------------------------------------
# poor_conditioning: the step overshoots the sharpest direction (lr·λmax at or above its
# stability threshold): full-batch steps go uphill and the loss oscillates without diverging
# --------------------------------------------------------------------------------------------


# Edge-of-stability dynamics are chaotic: these run lengths end each run on a step that goes
# uphill with the sharpness above its threshold (found by scanning steps 360–420; about half of
# the late steps qualify). test_builders_exact.py re-verifies both facts.
STEPS_RELU = 382
STEPS_MOMENTUM = 384
STEPS_ADAM = 395


def _wave_1d() -> Batch:
    x = torch.linspace(-2, 2, 64, dtype=DTYPE).reshape(-1, 1)
    return x, torch.sin(2 * x) + 0.3 * x


def _wave_2d(gen: torch.Generator) -> Batch:
    x = 4 * torch.rand(64, 2, generator=gen, dtype=DTYPE) - 2
    return x, torch.sin(2 * x[:, :1]) * torch.cos(x[:, 1:])


def _conditioning_run(
    run_dir: Path,
    model: nn.Module,
    data: Batch,
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
    *,
    lr: float,
    steps: int,
    stable_lr: float,
) -> tuple[list[int], dict[str, float]]:
    """Full-batch training at too large an lr; facts at the end, and the same run at ``stable_lr``."""
    gen = torch.Generator().manual_seed(3)
    order = torch.randperm(64, generator=gen)
    batches = split(data[0][order], data[1][order], 4)
    start = copy.deepcopy(model)
    problem = capture(run_dir, model, F.mse_loss, batches)
    save_at = sorted(set(schedule(steps, 9)) | {steps - 2})
    train(
        run_dir,
        model,
        F.mse_loss,
        _full_batch_sampler(data),
        make_optimizer(model),
        steps=steps,
        save_at=save_at,
        lr=lr,
    )
    saved, facts = trajectory(problem, run_dir, save_at)
    facts |= step_facts(problem, saved[-1])
    facts |= sharpness_facts(problem, saved[-1])
    facts["sharpness_previous"] = sharpness_facts(problem, saved[-2])["sharpness"]
    facts["step_reconstruction_error"] = step_reconstruction_error(problem, saved[-2], saved[-1])
    facts["uphill_rate_last_half"] = uphill_rate(logged_losses(run_dir), steps // 2)
    late = logged_losses(run_dir)[steps // 2 :]
    facts["late_loss_max_over_min"] = max(late) / min(late)
    calm = copy.deepcopy(start)
    calm_opt = make_optimizer(calm)
    for group in calm_opt.param_groups:
        group["lr"] = stable_lr
    for _ in range(steps):
        calm_opt.zero_grad()
        F.mse_loss(calm(data[0]), data[1]).backward()
        calm_opt.step()
    facts["stable_lr"] = stable_lr
    facts["loss_at_stable_lr"] = problem.value(_flat_params(calm))
    return save_at, facts


@scenario("poor_conditioning", "relu_mlp")
def build_poor_conditioning_relu_mlp(run_dir: Path) -> ScenarioInfo:
    """Conditioning: full-batch GD on a ReLU MLP at the edge of stability (Cohen et al. 2021):
    lr·λmax hovers at 2, about half the steps go uphill, and the loss stalls 10× above lr/4's."""
    gen = _seeded(0)
    data = _wave_2d(gen)
    model = mlp(2, 12, 12, 1, act=nn.ReLU)
    lr = 0.8
    save_at, facts = _conditioning_run(
        run_dir,
        model,
        data,
        lambda m: torch.optim.SGD(m.parameters(), lr=lr),
        lr=lr,
        steps=STEPS_RELU,
        stable_lr=lr / 4,
    )
    return _info(
        "poor_conditioning",
        "relu_mlp",
        optimizer="SGD (full-batch GD)",
        description="GD at lr 0.8: lr·λmax ≈ 2.3 > 2, the full-batch step goes uphill, ~half the late "
        "steps are uphill and the loss oscillates ≈10× above what lr/4 reaches",
        target_loss=None,
        lr=lr,
        steps=save_at,
        facts=facts,
    )


@scenario("poor_conditioning", "tanh_mlp_momentum")
def build_poor_conditioning_tanh_mlp_momentum(run_dir: Path) -> ScenarioInfo:
    """Conditioning with heavy-ball momentum μ = 0.5: lr·λmax at its threshold 2(1+μ) = 3."""
    _seeded(0)
    data = _wave_1d()
    model = mlp(1, 16, 1)
    lr = 0.35
    save_at, facts = _conditioning_run(
        run_dir,
        model,
        data,
        lambda m: torch.optim.SGD(m.parameters(), lr=lr, momentum=0.5),
        lr=lr,
        steps=STEPS_MOMENTUM,
        stable_lr=lr / 4,
    )
    return _info(
        "poor_conditioning",
        "tanh_mlp_momentum",
        optimizer="SGD(momentum=0.5), full batch",
        description="heavy ball at lr 0.35: lr·λmax ≈ 3.2 > 2(1+μ) = 3, the real (momentum) step goes "
        "uphill, the loss spikes and oscillates instead of settling",
        target_loss=None,
        lr=lr,
        steps=save_at,
        facts=facts,
    )


@scenario("poor_conditioning", "relu_mlp_adam")
def build_poor_conditioning_relu_mlp_adam(run_dir: Path) -> ScenarioInfo:
    """Conditioning under Adam at too large an lr: the preconditioned sharpness sits at Adam's
    threshold (2+2β1)/(1−β1) = 38 (Cohen et al. 2022) and the Adam steps oscillate uphill."""
    gen = _seeded(0)
    data = _wave_2d(gen)
    model = mlp(2, 12, 12, 1, act=nn.ReLU)
    lr = 0.1
    save_at, facts = _conditioning_run(
        run_dir,
        model,
        data,
        lambda m: torch.optim.Adam(m.parameters(), lr=lr),
        lr=lr,
        steps=STEPS_ADAM,
        stable_lr=lr / 10,
    )
    return _info(
        "poor_conditioning",
        "relu_mlp_adam",
        optimizer="Adam(lr=0.1), full batch",
        description="Adam at lr 0.1: preconditioned lr·λmax ≈ 39 ≥ 38 = (2+2β1)/(1−β1), the real Adam "
        "step goes uphill, ~half the late steps do, and the loss stays ≈10× above lr/10's",
        target_loss=None,
        lr=lr,
        steps=save_at,
        facts=facts,
    )


# --------------------------------------------------------------------------------------------
# gradient_noise: small batches with label noise; the loss floats on a noise floor far above the
# full-batch run's, the full-batch step goes downhill while minibatch steps go uphill
# --------------------------------------------------------------------------------------------


# Large but stable learning rates (lr·λmax ≈ 0.5–1 < 2): big enough that the noise sets the floor.
NOISE_LR_LINEAR = 0.1
NOISE_LR_MLP = 0.3
NOISE_LR_ADAM = 0.03


def _noise_run(
    run_dir: Path,
    model: nn.Module,
    data: Batch,
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
    *,
    lr: float,
    steps: int,
    batch_size: int,
) -> tuple[list[int], dict[str, float]]:
    """Minibatch training on ``data`` (= the probe's K batches); facts over the late checkpoints and
    the same run with full-batch gradients as the reference of what the noise costs."""
    batches = split(data[0], data[1], data[0].shape[0] // batch_size)
    start = copy.deepcopy(model)
    problem = capture(run_dir, model, F.mse_loss, batches)
    save_at = schedule(steps, 10)
    sample = random_minibatches(data, batch_size, seed=4)
    train(
        run_dir,
        model,
        F.mse_loss,
        sample,
        make_optimizer(model),
        steps=steps,
        save_at=save_at,
        lr=lr,
    )
    saved, facts = trajectory(problem, run_dir, save_at)
    late = [s for s in saved if s.step >= steps // 2]
    per = [step_facts(problem, s) for s in late]
    facts["late_checkpoints"] = float(len(late))
    facts["late_full_step_dJ_max"] = max(p["full_step_dJ"] for p in per)
    facts["late_minibatch_uphill_fraction"] = float(
        np.mean([p["minibatch_uphill_fraction"] for p in per])
    )
    facts["late_minibatch_dJ_mean"] = float(np.mean([p["minibatch_dJ_mean"] for p in per]))
    facts["late_full_step_dJ_mean"] = float(np.mean([p["full_step_dJ"] for p in per]))
    facts["late_loss_mean"] = float(np.mean([problem.value(s.flat) for s in late]))
    facts["plateau_ratio"] = facts["loss_mid"] / facts["late_loss_mean"]
    facts |= noise_facts(problem, saved[-1].flat)
    facts |= sharpness_facts(problem, saved[-1])
    reference = copy.deepcopy(start)
    ref_opt = make_optimizer(reference)
    for _ in range(steps):
        ref_opt.zero_grad()
        F.mse_loss(reference(data[0]), data[1]).backward()
        ref_opt.step()
    facts["full_batch_run_loss"] = problem.value(_flat_params(reference))
    facts["floor_over_full_batch"] = facts["late_loss_mean"] / facts["full_batch_run_loss"]
    return save_at, facts


@scenario("gradient_noise", "linear_regression")
def build_gradient_noise_linear_regression(run_dir: Path) -> ScenarioInfo:
    """Noise: linear regression with label noise, SGD on minibatches of 2 at a large (but stable,
    lr·λmax < 2) learning rate: the loss floats on a floor set by the gradient noise."""
    gen = _seeded(0)
    x = torch.randn(16, 8, generator=gen, dtype=DTYPE)
    w = torch.randn(8, 1, generator=gen, dtype=DTYPE)
    y = x @ w + 0.5 * torch.randn(16, 1, generator=gen, dtype=DTYPE)
    model = nn.Linear(8, 1).double()
    lr = NOISE_LR_LINEAR
    save_at, facts = _noise_run(
        run_dir,
        model,
        (x, y),
        lambda m: torch.optim.SGD(m.parameters(), lr=lr),
        lr=lr,
        steps=600,
        batch_size=2,
    )
    design = torch.cat([x, torch.ones(16, 1, dtype=DTYPE)], dim=1)
    facts["least_squares_loss"] = float(
        F.mse_loss(design @ torch.linalg.lstsq(design, y).solution, y)
    )
    return _info(
        "gradient_noise",
        "linear_regression",
        optimizer="SGD, batch 2",
        description="batch 2 with label noise: full-batch steps downhill at every late checkpoint, "
        "about half the minibatch steps uphill (on average they gain nothing), lr·λmax ≈ 0.5, "
        "loss floor ≈3× the least-squares loss the full-batch run reaches",
        target_loss=None,
        lr=lr,
        steps=save_at,
        facts=facts,
    )


def _noisy_wave(gen: torch.Generator) -> Batch:
    x = torch.randn(32, 3, generator=gen, dtype=DTYPE)
    w = torch.randn(3, 1, generator=gen, dtype=DTYPE)
    return x, torch.sin(x @ w) + 0.5 * torch.randn(32, 1, generator=gen, dtype=DTYPE)


@scenario("gradient_noise", "tanh_mlp")
def build_gradient_noise_tanh_mlp(run_dir: Path) -> ScenarioInfo:
    """Noise: a tanh MLP with label noise, SGD on minibatches of 4."""
    gen = _seeded(0)
    data = _noisy_wave(gen)
    model = mlp(3, 8, 1)
    lr = NOISE_LR_MLP
    save_at, facts = _noise_run(
        run_dir,
        model,
        data,
        lambda m: torch.optim.SGD(m.parameters(), lr=lr),
        lr=lr,
        steps=1000,
        batch_size=4,
    )
    return _info(
        "gradient_noise",
        "tanh_mlp",
        optimizer="SGD, batch 4",
        description="batch 4 with label noise: full-batch steps downhill, minibatch steps often uphill, "
        "lr·λmax < 2, loss floor many times the full-batch run's",
        target_loss=None,
        lr=lr,
        steps=save_at,
        facts=facts,
    )


@scenario("gradient_noise", "tanh_mlp_adam")
def build_gradient_noise_tanh_mlp_adam(run_dir: Path) -> ScenarioInfo:
    """Noise under Adam (β1 = 0, so each step is its own minibatch's): batch 4 with label noise."""
    gen = _seeded(0)
    data = _noisy_wave(gen)
    model = mlp(3, 8, 1)
    lr = NOISE_LR_ADAM
    save_at, facts = _noise_run(
        run_dir,
        model,
        data,
        lambda m: torch.optim.Adam(m.parameters(), lr=lr, betas=(0.0, 0.999)),
        lr=lr,
        steps=1000,
        batch_size=4,
    )
    return _info(
        "gradient_noise",
        "tanh_mlp_adam",
        optimizer="Adam(lr=0.03, betas=(0, 0.999)), batch 4",
        description="Adam on batch 4 with label noise: the Adam step from the full gradient goes downhill "
        "at every late checkpoint, from a minibatch gradient often uphill; preconditioned sharpness "
        "below its threshold 2; loss floor many times the full-batch run's",
        target_loss=None,
        lr=lr,
        steps=save_at,
        facts=facts,
    )


# --------------------------------------------------------------------------------------------
# no_critical_point: logistic loss on separable data has no minimum; ‖θ‖ grows without bound
# while the loss creeps toward 0 and the curvature fades (Soudry et al. 2018)
# --------------------------------------------------------------------------------------------


# Early checkpoints spread geometrically (the loss falls fast), late ones evenly (the slow creep).
SEPARABLE_SCHEDULE = [0, 10, 100, 300, 1000, 1500, 2000, 2500, 2999, 3000]


def _separable_facts(problem: Problem, saved: list[Saved], data: Batch) -> dict[str, float]:
    mid = _nearest([s.step for s in saved], saved[-1].step / 2)
    with torch.no_grad():
        logits = functional_call(
            problem.model, problem.unflatten(saved[-1].flat), (data[0],)
        ).squeeze(1)
    margins = (2 * data[1] - 1) * logits
    return {
        "min_margin": float(margins.min()),
        "grad_norm_mid": float(problem.grad(saved[mid].flat).norm()),
        "grad_norm_last": float(problem.grad(saved[-1].flat).norm()),
        "lambda_max_mid": problem.lambda_max(saved[mid].flat),
        "lambda_max_last": problem.lambda_max(saved[-1].flat),
        "norm_growth_last_half": float(saved[-1].flat.norm() / saved[mid].flat.norm()),
        "step_reconstruction_error": step_reconstruction_error(problem, saved[-2], saved[-1]),
    }


@scenario("no_critical_point", "logistic_regression")
def build_no_critical_point_logistic_regression(run_dir: Path) -> ScenarioInfo:
    """No critical point: linear logistic regression on linearly separable blobs, GD, no decay."""
    gen = _seeded(0)
    labels = (torch.arange(64) % 2).to(DTYPE)
    centres = torch.tensor([[-1.5, -0.5], [1.5, 0.5]], dtype=DTYPE)
    x = centres[labels.long()] + 0.6 * torch.randn(64, 2, generator=gen, dtype=DTYPE)
    model = nn.Linear(2, 1).double()
    batches = split(x, labels, 4)
    problem = capture(run_dir, model, bce_logits, batches)
    lr, steps = 1.0, 3000
    save_at = SEPARABLE_SCHEDULE
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    train(
        run_dir,
        model,
        bce_logits,
        _full_batch_sampler((x, labels)),
        opt,
        steps=steps,
        save_at=save_at,
        lr=lr,
        log_every=5,
    )
    saved, facts = trajectory(problem, run_dir, save_at)
    facts |= _separable_facts(problem, saved, (x, labels))
    return _info(
        "no_critical_point",
        "logistic_regression",
        optimizer="SGD (full-batch GD)",
        description="separable data under logistic loss: every training margin > 0, the loss keeps "
        "creeping toward 0 while ‖θ‖ keeps growing (~log t) and λmax fades: no minimum to reach",
        target_loss=None,
        lr=lr,
        steps=save_at,
        facts=facts,
    )


@scenario("no_critical_point", "relu_mlp")
def build_no_critical_point_relu_mlp(run_dir: Path) -> ScenarioInfo:
    """No critical point: a ReLU MLP separates XOR-like blobs; with logistic loss and no weight decay
    its loss keeps falling only by growing the weights."""
    gen = _seeded(0)
    corners = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [-1.0, 1.0], [1.0, -1.0]], dtype=DTYPE)
    which = torch.arange(64) % 4
    x = corners[which] + 0.25 * torch.randn(64, 2, generator=gen, dtype=DTYPE)
    labels = (which >= 2).to(DTYPE)
    model = mlp(2, 8, 1, act=nn.ReLU)
    batches = split(x, labels, 4)
    problem = capture(run_dir, model, bce_logits, batches)
    lr, steps = 0.1, 3000
    save_at = SEPARABLE_SCHEDULE
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    train(
        run_dir,
        model,
        bce_logits,
        _full_batch_sampler((x, labels)),
        opt,
        steps=steps,
        save_at=save_at,
        lr=lr,
        log_every=5,
    )
    saved, facts = trajectory(problem, run_dir, save_at)
    facts |= _separable_facts(problem, saved, (x, labels))
    return _info(
        "no_critical_point",
        "relu_mlp",
        optimizer="SGD(momentum=0.9), full batch",
        description="XOR blobs separated by a ReLU MLP under logistic loss: margins > 0, loss creeping "
        "toward 0, ‖θ‖ growing and curvature fading; the infimum is at infinity",
        target_loss=None,
        lr=lr,
        steps=save_at,
        facts=facts,
    )


# --------------------------------------------------------------------------------------------
# divergence: the learning rate is far too large; the loss explodes, then turns inf/NaN
# --------------------------------------------------------------------------------------------


@scenario("divergence", "tanh_mlp")
def build_divergence_tanh_mlp(run_dir: Path) -> ScenarioInfo:
    """Divergence: a tanh MLP regression with momentum SGD at lr·λmax ≈ 4.8 > 2(1+μ) from the
    start; the loss grows geometrically, overflows, and parameters become NaN. Checkpoints keep
    being written after the blow-up (non-finite values are evidence)."""
    _seeded(0)
    data = _wave_1d()
    model = mlp(1, 16, 1)
    batches = split(data[0], data[1], 4)
    problem = capture(run_dir, model, F.mse_loss, batches)
    lr, steps = 0.5, 200
    save_at = schedule(steps, 10)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    train(
        run_dir,
        model,
        F.mse_loss,
        _full_batch_sampler(data),
        opt,
        steps=steps,
        save_at=save_at,
        lr=lr,
    )
    saved, facts = trajectory(problem, run_dir, save_at)
    facts["sharpness_first"] = lr * problem.lambda_max(saved[0].flat)
    facts["logged_nonfinite_fraction"] = float(
        np.mean([not math.isfinite(v) for v in logged_losses(run_dir)])
    )
    return _info(
        "divergence",
        "tanh_mlp",
        optimizer="SGD(momentum=0.9), full batch",
        description="lr 0.5 with momentum: lr·λmax ≈ 4.8 > 3.8 at the start, the loss explodes "
        "past 1e100 and the parameters end NaN",
        target_loss=None,
        lr=lr,
        steps=save_at,
        facts=facts,
    )


@scenario("divergence", "linear_regression")
def build_divergence_linear_regression(run_dir: Path) -> ScenarioInfo:
    """Divergence: least squares with plain GD at lr = 2.6/λmax: the error along the top
    eigenvector is multiplied by |1 − 2.6| = 1.6 per step; the loss explodes (finite, ×1e24)."""
    gen = _seeded(0)
    x = torch.randn(32, 4, generator=gen, dtype=DTYPE)
    y = x @ torch.randn(4, 1, generator=gen, dtype=DTYPE) + 0.1 * torch.randn(
        32, 1, generator=gen, dtype=DTYPE
    )
    model = nn.Linear(4, 1).double()
    batches = split(x, y, 4)
    problem = capture(run_dir, model, F.mse_loss, batches)
    lam = problem.lambda_max(_flat_params(model))
    lr, steps = 2.6 / lam, 60
    save_at = schedule(steps, 8)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    train(
        run_dir,
        model,
        F.mse_loss,
        _full_batch_sampler((x, y)),
        opt,
        steps=steps,
        save_at=save_at,
        lr=lr,
    )
    _, facts = trajectory(problem, run_dir, save_at)
    facts["sharpness"] = lr * lam
    facts["loss_last_over_first"] = facts["loss_last"] / facts["loss_first"]
    facts["param_norm_growth"] = facts["param_norm_last"] / facts["param_norm_first"]
    return _info(
        "divergence",
        "linear_regression",
        optimizer="SGD (full-batch GD)",
        description="convex least squares at lr·λmax = 2.6 > 2: the loss grows ×2.56 per step to "
        "≈1e24× its start while staying finite; parameters grow ×1e11",
        target_loss=None,
        lr=lr,
        steps=save_at,
        facts=facts,
    )


# --------------------------------------------------------------------------------------------
# overfitting: a large model on a small subset; training loss falls while validation loss rises
# --------------------------------------------------------------------------------------------


def _overfit_facts(problem: Problem, saved: list[Saved], steps: Sequence[int]) -> dict[str, float]:
    assert problem.validation is not None
    val = [problem.val_loss(s.flat) for s in saved]
    train_losses = [problem.value(s.flat) for s in saved]
    best = int(np.argmin(val))
    late = [i for i, s in enumerate(steps) if s >= steps[-1] / 2]
    return {
        "val_best_step": float(steps[best]),
        "val_rise_last_half": val[late[-1]] / val[late[0]],
        "train_fall_last_half": train_losses[late[-1]] / train_losses[late[0]],
        "val_increasing_pairs_last_half": float(
            np.mean([val[j] > val[i] for i, j in itertools.pairwise(late)])
        ),
    }


@scenario("overfitting", "mlp_digits")
def build_overfitting_mlp_digits(run_dir: Path) -> ScenarioInfo:
    """Overfitting: a 4.8k-parameter MLP memorizes 48 digits, 30% of them relabelled at random,
    with Adam; 256 held-out digits (true labels) validate."""
    gen = _seeded(0)
    (x, y), val = _digits_split(gen, images=False, train=48, val=256)
    flip = torch.rand(48, generator=gen) < 0.3
    y = y.clone()
    y[flip] = torch.randint(0, 10, (int(flip.sum()),), generator=gen)
    model = mlp(64, 64, 10)
    batches = split(x, y, 6)
    problem = capture(run_dir, model, F.cross_entropy, batches, validation=val)
    lr, steps = 0.01, 400
    save_at = schedule(steps, 10)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    train(
        run_dir,
        model,
        F.cross_entropy,
        random_minibatches((x, y), 8, seed=5),
        opt,
        steps=steps,
        save_at=save_at,
        lr=lr,
    )
    saved, facts = trajectory(problem, run_dir, save_at)
    facts |= _overfit_facts(problem, saved, save_at)
    facts["train_accuracy"] = accuracy(problem, saved[-1].flat, (x, y))
    facts["val_accuracy"] = accuracy(problem, saved[-1].flat, val)
    return _info(
        "overfitting",
        "mlp_digits",
        optimizer="Adam(lr=0.01), batch 8",
        description="4,810 parameters memorize 48 digits (30% mislabelled): over the last half the "
        "training loss keeps falling while the held-out loss climbs far above its minimum",
        target_loss=None,
        lr=lr,
        steps=save_at,
        facts=facts,
    )


@scenario("overfitting", "tanh_mlp_regression")
def build_overfitting_tanh_mlp_regression(run_dir: Path) -> ScenarioInfo:
    """Overfitting: a wide tanh MLP interpolating 16 noisy samples of a sine; 128 fresh samples
    from the same noisy function validate."""
    gen = _seeded(0)

    def sample(n: int) -> Batch:
        x = 6 * torch.rand(n, 1, generator=gen, dtype=DTYPE) - 3
        return x, torch.sin(x) + 0.3 * torch.randn(n, 1, generator=gen, dtype=DTYPE)

    train_set, val = sample(16), sample(128)
    model = mlp(1, 64, 1)
    batches = split(train_set[0], train_set[1], 4)
    problem = capture(run_dir, model, F.mse_loss, batches, validation=val)
    lr, steps = 0.01, 2000
    save_at = schedule(steps, 10)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    train(
        run_dir,
        model,
        F.mse_loss,
        _full_batch_sampler(train_set),
        opt,
        steps=steps,
        save_at=save_at,
        lr=lr,
        log_every=5,
    )
    saved, facts = trajectory(problem, run_dir, save_at)
    facts |= _overfit_facts(problem, saved, save_at)
    facts["noise_variance"] = 0.09
    return _info(
        "overfitting",
        "tanh_mlp_regression",
        optimizer="Adam(lr=0.01), full batch",
        description="193 parameters on 16 noisy points: the training loss falls below the noise "
        "variance 0.09 while the validation loss climbs over the last half",
        target_loss=None,
        lr=lr,
        steps=save_at,
        facts=facts,
    )

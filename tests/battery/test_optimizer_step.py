"""OptimizerModel against torch: the step it rebuilds is the step ``opt.step()`` applies next.

Each case trains a tiny float64 MLP with a real ``torch.optim`` optimizer, saves and reloads the
checkpoint, then compares ``model.step(g, θ)`` with θ_after − θ_before of torch's next step.
Tolerance: ‖d − d_torch‖ ≤ 1e-12·‖d_torch‖ (the two differ only by float64 rounding).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import obstacle
from obstacle.battery.checkpoint import Checkpoint, OptimizerState, load_checkpoint
from obstacle.battery.engine import LossEngine
from obstacle.battery.optimizer_step import OptimizerModel
from obstacle.battery.probe import Probe
from obstacle.errors import CheckpointError
from support import classification_batches, tiny_mlp

RTOL = 1e-12
Factory = Callable[[nn.Module], torch.optim.Optimizer]


def _groups(model: nn.Module, **bias_overrides: object) -> list[dict[str, object]]:
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    return [{"params": weights}, {"params": biases, **bias_overrides}]


# id -> (optimizer factory, expected kind, expected heavy-ball momentum)
CASES: dict[str, tuple[Factory, str, float]] = {
    "sgd": (lambda m: torch.optim.SGD(m.parameters(), lr=0.1), "sgd", 0.0),
    "sgd_wd": (lambda m: torch.optim.SGD(m.parameters(), lr=0.1, weight_decay=0.01), "sgd", 0.0),
    "momentum": (lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9), "momentum", 0.9),
    "momentum_dampening_wd": (
        lambda m: torch.optim.SGD(
            m.parameters(), lr=0.05, momentum=0.8, dampening=0.3, weight_decay=1e-3
        ),
        "momentum",
        0.8,
    ),
    "nesterov_wd": (
        lambda m: torch.optim.SGD(
            m.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3
        ),
        "momentum",
        0.9,
    ),
    "momentum_maximize": (
        lambda m: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.5, maximize=True),
        "momentum",
        0.5,
    ),
    "adam": (lambda m: torch.optim.Adam(m.parameters(), lr=1e-2), "adam", 0.9),
    "adam_l2": (
        lambda m: torch.optim.Adam(m.parameters(), lr=1e-2, betas=(0.8, 0.99), weight_decay=0.1),
        "adam",
        0.8,
    ),
    "adam_amsgrad": (
        lambda m: torch.optim.Adam(m.parameters(), lr=1e-2, amsgrad=True),
        "adam",
        0.9,
    ),
    "adamw": (lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1), "adamw", 0.9),
    "adamw_amsgrad": (
        lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1, amsgrad=True),
        "adamw",
        0.9,
    ),
    "adam_decoupled": (
        lambda m: torch.optim.Adam(
            m.parameters(), lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True
        ),
        "adamw",
        0.9,
    ),
    "rmsprop": (lambda m: torch.optim.RMSprop(m.parameters(), lr=1e-2), "rmsprop", 0.0),
    "rmsprop_centered_momentum": (
        lambda m: torch.optim.RMSprop(
            m.parameters(), lr=1e-2, momentum=0.9, centered=True, weight_decay=1e-3
        ),
        "rmsprop",
        0.9,
    ),
    "adagrad": (
        lambda m: torch.optim.Adagrad(
            m.parameters(), lr=0.1, lr_decay=0.01, weight_decay=1e-3, initial_accumulator_value=0.1
        ),
        "adagrad",
        0.0,
    ),
    "sgd_groups": (
        lambda m: torch.optim.SGD(
            _groups(m, lr=0.01, momentum=0.5, weight_decay=0.0),
            lr=0.1,
            momentum=0.9,
            weight_decay=0.01,
        ),
        "momentum",
        0.9,
    ),
    "adamw_groups": (
        lambda m: torch.optim.AdamW(
            _groups(m, weight_decay=0.0, betas=(0.5, 0.9), lr=3e-3), lr=1e-2, weight_decay=0.1
        ),
        "adamw",
        0.9,
    ),
}


@pytest.fixture(scope="module")
def setup() -> tuple[LossEngine, list[tuple[Tensor, Tensor]]]:
    batches = classification_batches(k=3, b=8)
    probe = Probe.capture(tiny_mlp(0), nn.CrossEntropyLoss(), batches)
    return LossEngine.create(probe, dtype="float64"), batches


def _flat(engine: LossEngine, tensors: dict[str, Tensor]) -> Tensor:
    return torch.cat([tensors[n].detach().reshape(-1) for n in engine.names])


def _train(
    model: nn.Module, opt: torch.optim.Optimizer, batches: list[tuple[Tensor, Tensor]], steps: int
) -> None:
    loss_fn = nn.CrossEntropyLoss()
    for step in range(steps):
        x, y = batches[step % len(batches)]
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()


def _saved(
    tmp_path: Path,
    factory: Factory,
    batches: list[tuple[Tensor, Tensor]],
    steps: int,
    *,
    scheduler: bool = False,
) -> tuple[nn.Module, torch.optim.Optimizer, Checkpoint]:
    model = tiny_mlp(1)
    opt = factory(model)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5) if scheduler else None
    for step in range(steps):
        _train(model, opt, [batches[step % 3]], 1)
        if sched is not None:
            sched.step()
    path = obstacle.save_checkpoint(tmp_path, model, step=steps, lr=0.1, optimizer=opt)
    return model, opt, load_checkpoint(path)


def _torch_next_step(
    engine: LossEngine, model: nn.Module, opt: torch.optim.Optimizer, batch: tuple[Tensor, Tensor]
) -> tuple[Tensor, Tensor, Tensor]:
    """(g, θ_before, θ_after − θ_before) of torch's next step on ``batch``."""
    params = dict(model.named_parameters())
    before = _flat(engine, params).clone()
    opt.zero_grad()
    nn.CrossEntropyLoss()(model(batch[0]), batch[1]).backward()
    g = torch.cat([params[n].grad.reshape(-1) for n in engine.names])  # type: ignore[union-attr]
    opt.step()
    return g, before, _flat(engine, params) - before


def _assert_rel(d: Tensor, ref: Tensor, rtol: float = RTOL) -> None:
    err = float((d - ref).norm() / ref.norm())
    assert err <= rtol, f"relative error {err:.3e} > {rtol:.0e}"


@pytest.mark.parametrize("steps", [3, 0], ids=["after_3_steps", "fresh"])
@pytest.mark.parametrize("case", list(CASES))
def test_step_matches_torch(
    case: str, steps: int, tmp_path: Path, setup: tuple[LossEngine, list[tuple[Tensor, Tensor]]]
) -> None:
    engine, batches = setup
    factory, kind, momentum = CASES[case]
    model, opt, ckpt = _saved(tmp_path, factory, batches, steps)
    om = OptimizerModel.from_checkpoint(ckpt, engine)
    assert (om.kind, om.source, om.momentum) == (kind, "optimizer_state", momentum)
    if kind != "sgd":  # plain SGD keeps no state; Adagrad fills its state at construction
        assert om.fresh == (steps == 0 and kind != "adagrad")
    theta = engine.flatten(ckpt.state)
    g, before, d_torch = _torch_next_step(engine, model, opt, batches[1])
    assert torch.equal(theta, before)
    _assert_rel(om.step(g, theta), d_torch)
    # the saved state is untouched: a second call gives the same step
    _assert_rel(om.step(g, theta), d_torch)


def test_stacked_gradients_give_one_step_per_row(
    tmp_path: Path, setup: tuple[LossEngine, list[tuple[Tensor, Tensor]]]
) -> None:
    engine, batches = setup
    _, _, ckpt = _saved(tmp_path, CASES["adamw_groups"][0], batches, 3)
    om = OptimizerModel.from_checkpoint(ckpt, engine)
    theta = engine.flatten(ckpt.state)
    _, grads = engine.batch_grads(theta)
    stacked = om.step(grads, theta)
    for k in range(grads.shape[0]):
        assert torch.equal(stacked[k], om.step(grads[k], theta))


def test_lr_is_the_optimizers_current_lr(
    tmp_path: Path, setup: tuple[LossEngine, list[tuple[Tensor, Tensor]]]
) -> None:
    # A scheduler halves the lr each step; the checkpoint header says 0.1, the next step uses 0.0125.
    engine, batches = setup
    model, opt, ckpt = _saved(tmp_path, CASES["momentum"][0], batches, 3, scheduler=True)
    om = OptimizerModel.from_checkpoint(ckpt, engine)
    assert om.lr == pytest.approx(0.05 * 0.5**3, rel=1e-15)
    g, theta, d_torch = _torch_next_step(engine, model, opt, batches[1])
    _assert_rel(om.step(g, theta), d_torch)


def test_adam_preconditioner_is_sqrt_vhat_plus_eps(
    tmp_path: Path, setup: tuple[LossEngine, list[tuple[Tensor, Tensor]]]
) -> None:
    engine, batches = setup
    model, opt, ckpt = _saved(tmp_path, CASES["adam_l2"][0], batches, 3)
    om = OptimizerModel.from_checkpoint(ckpt, engine)
    params = dict(model.named_parameters())
    expected = []
    for name in engine.names:
        s = opt.state[params[name]]
        bc2 = 1 - 0.99 ** float(s["step"])
        expected.append(((s["exp_avg_sq"] / bc2).sqrt() + 1e-8).reshape(-1))
    p = om.preconditioner()
    assert p is not None
    torch.testing.assert_close(p, torch.cat(expected), rtol=1e-14, atol=0)
    assert om.adaptive and om.stability_threshold() == pytest.approx(2 * 1.8 / 0.2, rel=1e-15)


@pytest.mark.parametrize("case", ["sgd", "momentum"])
def test_no_preconditioner_for_sgd(
    case: str, tmp_path: Path, setup: tuple[LossEngine, list[tuple[Tensor, Tensor]]]
) -> None:
    engine, batches = setup
    _, _, ckpt = _saved(tmp_path, CASES[case][0], batches, 2)
    assert OptimizerModel.from_checkpoint(ckpt, engine).preconditioner() is None


def test_fresh_adam_has_no_preconditioner(
    tmp_path: Path, setup: tuple[LossEngine, list[tuple[Tensor, Tensor]]]
) -> None:
    engine, batches = setup
    _, _, ckpt = _saved(tmp_path, CASES["adam"][0], batches, 0)
    assert OptimizerModel.from_checkpoint(ckpt, engine).preconditioner() is None


def test_without_optimizer_state_it_is_sgd_at_the_checkpoint_lr(
    setup: tuple[LossEngine, list[tuple[Tensor, Tensor]]],
) -> None:
    engine, _ = setup
    state = tiny_mlp(2).state_dict()
    om = OptimizerModel.from_checkpoint(
        Checkpoint(step=4, lr=0.3, train_loss=None, state=state), engine
    )
    assert (om.kind, om.source, om.momentum, om.preconditioner()) == ("sgd", "sgd_at_lr", 0.0, None)
    theta = engine.flatten(state)
    _, g = engine.loss_and_grad(theta)
    assert torch.equal(om.step(g, theta), -0.3 * g)
    legacy = OptimizerModel.from_checkpoint(
        Checkpoint(step=4, lr=math.nan, train_loss=None, state=state), engine
    )
    assert math.isnan(legacy.lr) and torch.isnan(legacy.step(g, theta)).all()


def test_unmodelled_optimizer_falls_back_with_a_note(
    tmp_path: Path, setup: tuple[LossEngine, list[tuple[Tensor, Tensor]]]
) -> None:
    engine, batches = setup
    _, _, ckpt = _saved(tmp_path, lambda m: torch.optim.Adamax(m.parameters(), lr=0.02), batches, 2)
    om = OptimizerModel.from_checkpoint(ckpt, engine)
    assert (om.source, om.optimizer_class, om.lr) == ("sgd_at_lr", "Adamax", 0.1)
    assert om.note is not None and "Adamax" in om.note


def _garble(ckpt: Checkpoint, edit: Callable[[OptimizerState], None]) -> Checkpoint:
    assert ckpt.optimizer is not None
    edit(ckpt.optimizer)
    return ckpt


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda o: o.state["2.weight"].pop("exp_avg_sq"), ["'exp_avg_sq'", "'2.weight'"]),
        (
            lambda o: o.state["0.bias"].update(exp_avg=torch.zeros(3)),
            ["'exp_avg'", "'0.bias'", "(3,)"],
        ),
        (lambda o: o.state["0.bias"].update(step=torch.zeros(2)), ["'step'", "'0.bias'"]),
        (
            lambda o: o.state["2.bias"].update(exp_avg=torch.zeros(3, dtype=torch.int64)),
            ["'exp_avg'", "int64"],
        ),
        (lambda o: o.hyperparameters.update(betas=[0.9]), ["'betas'", "all parameters"]),
        (lambda o: o.hyperparameters.update(eps="tiny"), ["'eps'", "'tiny'"]),
        (
            lambda o: o.hyperparameters.update(per_parameter={"0.bias": {"lr": None}}),
            ["'lr'", "'0.bias'"],
        ),
        (lambda o: o.hyperparameters.update(per_parameter=[1]), ["'per_parameter'"]),
    ],
    ids=[
        "missing_slot",
        "mis_shaped",
        "bad_step",
        "int_slot",
        "betas",
        "eps",
        "per_param_lr",
        "per_param_type",
    ],
)
def test_garbled_state_names_parameter_and_slot(
    edit: Callable[[OptimizerState], None],
    words: list[str],
    tmp_path: Path,
    setup: tuple[LossEngine, list[tuple[Tensor, Tensor]]],
) -> None:
    engine, batches = setup
    _, _, ckpt = _saved(tmp_path, CASES["adam"][0], batches, 2)
    with pytest.raises(CheckpointError) as info:
        OptimizerModel.from_checkpoint(_garble(ckpt, edit), engine)
    for word in words:
        assert word in str(info.value)


def test_non_finite_state_gives_non_finite_step_not_an_error(
    tmp_path: Path, setup: tuple[LossEngine, list[tuple[Tensor, Tensor]]]
) -> None:
    engine, batches = setup
    _, _, ckpt = _saved(tmp_path, CASES["momentum"][0], batches, 2)
    assert ckpt.optimizer is not None
    ckpt.optimizer.state["0.bias"]["momentum_buffer"][0] = math.nan
    om = OptimizerModel.from_checkpoint(ckpt, engine)
    theta = engine.flatten(ckpt.state)
    d = om.step(torch.ones_like(theta), theta)
    assert d.isnan().sum() == 1


@pytest.mark.parametrize(
    "hyper",
    [
        {"momentum": 0.0, "dampening": 0.0},
        {"momentum": 0.9, "dampening": 0.0},
        {"momentum": 0.9, "dampening": 0.5},
        {"momentum": 0.9, "dampening": 0.0, "nesterov": True},
    ],
    ids=["sgd", "heavy_ball", "dampened", "nesterov"],
)
def test_stability_threshold_separates_decay_from_growth(
    hyper: dict[str, float], setup: tuple[LossEngine, list[tuple[Tensor, Tensor]]]
) -> None:
    # torch's optimizer on f(x) = ½·λ·x²: stable at lr = 0.98·threshold/λ, unstable at 1.02·.
    engine, _ = setup
    opt_state = OptimizerState("SGD", {"lr": 1.0, "weight_decay": 0.0, **hyper})
    ckpt = Checkpoint(step=0, lr=1.0, train_loss=None, state={}, optimizer=opt_state)
    threshold = OptimizerModel.from_checkpoint(ckpt, engine).stability_threshold()
    lam = 3.0
    for factor, stable in [(0.98, True), (1.02, False)]:
        x = nn.Parameter(torch.ones(1, dtype=torch.float64))
        opt = torch.optim.SGD([x], lr=factor * threshold / lam, **hyper)  # type: ignore[arg-type]
        for _ in range(600):
            x.grad = lam * x.detach()  # the gradient of ½·λ·x²
            opt.step()
        value = abs(float(x.detach()))
        assert (value < 1e-3) == stable, (factor, value)


def test_describe_is_json_ready_with_the_hyperparameters(
    tmp_path: Path, setup: tuple[LossEngine, list[tuple[Tensor, Tensor]]]
) -> None:
    engine, batches = setup
    _, _, ckpt = _saved(tmp_path, CASES["nesterov_wd"][0], batches, 2)
    info = json.loads(json.dumps(OptimizerModel.from_checkpoint(ckpt, engine).describe()))
    assert (info["kind"], info["source"], info["optimizer_class"]) == (
        "momentum",
        "optimizer_state",
        "SGD",
    )
    assert (
        info["hyperparameters"]["momentum"] == 0.9 and info["hyperparameters"]["nesterov"] is True
    )
    assert info["stability_threshold"] == pytest.approx(2 * 1.9 / 2.8, rel=1e-15)


def test_betas_outside_0_1_are_refused(
    tmp_path: Path, setup: tuple[LossEngine, list[tuple[Tensor, Tensor]]]
) -> None:
    engine, batches = setup
    _, _, ckpt = _saved(tmp_path, CASES["adam"][0], batches, 1)
    assert ckpt.optimizer is not None
    ckpt.optimizer.hyperparameters["betas"] = [0.9, 1.0]
    with pytest.raises(CheckpointError, match=r"'betas' of all parameters must lie in \[0, 1\)"):
        OptimizerModel.from_checkpoint(ckpt, engine)


@pytest.mark.parametrize("case", ["momentum", "adamw"])
def test_parameters_without_state_are_frozen(
    case: str, tmp_path: Path, setup: tuple[LossEngine, list[tuple[Tensor, Tensor]]]
) -> None:
    # Fine-tuning: layer 0's weight is frozen and left out of the optimizer, so torch never
    # moves it; the probe still lists it (and differentiates it).
    engine, batches = setup
    model = tiny_mlp(1)
    model[0].weight.requires_grad_(False)
    trainable = nn.ParameterList([p for p in model.parameters() if p.requires_grad])
    opt = CASES[case][0](trainable)
    _train(model, opt, batches, 3)
    ckpt = load_checkpoint(obstacle.save_checkpoint(tmp_path, model, step=3, lr=0.1, optimizer=opt))
    om = OptimizerModel.from_checkpoint(ckpt, engine)
    assert om.unoptimized == ["0.weight"] and om.note is not None and "0.weight" in om.note
    theta = engine.flatten(ckpt.state)
    model[0].weight.requires_grad_(True)  # so that g has its (ignored) component
    g, _, d_torch = _torch_next_step(engine, model, opt, batches[1])
    d = om.step(g, theta)
    assert bool((d[: model[0].weight.numel()] == 0).all())
    _assert_rel(d, d_torch)
    p = om.preconditioner()
    assert (p is None) == (case == "momentum")
    if p is not None:
        assert bool(torch.isfinite(p).all()) and float(p[0]) > 1e38


def test_non_finite_adam_state_has_no_preconditioner(
    tmp_path: Path, setup: tuple[LossEngine, list[tuple[Tensor, Tensor]]]
) -> None:
    engine, batches = setup
    _, _, ckpt = _saved(tmp_path, CASES["adam"][0], batches, 2)
    assert ckpt.optimizer is not None
    ckpt.optimizer.state["2.bias"]["exp_avg_sq"][0] = math.inf
    assert OptimizerModel.from_checkpoint(ckpt, engine).preconditioner() is None

"""Probe capture → save → load reproduces the eager model's loss, gradient and HVP.

Tolerances: float64 round trip ≤ 1e-10 relative (the issue's bound; observed ~1e-16); HVP against
central finite differences of the gradient ≤ 1e-6 relative (truncation error O(h²) with h=1e-5).
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import textwrap
import weakref
from pathlib import Path

import pytest
import torch
from families import FAMILIES, build, eager_reference
from safetensors.torch import load_file, save_file
from torch import nn

import obstacle
from obstacle.artifacts.layout import PROBE_DIR, PROBE_MANIFEST
from obstacle.battery.checkpoint import load_checkpoint
from obstacle.battery.engine import LossEngine
from obstacle.errors import ParameterError, ProbeError

ROUND_TRIP_RTOL = 1e-10
FD_RTOL = 1e-6


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


@pytest.fixture(scope="module")
def saved_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    runs = {}
    for name in FAMILIES:
        model, loss_fn, batches = build(name)
        run = tmp_path_factory.mktemp(name)
        obstacle.Probe.capture(model, loss_fn, batches).save(run)
        obstacle.save_checkpoint(run, model, step=0, lr=0.1)
        n = sum(p.numel() for p in model.parameters())
        v = torch.randn(n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        loss, grad, hv = eager_reference(model, loss_fn, batches, v)
        save_file(
            {"v": v, "grad": grad, "hv": hv, "loss": torch.tensor(loss, dtype=torch.float64)},
            str(run / "ref.safetensors"),
        )
        runs[name] = run
    return runs


_FRESH = textwrap.dedent(
    """
    import json, sys, torch
    from safetensors.torch import load_file
    import obstacle
    from obstacle.battery.checkpoint import load_checkpoint
    from obstacle.battery.engine import LossEngine
    out = {}
    for name, run in json.loads(sys.argv[1]).items():
        probe = obstacle.Probe.load(run)
        ck = load_checkpoint(run + "/checkpoints/step_000000000.safetensors", probe.manifest)
        engine = LossEngine.create(probe, dtype="float64")
        theta = engine.flatten(ck.state)
        ref = load_file(run + "/ref.safetensors")
        loss, grad = engine.loss_and_grad(theta)
        hv = engine.hessian_operator(theta)(ref["v"])
        rel = lambda a, b: float((a - b).norm() / b.norm())
        out[name] = {
            "loss": abs(loss - float(ref["loss"])) / abs(float(ref["loss"])),
            "grad": rel(grad, ref["grad"]),
            "hvp": rel(hv, ref["hv"]),
            "torch_imported_validator_first": True,
        }
    print(json.dumps(out))
    """
)


def test_round_trip_in_a_fresh_process_matches_eager_model(saved_runs: dict[str, Path]) -> None:
    args = json.dumps({k: str(v) for k, v in saved_runs.items()})
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", _FRESH, args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    errors = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(errors) == set(FAMILIES)
    for name, err in errors.items():
        for what in ("loss", "grad", "hvp"):
            assert err[what] <= ROUND_TRIP_RTOL, f"{name}: {what} relative error {err[what]:.2e}"


def _bound(run: Path) -> tuple[LossEngine, torch.Tensor, torch.Tensor]:
    """The run's probe bound in float64, θ of its first checkpoint, and its reference vector v."""
    probe = obstacle.Probe.load(run)
    engine = LossEngine.create(probe, dtype="float64")
    theta = engine.flatten(
        load_checkpoint(run / "checkpoints/step_000000000.safetensors", probe.manifest).state
    )
    return engine, theta, load_file(str(run / "ref.safetensors"))["v"]


@pytest.mark.parametrize("name", FAMILIES)
def test_hvp_agrees_with_finite_differences_and_forward_over_reverse(
    name: str, saved_runs: dict[str, Path]
) -> None:
    engine, theta, v = _bound(saved_runs[name])
    hv = engine.hessian_operator(theta)(v)
    h = 1e-5
    _, g_plus = engine.loss_and_grad(theta + h * v)
    _, g_minus = engine.loss_and_grad(theta - h * v)
    assert _rel(hv, (g_plus - g_minus) / (2 * h)) <= FD_RTOL
    assert _rel(engine.hvp_forward_over_reverse(theta, v), hv) <= ROUND_TRIP_RTOL


@pytest.mark.parametrize("name", FAMILIES)
def test_hessian_operator_runs_batch_by_batch_into_its_output(
    name: str, saved_runs: dict[str, Path]
) -> None:
    # The operator keeps one graph per probe batch and frees each batch's gradient values: its
    # products must still be those of the whole probe's Hessian, called again and again, and
    # ``out=`` must receive them in place.
    engine, theta, v = _bound(saved_runs[name])
    op = engine.hessian_operator(theta)
    loss, grad = engine.loss_and_grad(theta)
    assert op.loss == pytest.approx(loss, rel=1e-12)
    assert _rel(op.gradient, grad) <= 1e-12
    first = op(v)
    out = torch.full_like(v, float("nan"))  # zeroed by the operator, not assumed zero
    returned = op(v, out=out)
    assert returned is out and _rel(out, first) <= 1e-12
    per_batch = sum(engine.hessian_operator(theta, k)(v) for k in range(engine.num_batches))
    assert _rel(first, per_batch / engine.num_batches) <= 1e-12
    with pytest.raises(ParameterError, match="must not share memory"):
        op(v, out=v)
    with pytest.raises(ParameterError, match="float64 vector"):
        op(v.float())


@pytest.mark.parametrize("name", FAMILIES)
def test_an_operator_keeping_fewer_graphs_gives_the_same_products(
    name: str, saved_runs: dict[str, Path]
) -> None:
    # When the memory plan keeps only some batches' graphs, each product builds the others'
    # again: the same loss, gradient and products (float64, to 1e-12), product after product,
    # and each rebuilt batch is a counted gradient pass.
    engine, theta, v = _bound(saved_runs[name])
    k = engine.num_batches
    assert k >= 2
    full = engine.hessian_operator(theta)
    reference = full(v)
    for kept in (0, 1, k - 1):
        op = engine.hessian_operator(theta, kept_graphs=kept)
        assert (len(op.roots), op.rebuilt) == (kept, list(range(kept, k)))
        assert op.loss == pytest.approx(full.loss, rel=1e-12)
        assert _rel(op.gradient, full.gradient) <= 1e-12
        before = engine.cost.copy()
        for _ in range(2):
            assert _rel(op(v), reference) <= 1e-12
        spent = engine.cost - before
        assert (spent.hvp, spent.hvp_batches, spent.grad_batches) == (2, 2 * k, 2 * (k - kept))


@pytest.mark.parametrize("name", FAMILIES)
def test_a_dropped_hessian_operator_frees_its_graph_and_parameters(
    name: str, saved_runs: dict[str, Path]
) -> None:
    # A graph that held itself (a node saving its own output, through a saved-tensor hook) kept
    # every checkpoint's θ and graph alive for the whole analysis: one more θ per checkpoint.
    engine, theta, _ = _bound(saved_runs[name])
    op = engine.hessian_operator(theta)
    op(torch.ones_like(theta))
    leaves = [weakref.ref(p) for p in op.params]
    del op
    gc.collect()
    assert all(ref() is None for ref in leaves)


def test_probe_batch_dimension_is_dynamic(saved_runs: dict[str, Path]) -> None:
    probe = obstacle.Probe.load(saved_runs["mlp"])
    model, loss_fn, _batches = build("mlp")
    program = probe.program.module()
    for size in (1, 3, 11):
        x = torch.randn(size, 5, dtype=torch.float64)
        y = torch.randint(0, 3, (size,))
        model.eval()
        assert float(program(x, y).detach()) == pytest.approx(
            float(loss_fn(model(x), y).detach()), rel=1e-12
        )


def test_manifest_lists_names_shapes_and_versions(saved_runs: dict[str, Path]) -> None:
    manifest = json.loads((saved_runs["batchnorm"] / PROBE_DIR / PROBE_MANIFEST).read_text())
    names = [p["name"] for p in manifest["parameters"]]
    assert names == ["0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "3.bias"]
    assert [b["name"] for b in manifest["buffers"]] == [
        "1.running_mean",
        "1.running_var",
        "1.num_batches_tracked",
    ]
    assert manifest["num_batches"] == 2 and manifest["batch_size"] == 6
    assert manifest["torch_version"] == torch.__version__
    assert len(manifest["content_hash"]) == 64


def test_eval_mode_uses_running_statistics_and_restores_training_mode() -> None:
    model, loss_fn, batches = build("batchnorm")
    model.train()
    probe = obstacle.Probe.capture(model, loss_fn, batches)
    assert model.training, "capture must restore the model's mode"
    model.eval()
    expected = float(loss_fn(model(batches[0][0]), batches[0][1]).detach())
    assert float(probe.program.module()(*batches[0]).detach()) == pytest.approx(expected, rel=1e-12)


def test_float32_probe_evaluates_in_float64_engine(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    batches = [(torch.randn(6, 5), torch.randint(0, 3, (6,))) for _ in range(2)]
    obstacle.Probe.capture(model, nn.functional.cross_entropy, batches).save(tmp_path)
    probe = obstacle.Probe.load(tmp_path)
    engine = LossEngine.create(probe, dtype="float64")
    theta = engine.flatten(model.state_dict())
    model64 = model.double().eval()
    expected = torch.stack(
        [nn.functional.cross_entropy(model64(x.double()), y) for x, y in batches]
    ).mean()
    assert engine.loss(theta) == pytest.approx(float(expected.detach()), rel=1e-12)
    engine32 = LossEngine.create(probe, dtype="float32")
    assert engine32.loss(engine32.flatten(model.state_dict())) == pytest.approx(
        float(expected.detach()), rel=1e-5
    )


def test_unexportable_layer_is_named_in_the_error() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # data-dependent Python control flow cannot be exported
                return x
            return self.linear(x)

    model = nn.Sequential(nn.Linear(3, 3), Branchy())
    batches = [(torch.randn(4, 3), torch.randn(4, 3))]
    with pytest.raises(ProbeError, match=r"layer 1 \(Branchy\)") as info:
        obstacle.Probe.capture(model, nn.functional.mse_loss, batches)
    assert "Rewrite that layer" in str(info.value)


@pytest.mark.parametrize(
    ("batches", "message"),
    [
        ([], "non-empty list"),
        ([(torch.randn(4, 3),)], "at least \\(input, target\\)"),
        ([(torch.randn(4, 3), torch.randn(5, 3))], "share its first"),
        (
            [(torch.randn(4, 3), torch.randn(4, 3)), (torch.randn(3, 3), torch.randn(3, 3))],
            "equally sized",
        ),
        ([(torch.randn(1, 3), torch.randn(1, 3))], "at least 2"),
    ],
)
def test_bad_batches_get_a_clear_error(
    batches: list[tuple[torch.Tensor, ...]], message: str
) -> None:
    with pytest.raises(ProbeError, match=message):
        obstacle.Probe.capture(nn.Linear(3, 3), nn.functional.mse_loss, batches)


def test_non_scalar_loss_is_rejected() -> None:
    batches = [(torch.randn(4, 3), torch.randn(4, 3))]
    with pytest.raises(ProbeError, match="scalar"):
        obstacle.Probe.capture(nn.Linear(3, 3), nn.MSELoss(reduction="none"), batches)


def test_tampered_probe_data_fails_the_content_hash(
    saved_runs: dict[str, Path], tmp_path: Path
) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(saved_runs["mlp"], run)
    data = run / PROBE_DIR / "data.safetensors"
    tensors = load_file(str(data))
    tensors["batch_0.0"] = tensors["batch_0.0"] + 1
    save_file(tensors, str(data))
    with pytest.raises(ProbeError, match="content hash"):
        obstacle.Probe.load(run)


def test_non_persistent_buffers_stay_in_the_program_and_checkpoints_need_not_carry_them(
    tmp_path: Path,
) -> None:
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(3, 2)
            self.register_buffer("scale", torch.tensor([2.0, 3.0, 4.0]), persistent=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.linear(x * self.scale)

    torch.manual_seed(0)
    model = Scaled().double()
    batches = [(torch.randn(4, 3, dtype=torch.float64), torch.tensor([0, 1, 1, 0]))]
    obstacle.Probe.capture(model, nn.functional.cross_entropy, batches).save(tmp_path)
    path = obstacle.save_checkpoint(tmp_path, model, step=0, lr=0.1)
    probe = obstacle.Probe.load(tmp_path)
    assert [b.name for b in probe.manifest.buffers] == []
    engine = LossEngine.create(probe, dtype="float64")
    theta = engine.flatten(load_checkpoint(path, probe.manifest).state)
    expected = nn.functional.cross_entropy(model(batches[0][0]), batches[0][1])
    assert engine.loss(theta) == pytest.approx(float(expected.detach()), rel=1e-12)


@pytest.mark.parametrize("name", FAMILIES)
def test_per_batch_gradients_by_vmap_equal_the_loop(name: str, saved_runs: dict[str, Path]) -> None:
    engine, theta, _ = _bound(saved_runs[name])
    losses, grads = engine.batch_grads(theta)
    assert engine._vmap_ok, f"{name}: the exported program should batch under vmap"
    for k in range(engine.num_batches):
        value, g = engine.loss_and_grad(theta, k)
        assert float(losses[k]) == pytest.approx(value, rel=1e-12)
        assert _rel(grads[k], g) <= 1e-12


def test_per_batch_gradients_fall_back_to_a_loop(saved_runs: dict[str, Path]) -> None:
    engine, theta, _ = _bound(saved_runs["mlp"])
    vmapped = engine.batch_grads(theta)[1]

    def no_batching_rule(_theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise RuntimeError("Batching rule not implemented for aten::some_op")

    engine._vmapped_grads = no_batching_rule  # type: ignore[method-assign]
    looped = engine.batch_grads(theta)[1]
    assert not engine._vmap_ok
    assert _rel(looped, vmapped) <= 1e-12

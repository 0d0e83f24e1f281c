"""Recurrent models, and models that create tensors in ``forward``, analysed in float64 and float32.

``nn.GRU``/``nn.LSTM`` create their zero initial state inside the graph with the capture dtype
(``aten.full(..., dtype=torch.float32)``); before ``program_dtype.cast_graph`` the float64
analysis ended in ``mat1 and mat2 must have the same dtype``.

Tolerances:
- float64 engine against the eager model in float64 (exact autograd: loss, gradient and the
  double-backward Hessian-vector product): ≤ 1e-10 relative, observed ~1e-15;
- λmax, float32 against float64 analysis: ≤ 1e-4 relative (float32 Lanczos resolves λ to about
  1e-4·λmax, ``precision.FLOAT32_RESOLUTION``), observed ~1e-7.
"""

from __future__ import annotations

import copy
import zipfile
from pathlib import Path

import pytest
import torch
from families import eager_reference
from torch import Tensor, nn
from typer.testing import CliRunner

import obstacle
from obstacle.artifacts.archive import validate_program_archive
from obstacle.artifacts.layout import PROBE_DIR, PROBE_PROGRAM
from obstacle.battery import engine as engine_module
from obstacle.battery.analysis import analyze
from obstacle.battery.engine import LossEngine
from obstacle.battery.program_dtype import cast_graph, run_graph
from obstacle.cli import app
from obstacle.errors import ObstacleError, ProbeError

EXACT_RTOL = 1e-10
LAMBDA_RTOL = 1e-4
STEPS = 4


class _Recurrent(nn.Module):
    def __init__(self, cell: type[nn.GRU] | type[nn.LSTM]) -> None:
        super().__init__()
        self.rnn = cell(3, 4, batch_first=True)
        self.head = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])  # type: ignore[no-any-return]


class _CreatesTensors(nn.Module):
    """A hand-written recurrence that makes its state, masks and constants inside ``forward``.

    ``make`` is the dtype those tensors are created in, written into the graph at capture; the
    float64 reference sets it to float64.
    """

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(3, 4)
        self.rec = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)
        self.register_buffer("scale", torch.linspace(0.5, 1.5, 4))
        self.make = torch.float32

    def forward(self, x: Tensor) -> Tensor:
        h = torch.zeros(x.shape[0], 4, dtype=self.make)  # aten.full(dtype=float32)
        for t in range(x.shape[1]):
            h = torch.tanh(self.inp(x[:, t]) + self.rec(h))
        mix = torch.eye(4, dtype=self.make) + 0.1 * torch.ones_like(h).mean(0)  # a matmul operand
        steps = torch.arange(4, dtype=self.make)  # arange(dtype=float32)
        # a lifted tensor constant (values exact in float32, so the float64 reference agrees)
        offset = torch.tensor([0.125, -0.25], dtype=self.make)
        return self.head((h @ mix) * self.scale + 0.01 * steps) + offset  # type: ignore[no-any-return]


def _build(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "gru":
        return _Recurrent(nn.GRU)
    if name == "lstm":
        return _Recurrent(nn.LSTM)
    return _CreatesTensors()


MODELS = ("gru", "lstm", "creates_tensors")


def _batches() -> list[tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [
        (torch.randn(8, 5, 3, generator=g), torch.randint(0, 2, (8,), generator=g))
        for _ in range(2)
    ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, nn.Module]]:
    """Each model captured in float32, trained a few SGD steps, a checkpoint before each."""
    out = {}
    for name in MODELS:
        model, loss_fn, batches = _build(name), nn.CrossEntropyLoss(), _batches()
        run = tmp_path_factory.mktemp(name)
        obstacle.Probe.capture(model, loss_fn, batches).save(run)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        for step in range(STEPS):
            obstacle.save_checkpoint(run, model, step=step, lr=0.5)
            for x, y in batches:
                optimizer.zero_grad()
                loss_fn(model(x), y).backward()
                optimizer.step()
        out[name] = (run, model)
    return out


@pytest.mark.parametrize("name", MODELS)
def test_float64_and_float32_analyses_agree(
    runs: dict[str, tuple[Path, nn.Module]], name: str
) -> None:
    run, _ = runs[name]
    double = analyze(run, preset="quick", dtype="float64")
    single = analyze(run, preset="quick", dtype="float32")
    assert double["verdict"]["primary"] == single["verdict"]["primary"]
    assert len(double["checkpoints"]) == len(single["checkpoints"]) == STEPS
    for d, s in zip(double["checkpoints"], single["checkpoints"], strict=True):
        assert abs(s["lambda_max"] - d["lambda_max"]) <= LAMBDA_RTOL * abs(d["lambda_max"])


@pytest.mark.parametrize("name", MODELS)
def test_float64_engine_matches_exact_autograd(
    runs: dict[str, tuple[Path, nn.Module]], name: str
) -> None:
    run, model = runs[name]
    probe = obstacle.Probe.load(run)
    engine = LossEngine.create(probe, dtype="float64")
    theta = engine.flatten(model.state_dict())
    v = torch.randn(theta.numel(), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    loss, grad = engine.loss_and_grad(theta)
    hv = engine.hessian_operator(theta)(v)

    reference = copy.deepcopy(model).double()
    if isinstance(reference, _CreatesTensors):
        reference.make = torch.float64
    batches = [(x.double(), y) for x, y in probe.batches]
    ref_loss, ref_grad, ref_hv = eager_reference(reference, nn.CrossEntropyLoss(), batches, v)
    assert abs(loss - ref_loss) <= EXACT_RTOL * abs(ref_loss)
    assert float((grad - ref_grad).norm() / ref_grad.norm()) <= EXACT_RTOL
    assert float((hv - ref_hv).norm() / ref_hv.norm()) <= EXACT_RTOL


def test_cast_follows_the_analysis_dtype_and_keeps_integers(
    runs: dict[str, tuple[Path, nn.Module]],
) -> None:
    program = obstacle.Probe.load(runs["gru"][0]).program

    def created(graph: torch.fx.GraphModule) -> list[torch.dtype]:
        return [n.kwargs["dtype"] for n in graph.graph.nodes if "dtype" in n.kwargs]

    before = created(program.graph_module)
    assert torch.float32 in before and torch.int64 in before  # h0 and CE's ignore_index fill
    for dtype in (torch.float64, torch.float32):
        after = created(cast_graph(program.graph_module, dtype))
        assert after == [d if not d.is_floating_point else dtype for d in before]
    assert created(program.graph_module) == before  # the probe's own graph is not touched


def test_cast_moves_created_tensors_to_the_engine_device(
    runs: dict[str, tuple[Path, nn.Module]],
) -> None:
    graph = obstacle.Probe.load(runs["gru"][0]).program.graph_module
    meta = torch.device("meta")  # stands in for CUDA: any device other than the capture's
    devices = [
        n.kwargs["device"]
        for n in cast_graph(graph, torch.float64, meta).graph.nodes
        if "device" in n.kwargs
    ]
    assert devices and all(d == meta for d in devices)


def test_a_dtype_mismatch_the_cast_cannot_fix_is_a_probe_error() -> None:
    weight = torch.ones(3, 3, dtype=torch.float32)

    def mixes(x: Tensor) -> Tensor:
        return torch.mm(x, weight)

    graph = torch.fx.symbolic_trace(mixes)  # torch.mm, not an ATen overload: the cast skips it
    with pytest.raises(ProbeError) as info:
        run_graph(graph, [torch.ones(2, 3, dtype=torch.float64)], probe="tests.Mixes")
    message = str(info.value)
    for fragment in ("tests.Mixes", "mm", "torch.float32 and torch.float64", "--dtype float32"):
        assert fragment in message
    assert isinstance(info.value, ObstacleError)


def test_cli_reports_a_dtype_failure_with_exit_2(
    runs: dict[str, tuple[Path, nn.Module]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without the cast, the float64 GRU meets its float32 initial state: what used to crash.
    monkeypatch.setattr(engine_module, "cast_graph", lambda graph, *_: graph)
    out = CliRunner().invoke(
        app,
        [
            "analyze",
            str(runs["gru"][0]),
            "--preset",
            "quick",
            "--dtype",
            "float64",
            "--no-progress",
        ],
    )
    assert out.exit_code == 2, out.output
    assert "--dtype float32" in out.output and "aten.addmm" in out.output
    assert out.exception is None or isinstance(out.exception, SystemExit)


def test_a_layer_called_in_a_loop_passes_the_validator(
    runs: dict[str, tuple[Path, nn.Module]],
) -> None:
    # torch keys the second call of `inp` as "...model.inp@1" in nn_module_stack; the validator
    # used to refuse the "@", so such a probe was saved and then refused at analysis.
    path = runs["creates_tensors"][0] / PROBE_DIR / PROBE_PROGRAM
    with zipfile.ZipFile(path) as archive:
        (entry,) = [n for n in archive.namelist() if n.endswith("models/model.json")]
        assert "model.inp@1," in archive.read(entry).decode()
    validate_program_archive(path)

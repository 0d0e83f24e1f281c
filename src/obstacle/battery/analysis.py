"""Run the battery over a run directory: per checkpoint, across the sequence, then the verdict.

Three entry points, shared by ``obstacle analyze`` and the Celery workers:

- :class:`SequenceAnalyzer` — records for checkpoints taken in order, warm-started (a worker
  task's unit of work: an ordered group of checkpoints);
- :func:`summarize_run` — the run-level tests and the verdict from all checkpoint records;
- :func:`analyze` — both, in-process, with Lanczos warm-started along the sequence.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, overload

import torch

from obstacle.artifacts.layout import PROBE_DIR, PROBE_MANIFEST, list_checkpoints
from obstacle.artifacts.manifest import read_manifest
from obstacle.battery.allocator import map_large_allocations, return_freed_memory_to_the_os
from obstacle.battery.checkpoint import Checkpoint, load_checkpoint
from obstacle.battery.engine import LossEngine, resolve_device
from obstacle.battery.memory import available_memory, parse_size, plan_memory
from obstacle.battery.precision import choose_precision
from obstacle.battery.presets import Preset, get_preset
from obstacle.battery.probe import Probe
from obstacle.battery.quantities.base import CheckpointContext, Quantity, Record
from obstacle.battery.verdict import DEFAULT_THRESHOLDS, Thresholds, judge_facts, run_facts
from obstacle.errors import RunDirectoryError

REPORT_SCHEMA = "obstacle.report/1"
# progress(phase, done, total): ("checkpoint", i, n) before checkpoint i of n and once with
# i = n; within a checkpoint ("test:<name>", j, m) before its test j of m and ("products", k, 0)
# after the test's k-th Hessian-vector product (no total: Lanczos stops when it converges);
# ("run", 0, 1) and ("run", 1, 1) around the run-level tests and the verdict.
Progress = Callable[[str, int, int], None]

_PROBES: OrderedDict[tuple[str, str], Probe] = OrderedDict()
_PROBE_CACHE_SIZE = 8  # a worker sees many runs; keep the most recently used programs


def load_probe(run_dir: Path) -> Probe:
    """The run's probe, loaded once per process and cached by content hash (LRU)."""
    manifest = read_manifest(Path(run_dir) / PROBE_DIR / PROBE_MANIFEST)
    key = (str(Path(run_dir).resolve()), manifest.content_hash)
    if key in _PROBES:
        _PROBES.move_to_end(key)
    else:
        _PROBES[key] = Probe.load(run_dir)
        while len(_PROBES) > _PROBE_CACHE_SIZE:
            _PROBES.popitem(last=False)
    return _PROBES[key]


def checkpoint_steps(run_dir: Path) -> list[int]:
    """The steps of the run's checkpoints; a run without any is a RunDirectoryError."""
    run = Path(run_dir)
    if not (run / PROBE_DIR / PROBE_MANIFEST).exists():
        raise RunDirectoryError(
            f"{run}: no probe found at {PROBE_DIR}/{PROBE_MANIFEST}. A run directory needs the probe "
            "written by obstacle.Probe.capture(model, loss_fn, batches).save(run_dir)."
        )
    steps = [s for s, _ in list_checkpoints(run)]
    if not steps:
        raise RunDirectoryError(
            f"{run}: no checkpoints in {run / 'checkpoints'}. Write them during training with "
            "obstacle.save_checkpoint(run_dir, model, step=..., lr=...)."
        )
    return steps


class _Session:
    """The probe bound to an engine for one run, in the policy's precision, with its memory plan."""

    def __init__(
        self,
        run_dir: Path,
        preset: Preset,
        device: str,
        dtype: str,
        memory_budget: str | int | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.preset = preset
        self.probe = load_probe(self.run_dir)
        dev = resolve_device(device)
        num_parameters = sum(math.prod(s.shape) for s in self.probe.manifest.parameters)
        self.precision = choose_precision(dtype, device=dev, num_parameters=num_parameters)
        self.engine = LossEngine.create(
            self.probe, device=device, dtype=self.precision.dtype, max_batches=preset.max_batches
        )
        if memory_budget is None:
            budget, source = available_memory(self.engine.device), "device"
        else:
            budget, source = parse_size(memory_budget), "requested"
        element = torch.empty(0, dtype=self.engine.dtype).element_size()
        map_large_allocations(num_parameters * element)  # RSS follows the tensors the plan counts
        self.paths = dict(list_checkpoints(self.run_dir))
        if not self.paths:
            checkpoint_steps(self.run_dir)
        self.first = min(self.paths)
        # Before any quantity: a plan that cannot fit is an error that says what to lower. What
        # the operator needs beside the vectors is measured on one batch at θ₀ (one gradient
        # pass, one product).
        operator = self.engine.operator_memory(self.theta0())
        self.plan = plan_memory(
            num_parameters=num_parameters,
            dtype=self.engine.dtype,
            num_batches=self.engine.num_batches,
            budget_bytes=budget,
            budget_source=source,
            batch_graph_bytes=operator.graph_bytes,
            product_bytes=operator.product_bytes,
        )

    def load(self, step: int) -> Checkpoint:
        if step not in self.paths:
            raise RunDirectoryError(
                f"{self.run_dir}: no checkpoint for step {step} (have {sorted(self.paths)})."
            )
        return load_checkpoint(self.paths[step], self.probe.manifest)

    def theta0(self) -> torch.Tensor:
        """θ at the run's first checkpoint, read from its file on each call: held through the
        analysis it was one vector of the peak (a 25M-parameter float32 model: 1× the weights)
        for one distance per checkpoint, and reading it again costs a checkpoint load."""
        return self.theta(self.first)[1]

    def theta(self, step: int) -> tuple[Checkpoint, torch.Tensor]:
        """The checkpoint (its state dict dropped once flattened: θ holds it) and θ."""
        ck = self.load(step)
        theta = self.engine.flatten(ck.state)
        ck.state = {}
        return ck, theta


class _Thetas(Sequence[torch.Tensor]):
    """θ of each step, read from its checkpoint when indexed: the run-level tests stream the
    sequence instead of holding every checkpoint."""

    def __init__(self, session: _Session, steps: list[int]) -> None:
        self._session, self._steps = session, steps

    def __len__(self) -> int:
        return len(self._steps)

    @overload
    def __getitem__(self, index: int) -> torch.Tensor: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[torch.Tensor]: ...
    def __getitem__(self, index: int | slice) -> torch.Tensor | Sequence[torch.Tensor]:
        if isinstance(index, slice):
            return _Thetas(self._session, self._steps[index])
        return self._session.theta(self._steps[index])[1]


def _quantities(preset: Preset) -> list[Quantity]:
    from obstacle.battery.quantities.curvature import DirectionalCurvature
    from obstacle.battery.quantities.gradient import GradientNorm
    from obstacle.battery.quantities.gradient_noise import GradientNoise
    from obstacle.battery.quantities.loss import LossQuantity
    from obstacle.battery.quantities.negative_curvature import NegativeCurvature
    from obstacle.battery.quantities.simulated_steps import SimulatedSteps
    from obstacle.battery.quantities.spectrum import HessianSpectrum

    chosen: list[Quantity] = [
        LossQuantity(),
        GradientNorm(),
        GradientNoise(),
        DirectionalCurvature(),
        SimulatedSteps(),
        NegativeCurvature(),
    ]
    if preset.spectrum:
        chosen.append(HessianSpectrum())
    return chosen


def _context(session: _Session, step: int, carry: dict[str, Any]) -> CheckpointContext:
    from obstacle.battery.optimizer_step import OptimizerModel

    ck, theta = session.theta(step)
    preset = session.preset
    ctx = CheckpointContext(
        engine=session.engine,
        theta=theta,
        checkpoint=ck,
        theta0=session.theta0,
        carry=carry,
        options={
            "lanczos_max_iter": preset.lanczos_max_iter,
            "lanczos_tol": preset.lanczos_tol,
            "slice_points": preset.slice_points,
            "bootstrap": preset.bootstrap,
            "warm_start": True,
            "lanczos_max_vectors": session.plan.lanczos_max_vectors,
            "batch_gradient_chunk": session.plan.batch_gradient_chunk,
            "kept_graphs": session.plan.kept_graphs,
        },
    )
    model = OptimizerModel.from_checkpoint(ck, session.engine)
    ctx.options["optimizer_model"] = model
    ctx.options["optimizer"] = model.describe()
    pre = model.preconditioner()
    if pre is not None:
        ctx.options["preconditioner"] = pre
        ctx.options["preconditioned_threshold"] = model.stability_threshold()
    return ctx


def _run_checkpoint(
    session: _Session, step: int, carry: dict[str, Any], progress: Progress | None = None
) -> Record:
    ctx = _context(session, step, carry)
    details: dict[str, Record] = {}
    quantities = _quantities(session.preset)
    engine = session.engine
    for j, quantity in enumerate(quantities):
        if progress is not None:
            progress(f"test:{quantity.name}", j, len(quantities))
            engine.on_product = _product_ticker(progress, engine)
        try:
            details[quantity.name] = quantity(ctx)
        finally:
            engine.on_product = None
        return_freed_memory_to_the_os()  # so that RSS follows the tensors the plan counts
    _, g = ctx.gradient()
    cosine = (
        float(torch.nn.functional.cosine_similarity(g, ctx.theta, dim=0))
        if g.norm() > 0 and ctx.theta.norm() > 0
        else math.nan
    )
    ctx.release()
    return flat_record(ctx.checkpoint, details, grad_param_cosine=cosine)


def _product_ticker(progress: Progress, engine: LossEngine) -> Callable[[], None]:
    """``progress("products", k, 0)`` after the k-th product from now."""
    start = engine.cost.hvp

    def tick() -> None:
        progress("products", engine.cost.hvp - start, 0)

    return tick


class SequenceAnalyzer:
    """Records for a run's checkpoints taken in step order, Lanczos warm-started along them.

    One probe and engine bound once; ``record(step)`` analyses one checkpoint and carries its Ritz
    vectors to the next call. This is what ``obstacle analyze`` does in-process and what a worker
    does for the ordered group of checkpoints one task owns, so both spend the same HVPs per
    checkpoint. A step that fails (an exception out of ``record``) leaves the carry as it was.
    """

    def __init__(
        self,
        run_dir: Path | str,
        *,
        preset: str = "standard",
        device: str = "cpu",
        dtype: str = "auto",
        memory_budget: str | int | None = None,
    ) -> None:
        self._session = _Session(Path(run_dir), get_preset(preset), device, dtype, memory_budget)
        self._carry: dict[str, Any] = {}

    @property
    def engine(self) -> LossEngine:
        return self._session.engine

    def record(self, step: int, progress: Progress | None = None) -> Record:
        """The battery's record for the checkpoint at ``step`` (JSON-ready: non-finite → null);
        ``progress`` hears of each test and product in it (see :data:`Progress`)."""
        record: Record = to_json(_run_checkpoint(self._session, step, self._carry, progress))
        return record


def analyze_checkpoint(
    run_dir: Path | str,
    step: int,
    *,
    preset: str = "standard",
    device: str = "cpu",
    dtype: str = "auto",
    memory_budget: str | int | None = None,
) -> Record:
    """The battery's record for one checkpoint, cold-started (see :class:`SequenceAnalyzer`)."""
    return SequenceAnalyzer(
        run_dir, preset=preset, device=device, dtype=dtype, memory_budget=memory_budget
    ).record(step)


def flat_record(ck: Checkpoint, details: Mapping[str, Record], **extra: float) -> Record:
    """The per-checkpoint row of the report: headline numbers flat, full records in ``details``."""
    loss = details.get("loss", {})
    grad = details.get("gradient", {})
    noise = details.get("noise", {})
    curv = details.get("curvature", {})
    steps = details.get("steps", {})
    lz = details.get("lanczos", {})
    pre = lz.get("preconditioned") or {}
    escape = lz.get("escape") or {}
    deltas = [
        d
        for d in (escape.get("delta_plus") or []) + (escape.get("delta_minus") or [])
        if d is not None
    ]
    changes = sorted(
        abs(d) for d in (steps.get("minibatch_changes") or []) if d is not None and math.isfinite(d)
    )
    full_change = steps.get("full_step_change")
    scale = changes[len(changes) // 2] if changes else None
    # How much a clean full-batch step gains against a typical minibatch step's change.
    signal = (
        -full_change / scale
        if scale and full_change is not None and math.isfinite(full_change)
        else None
    )
    return {
        "step": ck.step,
        "lr": ck.lr,
        "train_loss": ck.train_loss,
        "loss": loss.get("loss"),
        "validation_loss": loss.get("validation_loss"),
        "finite": loss.get("finite"),
        "grad_norm": grad.get("grad_norm"),
        "param_norm": grad.get("param_norm"),
        "distance_from_start": grad.get("distance_from_start"),
        "grad_param_cosine": extra.get("grad_param_cosine"),
        "curvature_along_gradient": curv.get("along_gradient"),
        "lr_curvature": curv.get("lr_curvature"),
        "curvature_along_step": curv.get("along_step"),
        "predicted_change": curv.get("predicted_change"),
        "predicted_uphill": curv.get("predicted_uphill"),
        "lambda_min": lz.get("lambda_min"),
        "lambda_max": lz.get("lambda_max"),
        "lr_lambda_max": lz.get("lr_lambda_max"),
        "stability_threshold": lz.get("stability_threshold"),
        "preconditioned_lr_lambda_max": pre.get("lr_lambda_max"),
        "preconditioned_threshold": pre.get("threshold"),
        "escape_delta": min(deltas) if deltas else None,
        "run_batch_size": ck.batch_size,
        "probe_batch_size": noise.get("batch_size"),
        "noise_trace": noise.get("trace"),
        "noise_scale": noise.get("noise_scale"),
        "snr": noise.get("snr"),
        "uphill_fraction_minibatch": steps.get("uphill_fraction_minibatch"),
        "full_step_uphill": steps.get("full_step_uphill"),
        "full_step_change": full_change,
        "minibatch_change_scale": scale,
        "noise_signal": signal,
        "optimizer": steps.get("optimizer"),
        "details": dict(details),
    }


def summarize_run(
    run_dir: Path | str,
    records: list[Record],
    *,
    preset: str = "standard",
    target_loss: float | None = None,
    device: str = "cpu",
    dtype: str = "auto",
    thresholds: Thresholds | Mapping[str, float] | None = None,
    name: str | None = None,
    memory_budget: str | int | None = None,
) -> dict[str, Any]:
    """The run-level tests and the verdict: the full report (schema ``obstacle.report/1``)."""
    from obstacle.battery import landscape, sequence

    chosen = get_preset(preset)
    limits = _thresholds(thresholds)
    session = _Session(Path(run_dir), chosen, device, dtype, memory_budget)
    ordered = sorted(records, key=lambda r: int(r["step"]))
    steps = [int(r["step"]) for r in ordered]
    before = session.engine.cost.copy()
    run: dict[str, Any] = {
        "name": name or Path(run_dir).name,
        "num_parameters": session.engine.num_parameters,
        "num_checkpoints": len(ordered),
        "num_probe_batches": session.engine.num_batches,
        "batch_size": session.probe.manifest.batch_size,
        "preset": chosen.name,
        "device": str(session.engine.device),
        "dtype": str(session.engine.dtype).removeprefix("torch."),
        "precision": session.precision.as_dict(),
        "memory_plan": session.plan.as_dict(),
        "target_loss": target_loss,
        "uphill_step_rate": sequence.uphill_step_rate(ordered),
        "curvature_variation": sequence.curvature_variation(ordered),
        "trends": sequence.trends(ordered),
    }
    log = sequence.read_train_log(run_dir)
    run["train_log"] = (
        {
            "steps": [e["step"] for e in log],
            "loss": [e["loss"] for e in log],
            **sequence.train_log_uphill(log),
        }
        if log
        else None
    )
    thetas = _Thetas(session, steps)
    if len(thetas) >= 2:
        alphas = [
            -0.5 + 2.0 * i / (chosen.interpolation_points - 1)
            for i in range(chosen.interpolation_points)
        ]
        run["interpolation"] = landscape.linear_interpolation(
            session.engine, thetas[0], thetas[-1], alphas=alphas
        )
        if chosen.checkpoint_interpolation_points:
            run["checkpoint_interpolation"] = landscape.interpolation_from_checkpoints(
                session.engine,
                thetas,
                steps,
                thetas[-1],
                points=chosen.checkpoint_interpolation_points,
            )
        run["subspace"] = (
            landscape.subspace(session.engine, thetas, steps, grid=chosen.subspace_grid)
            if chosen.subspace_grid and len(thetas) >= 2
            else None
        )
    else:
        run["interpolation"] = None
        run["subspace"] = None
    run["cost"] = {
        "run_level": (session.engine.cost - before).as_dict(),
        "checkpoints": _total_cost(ordered),
    }
    facts = run_facts(ordered, limits)
    verdict = judge_facts(facts, target_loss=target_loss, thresholds=limits)
    report: dict[str, Any] = to_json(
        {
            "schema": REPORT_SCHEMA,
            "verdict": verdict,
            "facts": facts.as_dict(),
            "checkpoints": ordered,
            "run": run,
        }
    )
    return report


def analyze(
    run_dir: Path | str,
    *,
    preset: str = "standard",
    target_loss: float | None = None,
    device: str = "cpu",
    dtype: str = "auto",
    thresholds: Thresholds | Mapping[str, float] | None = None,
    progress: Progress | None = None,
    name: str | None = None,
    memory_budget: str | int | None = None,
) -> dict[str, Any]:
    """Analyse every checkpoint of ``run_dir`` in order (Lanczos warm-started), then the run."""
    steps = checkpoint_steps(Path(run_dir))
    analyzer = SequenceAnalyzer(
        run_dir, preset=preset, device=device, dtype=dtype, memory_budget=memory_budget
    )
    records = []
    for i, step in enumerate(steps):
        if progress:
            progress("checkpoint", i, len(steps))
        records.append(analyzer.record(step, progress))
    del analyzer  # its warm-start vectors: the run-level tests bind their own
    if progress:
        progress("checkpoint", len(steps), len(steps))
        progress("run", 0, 1)
    report = summarize_run(
        run_dir,
        records,
        preset=preset,
        target_loss=target_loss,
        device=device,
        dtype=dtype,
        thresholds=thresholds,
        name=name,
        memory_budget=memory_budget,
    )
    if progress:
        progress("run", 1, 1)
    return report


def _thresholds(value: Thresholds | Mapping[str, float] | None) -> Thresholds:
    if value is None:
        return DEFAULT_THRESHOLDS
    if isinstance(value, Thresholds):
        return value
    return DEFAULT_THRESHOLDS.override(dict(value))


def _total_cost(records: list[Record]) -> dict[str, int]:
    total = {"loss_evals": 0, "grad_evals": 0, "hvp_evals": 0}
    for r in records:
        for detail in (r.get("details") or {}).values():
            for k, v in ((detail or {}).get("cost") or {}).items():
                total[k] = total.get(k, 0) + int(v)
    return total


def to_json(value: Any) -> Any:
    """Plain JSON types: tensors to lists, non-finite floats to None, tuples to lists."""
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, torch.Tensor):
        return to_json(value.detach().cpu().tolist()) if value.dim() else to_json(float(value))
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    try:
        import numpy as np

        if isinstance(value, np.generic):
            return to_json(value.item())
        if isinstance(value, np.ndarray):
            return to_json(value.tolist())
    except ImportError:  # pragma: no cover
        pass
    return str(value)

"""Checkpoints: weights in safetensors with step/lr/loss in the header, and the optimizer's state.

Most runs use Adam or SGD with momentum, whose step is not ``-lr·g``; when the optimizer is given
its class, hyperparameters and per-parameter state are saved beside the weights (also
safetensors) so the battery can take the step the run really takes.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from obstacle._validation import check_float, check_int
from obstacle.artifacts.layout import (
    CHECKPOINT_DIR,
    TRAIN_LOG,
    checkpoint_filename,
    header_batch_size,
    optimizer_filename,
)
from obstacle.artifacts.manifest import ProbeManifest
from obstacle.artifacts.safetensors_header import read_header
from obstacle.errors import CheckpointError

CHECKPOINT_FORMAT = "obstacle.checkpoint/1"
OPTIMIZER_FORMAT = "obstacle.optimizer/1"

# Hyperparameters worth keeping: every scalar a torch optimizer's param group holds.
_SCALAR_TYPES = (int, float, bool, str)


@dataclass
class OptimizerState:
    """An optimizer's class, hyperparameters and per-parameter state, keyed by parameter name."""

    kind: str
    hyperparameters: dict[str, Any]
    state: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)


@dataclass
class Checkpoint:
    step: int
    lr: float
    train_loss: float | None
    state: dict[str, torch.Tensor]
    optimizer: OptimizerState | None = None
    path: Path | None = None
    batch_size: int | None = None
    """Examples per optimizer step in the run (all devices and accumulation steps together),
    when the run said so: gradient noise is judged at this batch size, not the probe's."""


def save_checkpoint(
    run_dir: str | Path,
    model_or_state_dict: nn.Module | Mapping[str, torch.Tensor],
    *,
    step: int,
    lr: float,
    train_loss: float | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    batch_size: int | None = None,
) -> Path:
    """Write ``RUN_DIR/checkpoints/step_<NNNNNNNNN>.safetensors`` (and the optimizer state).

    ``optimizer`` needs the model (not a bare state dict) to name its parameters.
    ``batch_size`` is the run's own batch: examples per optimizer step, summed over devices and
    gradient-accumulation steps. Gradient noise is judged at it; without it, at the probe's batch.
    Files are written to a temporary name and renamed, so a crash leaves no partial checkpoint.
    """
    metadata = checkpoint_header(step=step, lr=lr, train_loss=train_loss, batch_size=batch_size)
    step = int(metadata["step"])
    directory = Path(run_dir) / CHECKPOINT_DIR
    directory.mkdir(parents=True, exist_ok=True)
    if isinstance(model_or_state_dict, nn.Module):
        state = model_or_state_dict.state_dict()
    elif isinstance(model_or_state_dict, Mapping):
        state = dict(model_or_state_dict)
    else:
        raise CheckpointError(
            f"save_checkpoint needs an nn.Module or a state dict; got {type(model_or_state_dict).__name__}."
        )
    tensors = {k: snapshot_tensor(v) for k, v in state.items() if isinstance(v, torch.Tensor)}
    if optimizer is not None:
        if not isinstance(model_or_state_dict, nn.Module):
            raise CheckpointError(
                "save_checkpoint(optimizer=...) needs the model itself, not a state dict, to name the "
                "optimizer's parameters. Pass the nn.Module."
            )
        opt = optimizer_state(model_or_state_dict, optimizer)
        metadata["optimizer"] = json.dumps(
            {"class": opt.kind, "hyperparameters": opt.hyperparameters}
        )
        opt_tensors = {
            f"{key}/{name}": snapshot_tensor(t)
            for name, s in opt.state.items()
            for key, t in s.items()
        }
        _atomic_save(
            opt_tensors,
            {"format": OPTIMIZER_FORMAT, **metadata},
            directory / optimizer_filename(step),
        )
    path = directory / checkpoint_filename(step)
    _atomic_save(tensors, metadata, path)
    return path


def checkpoint_header(
    *, step: int, lr: float, train_loss: float | None, batch_size: int | None
) -> dict[str, str]:
    """The safetensors ``__metadata__`` of a checkpoint: format, step, lr, train loss, batch size.

    The one place it is written, for ``save_checkpoint`` and the SDK's uploads alike.
    """
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "step": str(check_int("step", step, low=0)),
        "lr": repr(check_float("lr", lr, low=0.0)),
    }
    if train_loss is not None and not isinstance(train_loss, bool):
        # Non-finite losses are evidence (divergence): keep them.
        metadata["train_loss"] = repr(float(train_loss))
    if batch_size is not None:
        metadata["batch_size"] = str(check_int("batch_size", batch_size, low=1))
    return metadata


def append_train_log(run_dir: str | Path, *, step: int, lr: float, loss: float) -> None:
    """Append one ``{step, lr, loss}`` line of a logged minibatch loss to ``train_log.jsonl``.

    The run directory is created if it is missing (the log may come before the probe).
    """
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    with (Path(run_dir) / TRAIN_LOG).open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"step": int(step), "lr": float(lr), "loss": float(loss)}) + "\n")


def load_checkpoint(path: str | Path, manifest: ProbeManifest | None = None) -> Checkpoint:
    """Read a checkpoint (safetensors, or a legacy ``.pt`` via ``weights_only=True``).

    With a manifest, every missing, extra or mis-shaped tensor is listed in the error.
    """
    p = Path(path)
    if p.suffix == ".pt":
        return _load_legacy(p, manifest)
    header = read_header(p)
    if manifest is not None:
        manifest.check_header(header, name=str(p))
    meta = header.metadata
    try:
        step = int(meta["step"])
        lr = float(meta["lr"])
    except (KeyError, ValueError):
        raise CheckpointError(
            f"{p}: the header metadata must hold 'step' and 'lr' (got {sorted(meta)}). "
            "Write checkpoints with obstacle.save_checkpoint(run_dir, model, step=..., lr=...)."
        ) from None
    train_loss = float(meta["train_loss"]) if "train_loss" in meta else None
    batch_size = header_batch_size(meta, str(p))
    try:
        state = load_file(str(p))
    except SafetensorError as exc:
        raise CheckpointError(
            f"{p}: unreadable safetensors data ({exc}); write the checkpoint again."
        ) from None
    optimizer = None
    if "optimizer" in meta:
        optimizer = _load_optimizer(p.with_name(optimizer_filename(step)), meta["optimizer"])
    return Checkpoint(
        step=step,
        lr=lr,
        train_loss=train_loss,
        state=state,
        optimizer=optimizer,
        path=p,
        batch_size=batch_size,
    )


def _load_legacy(path: Path, manifest: ProbeManifest | None) -> Checkpoint:
    import re

    match = re.search(r"step_(\d+)", path.name)
    step = int(match.group(1)) if match else 0
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError and others for unsafe content
        raise CheckpointError(
            f"{path}: a legacy .pt checkpoint must be a plain state dict loadable with "
            f"torch.load(weights_only=True); it is not ({type(exc).__name__}). Re-save it with "
            "obstacle.save_checkpoint."
        ) from None
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: a legacy .pt checkpoint must hold a state dict of tensors.")
    state = {str(k): v for k, v in obj.items()}
    if manifest is not None:
        _check_state(state, manifest, path)
    return Checkpoint(step=step, lr=math.nan, train_loss=None, state=state, path=path)


def _check_state(state: Mapping[str, torch.Tensor], manifest: ProbeManifest, path: Path) -> None:
    expected = {s.name: s.shape for s in manifest.state_specs}
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if list(state[k].shape) != expected[k])
    if missing or extra or wrong:
        raise CheckpointError(
            f"{path}: the checkpoint does not match the probe's model (missing: {missing or 'none'}; "
            f"unexpected: {extra or 'none'}; mis-shaped: {wrong or 'none'}). Save the state_dict of "
            "the model the probe was captured from."
        )


def _load_optimizer(path: Path, header_json: str) -> OptimizerState:
    try:
        info = json.loads(header_json)
        kind = str(info["class"])
        hyper = dict(info["hyperparameters"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise CheckpointError(
            f"{path}: the 'optimizer' header entry is malformed; save the checkpoint again."
        ) from None
    if not path.exists():
        raise CheckpointError(
            f"{path}: the checkpoint names a {kind} optimizer but its state file is missing. "
            "Upload or copy the .optim.safetensors file written beside the checkpoint."
        )
    try:
        flat = load_file(str(path))
    except SafetensorError as exc:
        raise CheckpointError(f"{path}: unreadable optimizer state ({exc}).") from None
    state: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in flat.items():
        slot, _, name = key.partition("/")
        state.setdefault(name, {})[slot] = tensor
    return OptimizerState(kind=kind, hyperparameters=hyper, state=state)


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> OptimizerState:
    """The optimizer's class, scalar hyperparameters and per-parameter state, keyed by name."""
    names = {id(p): n for n, p in model.named_parameters()}
    groups = optimizer.param_groups
    hyper: dict[str, Any] = {}
    for key, value in groups[0].items():
        if key == "params":
            continue
        if isinstance(value, _SCALAR_TYPES) or value is None:
            hyper[key] = value
        elif isinstance(value, tuple | list) and all(isinstance(v, int | float) for v in value):
            hyper[key] = list(value)
    if len(groups) > 1:
        # Per-parameter hyperparameters when groups differ (e.g. no weight decay on biases).
        per_param: dict[str, dict[str, Any]] = {}
        for group in groups:
            overrides = {k: v for k, v in group.items() if k in hyper and v != hyper[k]}
            for p in group["params"]:
                if overrides and id(p) in names:
                    per_param[names[id(p)]] = overrides
        hyper["per_parameter"] = per_param
    state: dict[str, dict[str, torch.Tensor]] = {}
    for param, slots in optimizer.state.items():
        name = names.get(id(param))
        if name is None:
            raise CheckpointError(
                "The optimizer holds a parameter that is not in the model; save_checkpoint needs the "
                "model the optimizer was built on."
            )
        state[name] = {
            key: (value if isinstance(value, torch.Tensor) else torch.tensor(float(value)))
            for key, value in slots.items()
            if isinstance(value, torch.Tensor | int | float)
        }
    return OptimizerState(kind=type(optimizer).__name__, hyperparameters=hyper, state=state)


def snapshot_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """A detached CPU copy with its own storage (safetensors refuses shared, tied storage)."""
    return tensor.detach().to("cpu").clone().contiguous()


def _atomic_save(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)

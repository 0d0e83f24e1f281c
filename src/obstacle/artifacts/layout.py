"""Where things live in a run directory.

RUN_DIR/
  probe/manifest.json           names, shapes, dtypes, batch size, versions, content hash
  probe/program.pt2             the model and its loss as one torch.export program
  probe/data.safetensors        K training minibatches (+ an optional validation batch)
  checkpoints/step_000000100.safetensors        weights; step, lr, train_loss, batch_size in the header
  checkpoints/step_000000100.optim.safetensors  optimizer class, hyperparameters and state
  train_log.jsonl               optional {step, lr, loss} lines of logged minibatch losses
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from obstacle.errors import CheckpointError

PROBE_DIR = "probe"
PROBE_MANIFEST = "manifest.json"
PROBE_PROGRAM = "program.pt2"
PROBE_DATA = "data.safetensors"
CHECKPOINT_DIR = "checkpoints"
OPTIMIZER_SUFFIX = ".optim.safetensors"
TRAIN_LOG = "train_log.jsonl"

_CHECKPOINT_RE = re.compile(r"^step_(\d{9,})\.safetensors$")
_LEGACY_RE = re.compile(r"^step_(\d{9,})\.pt$")


def checkpoint_filename(step: int) -> str:
    """``step_000000100.safetensors`` for step 100."""
    return f"step_{step:09d}.safetensors"


def optimizer_filename(step: int) -> str:
    """``step_000000100.optim.safetensors`` for step 100."""
    return f"step_{step:09d}{OPTIMIZER_SUFFIX}"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """The (step, path) of every checkpoint in ``run_dir``, sorted by step.

    Legacy ``step_*.pt`` files are listed too; a step with both keeps the safetensors file.
    """
    directory = Path(run_dir) / CHECKPOINT_DIR
    if not directory.is_dir():
        return []
    found: dict[int, Path] = {}
    for path in directory.iterdir():
        match = _CHECKPOINT_RE.match(path.name)
        if match:
            found[int(match.group(1))] = path
    for path in directory.iterdir():
        match = _LEGACY_RE.match(path.name)
        if match and int(match.group(1)) not in found:
            found[int(match.group(1))] = path
    return sorted(found.items())


def header_batch_size(metadata: Mapping[str, str], name: str) -> int | None:
    """The run's batch size from a checkpoint header's ``batch_size`` entry (None when absent).

    A positive decimal integer of at most 12 digits; anything else is a CheckpointError.
    """
    if "batch_size" not in metadata:
        return None
    text = metadata["batch_size"]
    if not (text.isascii() and text.isdigit() and len(text) <= 12 and int(text) > 0):
        raise CheckpointError(
            f"{name}: the header's 'batch_size' must be a positive integer (examples per optimizer "
            f"step); got {text[:40]!r}. Save the checkpoint again with "
            "obstacle.save_checkpoint(..., batch_size=N)."
        )
    return int(text)

"""``Run``: a run on the service that checkpoints are logged to while training goes on.

``log_checkpoint`` copies the weights (and optimizer state) in the caller's thread — training may
mutate the model as soon as it returns — and a background thread writes them to a temporary
safetensors file (straight from the tensors' memory, no serialized copy), lets the copy go, and
streams the file to the service. The queue between the two is bounded: when uploads fall behind,
``log_checkpoint`` waits (backpressure) instead of holding an unbounded number of copies in memory.
"""

from __future__ import annotations

import contextlib
import queue
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from obstacle.client._models import AnalysisResult, AnalysisStatus, RunInfo
from obstacle.errors import InputError, ObstacleError, ProbeError, TransportError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from obstacle.battery.probe import Probe
    from obstacle.client._client import Client

__all__ = ["Run", "packed_probe"]


@dataclass
class _Snapshot:
    step: int
    lr: float
    train_loss: float | None
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    optimizer_tensors: dict[str, torch.Tensor] | None
    optimizer_metadata: dict[str, str] | None

    def write(self, directory: Path) -> tuple[Path, Path | None]:
        """Save the checkpoint (and optimizer state) files into ``directory``; drop the tensors.

        ``save_file`` writes from the tensors' memory, so the snapshot is the only copy, and it
        is let go as soon as it is on disk: the upload that follows holds only a file.
        """
        from safetensors.torch import save_file

        from obstacle.artifacts.layout import checkpoint_filename, optimizer_filename

        checkpoint = directory / checkpoint_filename(self.step)
        save_file(self.tensors, checkpoint, metadata=self.metadata)
        self.tensors = {}
        optim = None
        if self.optimizer_tensors is not None:
            optim = directory / optimizer_filename(self.step)
            save_file(self.optimizer_tensors, optim, metadata=self.optimizer_metadata)
            self.optimizer_tensors = {}
        return checkpoint, optim


class Run:
    """A handle on one run: log checkpoints during training, then analyse them.

    Use it as a context manager (``with client.create_run(...) as run:``) so the last uploads
    finish (``close``) before the process moves on.
    """

    def __init__(self, client: Client, info: RunInfo, *, queue_size: int = 4) -> None:
        if queue_size < 1:
            from obstacle.errors import ParameterError

            raise ParameterError(
                f"The 'queue_size' parameter must be an int in the range [1, inf). Got {queue_size}."
            )
        self.client = client
        self.info = info
        self.uploaded_steps: list[int] = []
        self._has_probe = info.probe is not None
        self._queue: queue.Queue[_Snapshot | None] = queue.Queue(maxsize=queue_size)
        self._error: ObstacleError | None = None
        self._closed = False
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def name(self) -> str:
        return self.info.name

    def __repr__(self) -> str:
        return f"Run(id={self.id!r}, name={self.name!r})"

    # --- probe ----------------------------------------------------------------------------

    def upload_probe(self, probe: Probe | str | Path) -> bool:
        """Upload the probe (a Probe, a run directory, or its ``probe/``); False if unchanged."""
        with packed_probe(probe) as bundle:
            created = self.client.put_probe(self.id, bundle)
        self._has_probe = True
        return created

    # --- checkpoints ----------------------------------------------------------------------

    def log_checkpoint(
        self,
        step: int,
        model: nn.Module,
        *,
        lr: float,
        train_loss: float | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        batch_size: int | None = None,
    ) -> None:
        """Snapshot ``model`` (and ``optimizer``) at ``step`` now; upload it in the background.

        ``batch_size``: the run's examples per optimizer step (over devices and accumulation);
        gradient noise is judged at it.

        Returns once the copy is taken. Blocks while ``queue_size`` snapshots wait for upload.
        Raises the error of an earlier failed upload (later snapshots are not sent after one).
        """
        self._raise_pending()
        if self._closed:
            raise InputError(f"run {self.id} is closed; log checkpoints before run.close().")
        if not self._has_probe:
            raise InputError(
                f"run {self.id} has no probe yet; the service checks checkpoints against it. Pass "
                "probe= to client.create_run, or call run.upload_probe(...) first."
            )
        snapshot = _snapshot(
            step, model, lr=lr, train_loss=train_loss, optimizer=optimizer, batch_size=batch_size
        )
        self._ensure_thread()
        self._queue.put(snapshot)

    def flush(self) -> None:
        """Wait until every logged checkpoint is uploaded; raise the first upload error."""
        if self._thread is not None:
            self._queue.join()
        self._raise_pending()

    def close(self) -> None:
        """Flush, then stop the upload thread. Idempotent."""
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            if self._thread is not None:
                self._queue.put(None)
                self._thread.join()
                self._thread = None

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
            return
        # Leaving on an exception: stop without masking it with an upload error.
        with contextlib.suppress(ObstacleError):
            self.close()

    def _raise_pending(self) -> None:
        error = self._error
        if error is not None:
            raise error

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._work, name=f"obstacle-upload-{self.id[:8]}", daemon=True
                )
                self._thread.start()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                if self._error is None:
                    self._upload(item)
            except ObstacleError as exc:
                self._error = exc
            except Exception as exc:  # a bug must not leave flush() waiting forever
                self._error = TransportError(
                    f"uploading checkpoint {item.step if item else '?'} of run {self.id} failed "
                    f"({type(exc).__name__}: {exc})."
                )
            finally:
                self._queue.task_done()

    def _upload(self, item: _Snapshot) -> None:
        with tempfile.TemporaryDirectory(prefix="obstacle-upload-") as tmp:
            checkpoint, optim = item.write(Path(tmp))
            self.client.put_checkpoint(self.id, item.step, checkpoint)
            if optim is not None:
                self.client.put_optimizer_state(self.id, item.step, optim)
        self.uploaded_steps.append(item.step)

    # --- analyses -------------------------------------------------------------------------

    def analyze(
        self,
        *,
        preset: str = "standard",
        target_loss: float | None = None,
        steps: list[int] | None = None,
        wait: bool = True,
        timeout: float | None = None,
        progress: bool | None = None,
    ) -> AnalysisResult | AnalysisStatus:
        """Flush the uploads and analyse the run.

        With ``wait`` (default) poll until it finishes, with a progress bar on a terminal
        (``progress=False`` turns it off), and return the :class:`AnalysisResult`; otherwise
        return the queued :class:`AnalysisStatus` at once.
        """
        self.flush()
        status = self.client.start_analysis(
            self.id, preset=preset, target_loss=target_loss, steps=steps
        )
        if not wait:
            return status
        return self.client.wait_analysis(status.id, timeout=timeout, progress=progress)


def _snapshot(
    step: int,
    model: nn.Module,
    *,
    lr: float,
    train_loss: float | None,
    optimizer: torch.optim.Optimizer | None,
    batch_size: int | None = None,
) -> _Snapshot:
    import json

    import torch

    from obstacle.battery.checkpoint import (
        OPTIMIZER_FORMAT,
        checkpoint_header,
        optimizer_state,
        snapshot_tensor,
    )

    metadata = checkpoint_header(step=step, lr=lr, train_loss=train_loss, batch_size=batch_size)
    step, lr = int(metadata["step"]), float(metadata["lr"])
    if not isinstance(model, torch.nn.Module):
        raise InputError(
            f"log_checkpoint needs the nn.Module being trained; got {type(model).__name__}."
        )
    # The same header as obstacle.save_checkpoint writes, so uploads and run directories agree.
    tensors = {
        k: snapshot_tensor(v) for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)
    }
    optimizer_tensors = optimizer_metadata = None
    if optimizer is not None:
        state = optimizer_state(model, optimizer)
        metadata["optimizer"] = json.dumps(
            {"class": state.kind, "hyperparameters": state.hyperparameters}
        )
        optimizer_tensors = {
            f"{key}/{name}": snapshot_tensor(t)
            for name, slots in state.state.items()
            for key, t in slots.items()
        }
        optimizer_metadata = {"format": OPTIMIZER_FORMAT, **metadata}
    return _Snapshot(step, lr, train_loss, tensors, metadata, optimizer_tensors, optimizer_metadata)


@contextlib.contextmanager
def packed_probe(probe: Probe | str | Path) -> Iterator[Path]:
    """The bundle file of a Probe, a run directory holding ``probe/``, or a ``probe/`` directory.

    Packed into a temporary directory (removed on leaving), so the bundle is uploaded from disk.
    """
    from obstacle.artifacts.bundle import pack_probe
    from obstacle.artifacts.layout import PROBE_DIR, PROBE_MANIFEST

    if isinstance(probe, str | Path):
        path = Path(probe)
        if (path / PROBE_DIR / PROBE_MANIFEST).is_file():
            path = path / PROBE_DIR
        if not path.is_dir():
            raise ProbeError(
                f"{path}: no such directory. Pass a run directory (holding probe/) or a captured "
                "obstacle.Probe."
            )
        with tempfile.TemporaryDirectory(prefix="obstacle-probe-") as tmp:
            yield pack_probe(path, Path(tmp) / "probe.zip")
        return
    save = getattr(probe, "save", None)
    if save is None:
        raise ProbeError(
            f"probe= must be an obstacle.Probe, a run directory or a probe directory; got "
            f"{type(probe).__name__}."
        )
    with tempfile.TemporaryDirectory(prefix="obstacle-probe-") as tmp:
        yield pack_probe(save(Path(tmp) / "run"), Path(tmp) / "probe.zip")

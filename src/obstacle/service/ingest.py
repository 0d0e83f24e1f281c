"""Accept a received upload: validate it without torch, put the file in place, then commit its row.

Each function is idempotent: the same bytes again change nothing (``created`` is False), other
bytes where a file already is are a 409. Store keys carry the content's SHA-256, so a key never
gets other bytes, and a row is committed only after its file is complete at its key: a rejected
or interrupted upload leaves no row and no file a reader would use. The spooled file is never
changed again, so a local store on its filesystem takes it as a hardlink instead of a copy.
"""

from __future__ import annotations

import math
import struct
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError

from obstacle._validation import check_float
from obstacle.artifacts.bundle import BUNDLE_MEMBERS, nonfinite_tensors, unpack_probe_bundle
from obstacle.artifacts.layout import PROBE_DIR, header_batch_size
from obstacle.artifacts.manifest import ProbeManifest
from obstacle.artifacts.safetensors_header import SafetensorsHeader, read_header_bytes
from obstacle.artifacts.untrusted_json import JsonLimits, parse_untrusted_json
from obstacle.errors import CheckpointError
from obstacle.platform.db import SessionFactory, session_scope
from obstacle.platform.keys import checkpoint_key, optimizer_key, probe_prefix
from obstacle.platform.models import Checkpoint, Probe
from obstacle.platform.store import ArtifactStore
from obstacle.service.problems import ProblemError
from obstacle.service.uploads import ReceivedUpload

__all__ = ["ingest_checkpoint", "ingest_optimizer_state", "ingest_probe", "no_probe"]


# The optimizer entry holds the class name and scalar hyperparameters (per parameter, at most).
OPTIMIZER_JSON = JsonLimits(max_bytes=2**20, max_depth=8)


def _conflict(what: str, existing: str, received: str, fix: str) -> ProblemError:
    return ProblemError(
        409,
        f"{what} already holds other bytes (SHA-256 {existing}); this upload's is {received}. "
        f"Uploaded files never change: {fix}",
        slug="already-uploaded",
        title="Different bytes were already uploaded here",
    )


def no_probe(run_id: uuid.UUID) -> ProblemError:
    return ProblemError(
        409,
        f"Run {run_id} has no probe yet; checkpoints are checked against it. Upload the probe first "
        f"with PUT /v1/runs/{run_id}/probe.",
        slug="probe-missing",
        title="The run has no probe",
    )


def ingest_probe(
    sessions: SessionFactory,
    store: ArtifactStore,
    run_id: uuid.UUID,
    upload: ReceivedUpload,
    *,
    tmp_dir: Path,
    max_bytes: int,
) -> tuple[Probe, bool]:
    """Check the probe bundle (zip, manifest, data, program archive) and store it unpacked."""
    with session_scope(sessions) as session:
        existing = session.get(Probe, run_id)
    if existing is not None:
        return _settle_probe(existing, run_id, upload), False
    with tempfile.TemporaryDirectory(prefix="probe-", dir=tmp_dir) as work:
        bundle = unpack_probe_bundle(upload.path, Path(work) / PROBE_DIR, max_bytes=max_bytes)
        prefix = probe_prefix(run_id, upload.sha256)
        for name in BUNDLE_MEMBERS:
            store.put_file(bundle.directory / name, f"{prefix}/{name}", link=True)
    row = Probe(
        run_id=run_id,
        bundle_sha256=upload.sha256,
        content_hash=bundle.content_hash,
        manifest=bundle.manifest.model_dump(mode="json"),
        size_bytes=upload.size,
        store_prefix=prefix,
    )
    try:
        with session_scope(sessions) as session:
            session.add(row)
        return row, True
    except IntegrityError:
        pass
    with session_scope(sessions) as session:
        winner = session.get(Probe, run_id)
    if winner is None or winner.bundle_sha256 != upload.sha256:
        store.delete_prefix(prefix)
    if winner is None:
        raise _run_gone(run_id)
    return _settle_probe(winner, run_id, upload), False


def _settle_probe(existing: Probe, run_id: uuid.UUID, upload: ReceivedUpload) -> Probe:
    if existing.bundle_sha256 != upload.sha256:
        raise _conflict(
            f"The probe of run {run_id}",
            existing.bundle_sha256,
            upload.sha256,
            "its checkpoints were checked against this probe. Create a new run for a new probe.",
        )
    return existing


def _run_gone(run_id: uuid.UUID) -> ProblemError:
    return ProblemError(
        404, f"Run {run_id} was deleted during the upload.", slug="not-found", title="Not found"
    )


@dataclass(frozen=True)
class CheckpointMeta:
    lr: float
    train_loss: float | None
    optimizer_class: str | None


def ingest_checkpoint(
    sessions: SessionFactory,
    store: ArtifactStore,
    run_id: uuid.UUID,
    step: int,
    upload: ReceivedUpload,
    *,
    lr: float | None,
    train_loss: float | None,
) -> tuple[Checkpoint, bool]:
    """Check a checkpoint against the run's probe manifest and store it under its step."""
    with session_scope(sessions) as session:
        probe = session.get(Probe, run_id)
        existing = session.get(Checkpoint, (run_id, step))
    if probe is None:
        raise no_probe(run_id)
    if existing is not None:
        return _settle_checkpoint(existing, run_id, upload), False
    name = f"checkpoint step {step}"
    header = _read_header(upload, name)
    ProbeManifest.model_validate(probe.manifest).check_header(header, name=name)
    meta = checkpoint_metadata(header.metadata, step=step, lr=lr, train_loss=train_loss, name=name)
    nonfinite = nonfinite_tensors(upload.path, header)
    if meta.train_loss is not None and not math.isfinite(meta.train_loss):
        nonfinite.append("train_loss")
    key = checkpoint_key(run_id, step, upload.sha256)
    store.put_file(upload.path, key, link=True)
    row = Checkpoint(
        run_id=run_id,
        step=step,
        sha256=upload.sha256,
        size_bytes=upload.size,
        store_key=key,
        lr=meta.lr,
        # Databases and JSON disagree on NaN: a non-finite loss is kept as the "train_loss" flag.
        train_loss=meta.train_loss
        if meta.train_loss is None or math.isfinite(meta.train_loss)
        else None,
        nonfinite=nonfinite,
        optimizer_class=meta.optimizer_class,
    )
    try:
        with session_scope(sessions) as session:
            session.add(row)
        return row, True
    except IntegrityError:
        pass
    with session_scope(sessions) as session:
        winner = session.get(Checkpoint, (run_id, step))
    if winner is None or winner.sha256 != upload.sha256:
        store.delete(key)
    if winner is None:
        raise _run_gone(run_id)
    return _settle_checkpoint(winner, run_id, upload), False


def _settle_checkpoint(
    existing: Checkpoint, run_id: uuid.UUID, upload: ReceivedUpload
) -> Checkpoint:
    if existing.sha256 != upload.sha256:
        raise _conflict(
            f"Step {existing.step} of run {run_id}",
            existing.sha256,
            upload.sha256,
            "send this checkpoint under its own step, or create a new run.",
        )
    return existing


def ingest_optimizer_state(
    sessions: SessionFactory,
    store: ArtifactStore,
    run_id: uuid.UUID,
    step: int,
    upload: ReceivedUpload,
) -> tuple[Checkpoint, bool]:
    """Check an optimizer-state file against the probe's parameters and attach it to its checkpoint."""
    with session_scope(sessions) as session:
        probe = session.get(Probe, run_id)
        checkpoint = session.get(Checkpoint, (run_id, step))
    if probe is None:
        raise no_probe(run_id)
    if checkpoint is None:
        raise ProblemError(
            404,
            f"Run {run_id} has no checkpoint at step {step}; upload it first with "
            f"PUT /v1/runs/{run_id}/checkpoints/{step}, then its optimizer state.",
            slug="not-found",
            title="Not found",
        )
    if checkpoint.optimizer_sha256 is not None:
        return _settle_optimizer(checkpoint, run_id, upload), False
    name = f"optimizer state of step {step}"
    if checkpoint.optimizer_class is None:
        raise CheckpointError(
            f"{name}: the checkpoint at step {step} names no optimizer in its header, so nothing would "
            "read this state. Save the checkpoint with obstacle.save_checkpoint(..., optimizer=opt)."
        )
    header = _read_header(upload, name)
    _check_optimizer_header(
        header,
        ProbeManifest.model_validate(probe.manifest),
        step=step,
        name=name,
        path=upload.path,
    )
    nonfinite = [f"optimizer/{t}" for t in nonfinite_tensors(upload.path, header)]
    key = optimizer_key(run_id, step, upload.sha256)
    store.put_file(upload.path, key, link=True)
    with session_scope(sessions) as session:
        updated = session.execute(
            update(Checkpoint)
            .where(
                Checkpoint.run_id == run_id,
                Checkpoint.step == step,
                Checkpoint.optimizer_sha256.is_(None),
            )
            .values(
                optimizer_sha256=upload.sha256,
                optimizer_size_bytes=upload.size,
                optimizer_store_key=key,
                nonfinite=[*checkpoint.nonfinite, *nonfinite],
            )
        )
        won = bool(getattr(updated, "rowcount", 0))
        current = session.get(Checkpoint, (run_id, step), populate_existing=True)
    if current is None:
        store.delete(key)
        raise _run_gone(run_id)
    if not won and current.optimizer_sha256 != upload.sha256:
        store.delete(key)
    return _settle_optimizer(current, run_id, upload), won


def _settle_optimizer(
    checkpoint: Checkpoint, run_id: uuid.UUID, upload: ReceivedUpload
) -> Checkpoint:
    if checkpoint.optimizer_sha256 != upload.sha256:
        raise _conflict(
            f"The optimizer state of step {checkpoint.step} of run {run_id}",
            str(checkpoint.optimizer_sha256),
            upload.sha256,
            "create a new run to send other optimizer states.",
        )
    return checkpoint


def _read_header(upload: ReceivedUpload, name: str) -> SafetensorsHeader:
    with upload.path.open("rb") as handle:
        return read_header_bytes(handle, total_size=upload.size, name=name)


def checkpoint_metadata(
    metadata: dict[str, str], *, step: int, lr: float | None, train_loss: float | None, name: str
) -> CheckpointMeta:
    """Reconcile the header's ``__metadata__`` (as save_checkpoint writes it) with the query."""
    if "step" in metadata:
        written = _number(metadata, "step", name)
        if written != step:
            raise CheckpointError(
                f"{name}: the file's header says step {metadata['step']}, but it was sent to step {step}. "
                f"Send it to /checkpoints/{metadata['step']}, or save it again with the right step."
            )
    chosen_lr = _agree("lr", _number(metadata, "lr", name), lr, name)
    if chosen_lr is None:
        raise CheckpointError(
            f"{name}: no learning rate. Save the checkpoint with obstacle.save_checkpoint(..., lr=...) "
            "or send it with the query parameter ?lr=."
        )
    chosen_lr = check_float("lr", chosen_lr, low=0.0)
    chosen_loss = _agree("train_loss", _number(metadata, "train_loss", name), train_loss, name)
    header_batch_size(metadata, name)  # the worker reads it; refuse a bad one here, not there
    optimizer_class = None
    if "optimizer" in metadata:
        info = parse_untrusted_json(
            metadata["optimizer"],
            what=f"{name}: the header's 'optimizer' entry",
            error=CheckpointError,
            fix="Save the checkpoint again with obstacle.save_checkpoint(..., optimizer=opt)",
            limits=OPTIMIZER_JSON,
        )
        if not (
            isinstance(info, dict)
            and isinstance(info.get("class"), str)
            and 0 < len(info["class"]) <= 200
            and isinstance(info.get("hyperparameters"), dict)
        ):
            raise CheckpointError(
                f"{name}: the header's 'optimizer' entry must be a JSON object with a 'class' name "
                f"and a 'hyperparameters' object; got {metadata['optimizer'][:80]!r}. Save the "
                "checkpoint again with obstacle.save_checkpoint(..., optimizer=opt)."
            )
        optimizer_class = info["class"]
    return CheckpointMeta(lr=chosen_lr, train_loss=chosen_loss, optimizer_class=optimizer_class)


def _number(metadata: dict[str, str], key: str, name: str) -> float | None:
    if key not in metadata:
        return None
    try:
        return float(metadata[key])
    except ValueError:
        raise CheckpointError(
            f"{name}: the header's {key!r} entry must be a number; got {metadata[key][:40]!r}."
        ) from None


def _agree(key: str, written: float | None, sent: float | None, name: str) -> float | None:
    if written is None or sent is None:
        return sent if written is None else written
    same = math.isclose(written, sent, rel_tol=1e-9) or (math.isnan(written) and math.isnan(sent))
    if not same:
        raise CheckpointError(
            f"{name}: the header says {key}={written!r} but the query says {key}={sent!r}. "
            f"Leave out ?{key}= or make it agree with the file."
        )
    return written


_FLOAT_CODES = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"})
_STEP_CODES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
               "I8": "i1", "U8": "u1", "U16": "<u2", "U32": "<u4", "U64": "<u8"}  # fmt: skip


def _check_optimizer_header(
    header: SafetensorsHeader, manifest: ProbeManifest, *, step: int, name: str, path: Path
) -> None:
    """What the workers' optimizer step reads, checked before the file is accepted.

    Tensors are named ``<slot>/<parameter>``; a slot is shaped like its parameter (or a scalar);
    every slot but ``step`` holds floats; ``step`` is one finite count >= 0.
    """
    shapes = {spec.name: spec.shape for spec in manifest.parameters}
    wrong = []
    for key, entry in sorted(header.tensors.items()):
        slot, sep, parameter = key.partition("/")
        if not sep or not slot or parameter not in shapes:
            wrong.append(f"{key}: not <slot>/<parameter of the probe>")
        elif list(entry.shape) not in (shapes[parameter], []):
            wrong.append(
                f"{key}: shape {list(entry.shape)} (parameter {parameter} is {shapes[parameter]})"
            )
        elif slot == "step":
            count = _scalar(path, header, entry.name, entry.dtype)
            if math.prod(entry.shape) != 1 or count is None or not (0 <= count < 2**53):
                wrong.append(
                    f"{key}: the step count must be one finite number >= 0 "
                    f"(dtype {entry.dtype}, shape {list(entry.shape)}, value {count})"
                )
        elif entry.dtype not in _FLOAT_CODES:
            wrong.append(f"{key}: dtype {entry.dtype} (optimizer slots hold floats)")
    if wrong:
        raise CheckpointError(
            f"{name}: the optimizer state does not match the probe's parameters ({'; '.join(wrong[:10])}). "
            "Save it with obstacle.save_checkpoint(run_dir, model, ..., optimizer=opt) for the probe's model."
        )
    if "step" in header.metadata and _number(header.metadata, "step", name) != step:
        raise CheckpointError(
            f"{name}: the file's header says step {header.metadata['step']}, but it was sent to step {step}."
        )


def _scalar(path: Path, header: SafetensorsHeader, tensor: str, dtype: str) -> float | None:
    """The value of a one-element tensor of the file (None if it is not one, or not finite)."""
    entry = header.tensors[tensor]
    size = entry.end - entry.begin
    if dtype == "BF16":
        code, raw_size = "<u2", 2
    elif dtype in _STEP_CODES:
        code, raw_size = _STEP_CODES[dtype], np.dtype(_STEP_CODES[dtype]).itemsize
    else:
        return None
    if size != raw_size:
        return None
    with path.open("rb") as handle:
        handle.seek(path.stat().st_size - header.data_bytes + entry.begin)
        raw = handle.read(size)
    if dtype == "BF16":  # the upper half of a float32
        (value,) = struct.unpack("<f", b"\0\0" + raw)
    else:
        value = float(np.frombuffer(raw, code)[0])
    return value if math.isfinite(value) else None

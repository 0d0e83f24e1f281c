"""Runs and what hangs on them, as the API shows them; deleting a run with its files."""

from __future__ import annotations

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from obstacle.artifacts.manifest import ProbeManifest
from obstacle.platform.keys import run_prefix
from obstacle.platform.models import Checkpoint, Probe, Run
from obstacle.platform.store import ArtifactStore
from obstacle.service.schemas import (
    CheckpointPublic,
    OptimizerStatePublic,
    ProbePublic,
    RunPublic,
    TrainLogPublic,
)

__all__ = ["delete_run", "public_checkpoint", "public_probe", "public_run", "public_train_log"]


def public_probe(probe: Probe) -> ProbePublic:
    manifest = ProbeManifest.model_validate(probe.manifest)
    return ProbePublic(
        sha256=probe.bundle_sha256,
        content_hash=probe.content_hash,
        size_bytes=probe.size_bytes,
        num_parameters=manifest.num_parameters,
        num_batches=manifest.num_batches,
        batch_size=manifest.batch_size,
        model_class=manifest.model_class,
        loss_class=manifest.loss_class,
        torch_version=manifest.torch_version,
        created_at=probe.created_at,
    )


def public_train_log(run: Run) -> TrainLogPublic | None:
    if run.train_log_sha256 is None:
        return None
    return TrainLogPublic(
        sha256=run.train_log_sha256,
        size_bytes=run.train_log_size_bytes or 0,
        entries=run.train_log_entries or 0,
    )


def public_run(session: Session, run: Run) -> RunPublic:
    probe = session.get(Probe, run.id)
    count = session.scalar(
        select(func.count()).select_from(Checkpoint).where(Checkpoint.run_id == run.id)
    )
    return RunPublic(
        id=str(run.id),
        name=run.name,
        meta=run.meta,
        created_at=run.created_at,
        probe=public_probe(probe) if probe is not None else None,
        num_checkpoints=count or 0,
        train_log=public_train_log(run),
    )


def public_checkpoint(checkpoint: Checkpoint) -> CheckpointPublic:
    optimizer = None
    if checkpoint.optimizer_class is not None:
        optimizer = OptimizerStatePublic(
            class_name=checkpoint.optimizer_class,
            sha256=checkpoint.optimizer_sha256,
            size_bytes=checkpoint.optimizer_size_bytes,
        )
    return CheckpointPublic(
        step=checkpoint.step,
        sha256=checkpoint.sha256,
        size_bytes=checkpoint.size_bytes,
        lr=checkpoint.lr,
        train_loss=checkpoint.train_loss,
        nonfinite=checkpoint.nonfinite,
        optimizer=optimizer,
        created_at=checkpoint.created_at,
    )


def delete_run(session: Session, store: ArtifactStore, run: Run) -> None:
    """Delete the rows first (nothing then points at the files), then the files."""
    session.execute(delete(Run).where(Run.id == run.id))
    session.commit()
    store.delete_prefix(run_prefix(run.id))

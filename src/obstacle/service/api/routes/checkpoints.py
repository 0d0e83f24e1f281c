"""The run's checkpoints: weights (and optimizer state) at training steps."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from obstacle.platform.models import Checkpoint
from obstacle.service.api.deps import (
    CheckpointUpload,
    CurrentRun,
    SessionDep,
    StateDep,
    Step,
    not_found,
)
from obstacle.service.ingest import ingest_checkpoint, ingest_optimizer_state
from obstacle.service.problems import PROBLEM_RESPONSES, upload_responses
from obstacle.service.runs import public_checkpoint
from obstacle.service.schemas import CheckpointPublic, CheckpointsPublic

router = APIRouter(
    prefix="/runs/{run_id}/checkpoints", tags=["checkpoints"], responses=PROBLEM_RESPONSES
)

_SAFETENSORS = {"requestBody": {"required": True, "content": {"application/octet-stream": {}}}}


@router.get("")
def list_checkpoints(run: CurrentRun, session: SessionDep) -> CheckpointsPublic:
    """Every uploaded checkpoint of the run, by step."""
    rows = session.scalars(
        select(Checkpoint).where(Checkpoint.run_id == run.id).order_by(Checkpoint.step)
    ).all()
    return CheckpointsPublic(data=[public_checkpoint(c) for c in rows], count=len(rows))


@router.get("/{step}")
def read_checkpoint(run: CurrentRun, step: Step, session: SessionDep) -> CheckpointPublic:
    """One checkpoint."""
    checkpoint = session.get(Checkpoint, (run.id, step))
    if checkpoint is None:
        raise not_found(f"checkpoint at step {step} of run", run.id)
    return public_checkpoint(checkpoint)


@router.put(
    "/{step}",
    status_code=201,
    responses=upload_responses(CheckpointPublic, "checkpoint"),
    openapi_extra=_SAFETENSORS,
)
async def put_checkpoint(
    run: CurrentRun,
    step: Step,
    upload: CheckpointUpload,
    state: StateDep,
    response: Response,
    lr: Annotated[
        float | None, Query(description="Learning rate, if the file's header lacks it.")
    ] = None,
    train_loss: Annotated[
        float | None, Query(description="Logged minibatch loss at this step.")
    ] = None,
) -> CheckpointPublic:
    """Upload a checkpoint as written by ``obstacle.save_checkpoint``: 201, or 200 if unchanged.

    Its tensors are checked against the probe manifest (names, shapes, dtypes) without torch.
    Weights holding NaN or Inf are accepted and listed in ``nonfinite``: a diverging run has them,
    and the analysis reports the divergence.
    """
    checkpoint, created = await run_in_threadpool(
        ingest_checkpoint,
        state.sessions,
        state.store,
        run.id,
        step,
        upload,
        lr=lr,
        train_loss=train_loss,
    )
    response.status_code = 201 if created else 200
    return public_checkpoint(checkpoint)


@router.put(
    "/{step}/optimizer",
    status_code=201,
    responses=upload_responses(CheckpointPublic, "optimizer state"),
    openapi_extra=_SAFETENSORS,
)
async def put_optimizer_state(
    run: CurrentRun, step: Step, upload: CheckpointUpload, state: StateDep, response: Response
) -> CheckpointPublic:
    """Upload the checkpoint's optimizer state (the ``.optim.safetensors`` file beside it)."""
    checkpoint, created = await run_in_threadpool(
        ingest_optimizer_state, state.sessions, state.store, run.id, step, upload
    )
    response.status_code = 201 if created else 200
    return public_checkpoint(checkpoint)

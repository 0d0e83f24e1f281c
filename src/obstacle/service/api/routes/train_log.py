"""The run's training log: the logged minibatch losses (``train_log.jsonl``) the report plots."""

from __future__ import annotations

from fastapi import APIRouter, Response
from starlette.concurrency import run_in_threadpool

from obstacle.service.api.deps import CurrentRun, StateDep, TrainLogUpload
from obstacle.service.problems import PROBLEM_RESPONSES, upload_responses
from obstacle.service.runs import public_train_log
from obstacle.service.schemas import TrainLogPublic
from obstacle.service.train_log import ingest_train_log

router = APIRouter(
    prefix="/runs/{run_id}/train-log", tags=["train log"], responses=PROBLEM_RESPONSES
)


@router.put(
    "",
    status_code=201,
    responses={
        **upload_responses(TrainLogPublic, "train log"),
        200: {
            "model": TrainLogPublic,
            "description": "The same log was already uploaded (nothing changed), or this one "
            "replaced the run's previous log.",
        },
        409: PROBLEM_RESPONSES[422]
        | {"description": "Another log was uploaded at the same time; send it again."},
    },
    openapi_extra={"requestBody": {"required": True, "content": {"application/x-ndjson": {}}}},
)
async def put_train_log(
    run: CurrentRun, upload: TrainLogUpload, state: StateDep, response: Response
) -> TrainLogPublic:
    """Upload ``train_log.jsonl`` (``obstacle.battery.checkpoint.append_train_log`` lines): 201, or 200.

    Every line must be a JSON object with an int ``step`` >= 0, a ``loss`` (a number, NaN/Infinity
    for a diverged step, or null) and optionally ``lr`` (a finite number >= 0, or null); a bad
    line is a 422 naming it. The log grows during training, so other bytes replace the run's log
    (200), and the same bytes again change nothing (200).
    """
    run_row, created = await run_in_threadpool(
        ingest_train_log, state.sessions, state.store, run.id, upload
    )
    response.status_code = 201 if created else 200
    log = public_train_log(run_row)
    assert log is not None  # just stored
    return log

"""The run's probe: how the workers evaluate the loss without the client's Python code."""

from __future__ import annotations

from fastapi import APIRouter, Response
from starlette.concurrency import run_in_threadpool

from obstacle.platform.models import Probe
from obstacle.service.api.deps import CurrentRun, ProbeUpload, SessionDep, StateDep, not_found
from obstacle.service.ingest import ingest_probe
from obstacle.service.problems import PROBLEM_RESPONSES, upload_responses
from obstacle.service.runs import public_probe
from obstacle.service.schemas import ProbePublic

router = APIRouter(prefix="/runs/{run_id}/probe", tags=["probe"], responses=PROBLEM_RESPONSES)


@router.put(
    "",
    status_code=201,
    responses=upload_responses(ProbePublic, "probe bundle"),
    openapi_extra={"requestBody": {"required": True, "content": {"application/zip": {}}}},
)
async def put_probe(
    run: CurrentRun, upload: ProbeUpload, state: StateDep, response: Response
) -> ProbePublic:
    """Upload the probe bundle (``obstacle.artifacts.bundle.pack_probe``): 201, or 200 if unchanged.

    The zip, the manifest, the probe data and the program archive are validated (no pickle, no
    unsafe operator) before the probe is stored; nothing in it is executed here.
    """
    probe, created = await run_in_threadpool(
        ingest_probe,
        state.sessions,
        state.store,
        run.id,
        upload,
        tmp_dir=state.settings.resolved_upload_tmp_dir,
        max_bytes=state.settings.max_probe_bytes,
    )
    response.status_code = 201 if created else 200
    return public_probe(probe)


@router.get("")
def read_probe(run: CurrentRun, session: SessionDep) -> ProbePublic:
    """The run's probe."""
    probe = session.get(Probe, run.id)
    if probe is None:
        raise not_found("probe for run", run.id)
    return public_probe(probe)

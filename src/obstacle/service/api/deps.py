"""Dependencies of the route handlers, as ``Annotated`` aliases so handlers stay a few lines."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from obstacle.platform.db import SessionFactory
from obstacle.platform.models import Analysis, Probe, Project, Run
from obstacle.platform.store import ArtifactStore
from obstacle.schemas import SHA256_HEADER
from obstacle.service.auth import project_for_token
from obstacle.service.ingest import no_probe
from obstacle.service.metrics import Metrics
from obstacle.service.problems import ProblemError
from obstacle.service.queue import TaskQueue
from obstacle.service.settings import Settings
from obstacle.service.uploads import ReceivedUpload, receive_upload

MAX_STEP = 10**12


@dataclass
class ServiceState:
    """What the app holds for its lifetime (``app.state.obstacle``)."""

    settings: Settings
    engine: Engine
    sessions: SessionFactory
    store: ArtifactStore
    queue: TaskQueue
    metrics: Metrics


def get_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.obstacle
    return state


StateDep = Annotated[ServiceState, Depends(get_state)]


def get_settings(state: StateDep) -> Settings:
    return state.settings


def get_store(state: StateDep) -> ArtifactStore:
    return state.store


def get_queue(state: StateDep) -> TaskQueue:
    return state.queue


def get_sessions(state: StateDep) -> SessionFactory:
    return state.sessions


def get_session(state: StateDep) -> Iterator[Session]:
    with state.sessions() as session:
        yield session


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]
QueueDep = Annotated[TaskQueue, Depends(get_queue)]
SessionsDep = Annotated[SessionFactory, Depends(get_sessions)]
SessionDep = Annotated[Session, Depends(get_session)]

_bearer = HTTPBearer(auto_error=False, description="A project token from `obstacle token create`.")


def no_token() -> ProblemError:
    return ProblemError(
        401,
        "Send a project token as 'Authorization: Bearer <token>'. An operator creates one with "
        "`obstacle token create --project NAME`.",
        slug="unauthenticated",
        title="Not authenticated",
        headers={"WWW-Authenticate": "Bearer"},
    )


def unknown_token() -> ProblemError:
    return ProblemError(
        401,
        "The bearer token is not known to this service (mistyped, or from another deployment). "
        "Ask an operator for a token: `obstacle token create --project NAME`.",
        slug="unauthenticated",
        title="Not authenticated",
        headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
    )


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (as HTTPBearer reads it), or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def token_problem(sessions: SessionFactory, authorization: str | None) -> ProblemError | None:
    """The 401 to answer a request with this Authorization header, or None if its token is known."""
    token = bearer_token(authorization)
    if token is None:
        return no_token()
    with sessions() as session:
        known = project_for_token(session, token) is not None
    return None if known else unknown_token()


def current_project(
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Project:
    if credentials is None:
        raise no_token()
    project = project_for_token(session, credentials.credentials)
    # End the read transaction: a long upload must not hold a database connection's transaction.
    session.commit()
    if project is None:
        raise unknown_token()
    return project


CurrentProject = Annotated[Project, Depends(current_project)]


def not_found(kind: str, ident: object) -> ProblemError:
    # The same answer whether it does not exist or belongs to another project: existence never leaks.
    return ProblemError(
        404,
        f"There is no {kind} {ident} in this token's project. Check the id, and that the token is "
        "the one of the project that created it.",
        slug="not-found",
        title="Not found",
    )


def current_run(run_id: uuid.UUID, project: CurrentProject, session: SessionDep) -> Run:
    run = session.get(Run, run_id)
    session.commit()
    if run is None or run.project_id != project.id:
        raise not_found("run", run_id)
    return run


CurrentRun = Annotated[Run, Depends(current_run)]


def current_analysis(
    analysis_id: uuid.UUID, project: CurrentProject, session: SessionDep
) -> Analysis:
    analysis = session.get(Analysis, analysis_id)
    run = session.get(Run, analysis.run_id) if analysis is not None else None
    session.commit()
    if analysis is None or run is None or run.project_id != project.id:
        raise not_found("analysis", analysis_id)
    return analysis


CurrentAnalysis = Annotated[Analysis, Depends(current_analysis)]

Step = Annotated[int, Path(ge=0, le=MAX_STEP, description="The training step of the checkpoint.")]


def _run_with_probe(run: CurrentRun, session: SessionDep) -> Run:
    has_probe = session.get(Probe, run.id) is not None
    session.commit()
    if not has_probe:
        raise no_probe(run.id)
    return run


RunWithProbe = Annotated[Run, Depends(_run_with_probe)]

_sha_header = Header(
    alias=SHA256_HEADER,
    description=(
        "SHA-256 of the body as 64 hex digits; the upload is checked against it. Or 'trailing': "
        "the body ends with the 64 hex digits of the SHA-256 of the bytes before them (a client "
        "hashes a file while sending it, in one pass); those 64 bytes are not stored."
    ),
)


@asynccontextmanager
async def _received(
    request: Request, settings: Settings, sha256: str | None, *, what: str, limit: int
) -> AsyncIterator[ReceivedUpload]:
    """Stream the body to a temporary file (checked against ``sha256``), removed afterwards."""
    upload = await receive_upload(
        request.stream(),
        what=what,
        limit=limit,
        declared_sha256=sha256,
        content_length=request.headers.get("content-length"),
        tmp_dir=settings.resolved_upload_tmp_dir,
    )
    try:
        yield upload
    finally:
        upload.path.unlink(missing_ok=True)


async def probe_upload(
    request: Request,
    run: CurrentRun,  # authorised before a byte of the body is read
    settings: SettingsDep,
    x_content_sha256: Annotated[str | None, _sha_header] = None,
) -> AsyncIterator[ReceivedUpload]:
    async with _received(
        request, settings, x_content_sha256, what="probe bundle", limit=settings.max_probe_bytes
    ) as upload:
        yield upload


async def checkpoint_upload(
    request: Request,
    run: RunWithProbe,  # authorised, and the probe to check against exists, before reading
    settings: SettingsDep,
    x_content_sha256: Annotated[str | None, _sha_header] = None,
) -> AsyncIterator[ReceivedUpload]:
    async with _received(
        request, settings, x_content_sha256, what="checkpoint", limit=settings.max_checkpoint_bytes
    ) as upload:
        yield upload


async def train_log_upload(
    request: Request,
    run: CurrentRun,  # authorised before a byte of the body is read
    settings: SettingsDep,
    x_content_sha256: Annotated[str | None, _sha_header] = None,
) -> AsyncIterator[ReceivedUpload]:
    async with _received(
        request, settings, x_content_sha256, what="train log", limit=settings.max_train_log_bytes
    ) as upload:
        yield upload


ProbeUpload = Annotated[ReceivedUpload, Depends(probe_upload)]
TrainLogUpload = Annotated[ReceivedUpload, Depends(train_log_upload)]
CheckpointUpload = Annotated[ReceivedUpload, Depends(checkpoint_upload)]

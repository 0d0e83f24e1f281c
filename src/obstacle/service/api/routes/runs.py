"""Runs: a training run's probe, checkpoints and analyses hang on it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import func, select

from obstacle.platform.models import Run
from obstacle.service.api.deps import CurrentProject, CurrentRun, SessionDep, StoreDep
from obstacle.service.problems import PROBLEM_RESPONSES
from obstacle.service.runs import delete_run, public_run
from obstacle.service.schemas import Message, RunCreate, RunPublic, RunsPublic

MAX_OFFSET = 10**9

router = APIRouter(prefix="/runs", tags=["runs"], responses=PROBLEM_RESPONSES)


@router.post("", status_code=201)
def create_run(body: RunCreate, project: CurrentProject, session: SessionDep) -> RunPublic:
    """Create a run in the token's project."""
    run = Run(project_id=project.id, name=body.name, meta=body.meta)
    session.add(run)
    session.commit()
    return public_run(session, run)


@router.get("")
def list_runs(
    project: CurrentProject,
    session: SessionDep,
    # Bounded: a database refuses an OFFSET past its integer type (found by the OpenAPI fuzz suite).
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> RunsPublic:
    """The project's runs, newest first."""
    mine = Run.project_id == project.id
    count = session.scalar(select(func.count()).select_from(Run).where(mine)) or 0
    runs = session.scalars(
        select(Run).where(mine).order_by(Run.created_at.desc(), Run.id).offset(offset).limit(limit)
    ).all()
    return RunsPublic(data=[public_run(session, run) for run in runs], count=count)


@router.get("/{run_id}")
def read_run(run: CurrentRun, session: SessionDep) -> RunPublic:
    """One run, with its probe and how many checkpoints it has."""
    return public_run(session, run)


@router.delete("/{run_id}")
def remove_run(run: CurrentRun, session: SessionDep, store: StoreDep) -> Message:
    """Delete the run, its probe, checkpoints, analyses and their files."""
    delete_run(session, store, run)
    return Message(message=f"Run {run.id} and its files were deleted.")

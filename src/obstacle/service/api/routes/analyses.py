"""Analyses: the battery run over a run's checkpoints by the workers, then the verdict and report."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Path, Response
from fastapi.responses import HTMLResponse
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from obstacle.platform.keys import report_prefix
from obstacle.platform.models import Analysis, AnalysisState
from obstacle.service.analyses import create_analysis, public_analysis
from obstacle.service.api.deps import (
    CurrentAnalysis,
    CurrentRun,
    SessionDep,
    SettingsDep,
    StateDep,
    StoreDep,
)
from obstacle.service.problems import PROBLEM_RESPONSES, ProblemError
from obstacle.service.schemas import AnalysesPublic, AnalysisCreate, AnalysisPublic

router = APIRouter(tags=["analyses"], responses=PROBLEM_RESPONSES)

PLOT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,200}\.png$")


@router.post(
    "/runs/{run_id}/analyses",
    status_code=202,
    responses={
        409: {"description": "The run has no probe or checkpoints yet"},
        503: {"description": "No broker"},
    },
)
async def start_analysis(
    run: CurrentRun, body: AnalysisCreate, state: StateDep, session: SessionDep, response: Response
) -> AnalysisPublic:
    """Queue an analysis of the run's checkpoints; poll ``GET /v1/analyses/{id}`` for its progress."""
    analysis = await run_in_threadpool(create_analysis, state.sessions, state.queue, run.id, body)
    response.headers["Location"] = f"/v1/analyses/{analysis.id}"
    return await run_in_threadpool(
        _view, session, analysis, state.settings.analysis_stall_timeout_s
    )


def _view(session: SessionDep, analysis: Analysis, stall: int) -> AnalysisPublic:
    return public_analysis(session, analysis, stall_timeout_s=stall)


@router.get("/runs/{run_id}/analyses")
def list_analyses(run: CurrentRun, session: SessionDep, settings: SettingsDep) -> AnalysesPublic:
    """The run's analyses, newest first."""
    rows = session.scalars(
        select(Analysis).where(Analysis.run_id == run.id).order_by(Analysis.created_at.desc())
    ).all()
    data = [
        public_analysis(session, a, stall_timeout_s=settings.analysis_stall_timeout_s) for a in rows
    ]
    return AnalysesPublic(data=data, count=len(data))


@router.get("/analyses/{analysis_id}")
def read_analysis(
    analysis: CurrentAnalysis, session: SessionDep, settings: SettingsDep
) -> AnalysisPublic:
    """State, progress (checkpoints done / total), errors, and once succeeded the JSON report."""
    return public_analysis(session, analysis, stall_timeout_s=settings.analysis_stall_timeout_s)


def _report_file(analysis: Analysis, name: str) -> str:
    if analysis.state != AnalysisState.SUCCEEDED:
        raise ProblemError(
            409,
            f"Analysis {analysis.id} is {analysis.state}; its report exists once it has succeeded. "
            f"Poll GET /v1/analyses/{analysis.id}.",
            slug="report-not-ready",
            title="The report is not ready",
        )
    if name not in analysis.report_files:
        raise ProblemError(
            404,
            f"The report of analysis {analysis.id} has no file {name}; it has {analysis.report_files}.",
            slug="not-found",
            title="Not found",
        )
    return f"{report_prefix(analysis.run_id, analysis.id)}/{name}"


@router.get(
    "/analyses/{analysis_id}/report.html",
    response_class=HTMLResponse,
    responses={
        200: {"content": {"text/html": {"schema": {"type": "string"}}}, "description": "The report"}
    },
)
def read_report(analysis: CurrentAnalysis, store: StoreDep) -> HTMLResponse:
    """The HTML report: the verdict with its evidence and the plots."""
    key = _report_file(analysis, "report.html")
    return HTMLResponse(store.read_bytes(key))


@router.get(
    "/analyses/{analysis_id}/plots/{name}",
    response_class=Response,
    responses={
        200: {
            "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
            "description": "A plot",
        }
    },
)
def read_plot(
    analysis: CurrentAnalysis,
    name: Annotated[
        str, Path(pattern=PLOT_NAME.pattern, description="A PNG named in report_files.")
    ],
    store: StoreDep,
) -> Response:
    """A PNG plot of the report."""
    key = _report_file(analysis, f"plots/{name}")
    return Response(store.read_bytes(key), media_type="image/png")

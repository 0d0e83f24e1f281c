"""Operations: health (database, broker and, under ``obstacle serve``, the embedded worker) and
Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from obstacle.service.api.deps import StateDep
from obstacle.service.metrics import render_metrics
from obstacle.service.schemas import Health

router = APIRouter(tags=["operations"])


@router.get(
    "/healthz",
    response_model=Health,
    responses={
        503: {
            "model": Health,
            "description": "Database or broker unreachable, or the embedded worker down",
        }
    },
)
async def healthz(state: StateDep, request: Request) -> JSONResponse:
    """200 when the database and the broker answer (and, under ``obstacle serve``, its embedded
    worker), else 503 saying which does not; ``worker`` appears only with an embedded worker."""
    health = await run_in_threadpool(_check, state)
    body: dict[str, Any] = health.model_dump(exclude_none=True)
    supervisor = getattr(request.app.state, "embedded_worker", None)
    if supervisor is not None:
        body["worker"] = supervisor.health()  # kept by its watching thread: no waiting here
        if body["worker"] != "ok":
            body["status"] = "unavailable"
    return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)


def _check(state: StateDep) -> Health:
    database = broker = "ok"
    try:
        with state.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:
        database = f"unreachable: {type(exc).__name__}: {exc}"[:300]
    try:
        state.queue.ping()
    except Exception as exc:
        broker = f"unreachable: {type(exc).__name__}: {exc}"[:300]
    ok = database == "ok" and broker == "ok"
    return Health(status="ok" if ok else "unavailable", database=database, broker=broker)


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "content": {"text/plain": {"schema": {"type": "string"}}},
            "description": "Prometheus",
        }
    },
)
async def metrics(state: StateDep) -> Response:
    """Prometheus metrics in the text exposition format."""
    body, content_type = await run_in_threadpool(render_metrics, state)
    return Response(body, media_type=content_type)

"""Operations: health (database and broker reachable) and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
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
    responses={503: {"model": Health, "description": "Database or broker unreachable"}},
)
async def healthz(state: StateDep) -> JSONResponse:
    """200 when the database and the broker answer, else 503 saying which does not."""
    health = await run_in_threadpool(_check, state)
    return JSONResponse(health.model_dump(), status_code=200 if health.status == "ok" else 503)


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

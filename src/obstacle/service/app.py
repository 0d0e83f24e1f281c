"""The FastAPI application: ``create_app(settings)``; never imports torch (a test checks it).

Run it with ``obstacle serve`` (which migrates the database first), or under any ASGI server:
``uvicorn --factory obstacle.service.app:create_app``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

import obstacle
from obstacle.platform.db import create_db_engine, session_factory
from obstacle.platform.store import ArtifactStore
from obstacle.service.api.deps import ServiceState
from obstacle.service.api.main import api_router, root_router
from obstacle.service.metrics import Metrics, MetricsMiddleware
from obstacle.service.problems import install_problem_handlers
from obstacle.service.queue import TaskQueue
from obstacle.service.settings import Settings

__all__ = ["create_app"]

DESCRIPTION = """\
Upload a training run's probe and checkpoints; workers run the obstacle battery on them and
return which optimization obstacle holds the run back (saddle point, local minimum, poor
conditioning, gradient noise, no critical point, divergence, overfitting), with the evidence.

Authenticate with `Authorization: Bearer <token>` (`obstacle token create --project NAME`).
Uploads carry their SHA-256 in `X-Content-SHA256`. Errors are RFC 9457 `application/problem+json`.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API for ``settings`` (default: read from the ``OBSTACLE_*`` environment)."""
    settings = settings if settings is not None else Settings()
    engine = create_db_engine(settings.resolved_database_url)
    settings.resolved_upload_tmp_dir.mkdir(parents=True, exist_ok=True)
    state = ServiceState(
        settings=settings,
        engine=engine,
        sessions=session_factory(engine),
        store=ArtifactStore(settings.resolved_artifact_url),
        queue=TaskQueue(settings),
        metrics=Metrics(),
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            state.queue.close()
            engine.dispose()

    app = FastAPI(
        title="obstacle",
        version=obstacle.__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.obstacle = state
    install_problem_handlers(app)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    app.include_router(api_router)
    app.include_router(root_router)
    return app

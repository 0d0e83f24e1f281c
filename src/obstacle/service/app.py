"""The FastAPI application: ``create_app(settings)``; never imports torch (a test checks it).

Run it with ``obstacle serve`` (which migrates the database first), or under any ASGI server:
``uvicorn --factory obstacle.service.app:create_app``. Body sizes, 401 before the body and the
body idle timeout hold under any server (``obstacle.service.limits``); the header deadline and size
limit need ``obstacle.service.server.uvicorn_config``, which ``obstacle serve`` uses.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

import obstacle
from obstacle.platform.db import create_db_engine, session_factory
from obstacle.platform.store import ArtifactStore
from obstacle.service.analyses import StallSweeper
from obstacle.service.api.deps import ServiceState
from obstacle.service.api.main import api_router, root_router
from obstacle.service.limits import RequestLimits
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
Uploads carry their SHA-256 in `X-Content-SHA256`, or `X-Content-SHA256: trailing` and the body
ends with the 64 hex digits of the SHA-256 of the bytes before them. Errors are RFC 9457
`application/problem+json`.
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
        sweeper = StallSweeper(state.sessions, stall_timeout_s=settings.analysis_stall_timeout_s)
        sweeper.start()
        try:
            yield
        finally:
            await sweeper.stop()
            state.queue.close()
            engine.dispose()

    app = FastAPI(
        title="obstacle",
        version=obstacle.__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.obstacle = state
    install_problem_handlers(app)
    # The last added runs first: metrics count what the limits refuse too.
    app.add_middleware(RequestLimits, settings=settings, sessions=lambda: state.sessions)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    _serve_docs(app)
    app.include_router(api_router)
    app.include_router(root_router)
    return app


# Swagger UI and ReDoc from files inside an installed package (fastapi-offline ships Swagger UI 5,
# which renders OpenAPI 3.1), not from a CDN: /docs works on a machine without internet.
_DOCS_ASSETS = Path(fastapi_offline.__file__).parent / "static"
_ASSETS_URL = "/docs-assets"


def _serve_docs(app: FastAPI) -> None:
    app.mount(_ASSETS_URL, StaticFiles(directory=_DOCS_ASSETS), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="obstacle API",
            swagger_js_url=f"{_ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{_ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{_ASSETS_URL}/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url="/openapi.json",
            title="obstacle API",
            redoc_js_url=f"{_ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{_ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )

"""Prometheus metrics: requests by route and status, upload bytes, analyses by state."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from sqlalchemy import func, select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from obstacle.platform.models import Analysis

if TYPE_CHECKING:
    from obstacle.service.api.deps import ServiceState

__all__ = ["Metrics", "MetricsMiddleware", "render_metrics", "route_template"]


class Metrics:
    """The service's metrics, in a registry of their own (one per app, so tests can make many)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "obstacle_http_requests",
            "HTTP requests answered, by route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "obstacle_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template.",
            ["method", "route"],
            registry=self.registry,
        )
        self.upload_bytes = Counter(
            "obstacle_upload_bytes",
            "Bytes received in upload bodies, by route template.",
            ["route"],
            registry=self.registry,
        )
        self.analyses = Gauge(
            "obstacle_analyses",
            "Analyses in the database, by state.",
            ["state"],
            registry=self.registry,
        )


class MetricsMiddleware:
    """Counts every request by its route template (not its path: ids would explode the labels)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        received = 0
        start = time.perf_counter()

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
            return message

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, counting_receive, recording_send)
        finally:
            route = route_template(scope)
            method = scope.get("method", "")
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - start)
            if received:
                self.metrics.upload_bytes.labels(route).inc(received)


def route_template(scope: Scope) -> str:
    """``/v1/runs/{run_id}`` for ``/v1/runs/3f…``: the matched route's full path template."""
    if scope.get("route") is None:
        return "(unmatched)"
    # FastAPI keeps the full template of a route inside included routers here; the route object
    # itself only knows its path relative to its router.
    context = (scope.get("fastapi") or {}).get("effective_route_context")
    template = getattr(context, "path", None)
    if isinstance(template, str):
        return template
    names = {str(value).lower(): name for name, value in (scope.get("path_params") or {}).items()}
    return "/".join(
        f"{{{names[s.lower()]}}}" if s.lower() in names else s for s in scope["path"].split("/")
    )


def render_metrics(state: ServiceState) -> tuple[bytes, str]:
    """The exposition text, with the analysis counts read from the database now."""
    metrics: Metrics = state.metrics
    with state.sessions() as session:
        rows = session.execute(select(Analysis.state, func.count()).group_by(Analysis.state)).all()
    counts = {state: int(count) for state, count in rows}
    for name in ("queued", "running", "finalizing", "succeeded", "failed"):
        metrics.analyses.labels(name).set(counts.get(name, 0))
    return generate_latest(metrics.registry), CONTENT_TYPE_LATEST

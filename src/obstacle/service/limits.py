"""Request limits checked before any work: body size per route, authentication, body idle time.

A pure ASGI middleware (nothing buffered), outside the routing, so it answers before FastAPI
reads a body:

1. a Content-Length over the route's limit: 413, and the body is never read;
2. a request with a body to /v1 without a known bearer token: 401, and the body is never read;
3. while the body streams (chunked or not), more bytes than the limit: 413; no bytes for
   OBSTACLE_BODY_IDLE_TIMEOUT_S: 408. Both are raised inside the route's body reading, so an
   upload being spooled is deleted on the way out.

Each early answer closes the connection (``Connection: close``): the rest of the body is not read.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from obstacle.platform.db import SessionFactory
from obstacle.service.api.deps import token_problem
from obstacle.service.problems import ProblemError, RequestRefused, problem_response
from obstacle.service.settings import Settings
from obstacle.service.uploads import SHA256_HEADER, TRAILING, TRAILING_DIGEST_BYTES

__all__ = ["BodyLimit", "RequestLimits", "body_limit"]

_CLOSE = {"Connection": "close"}


@dataclass(frozen=True)
class BodyLimit:
    """The body size limit of a route: what it receives, how many bytes, which setting says so.

    ``trailer``: bytes the body may carry beyond ``limit`` that are not the upload (the 64 hex
    digits of a trailing SHA-256, ``X-Content-SHA256: trailing``).
    """

    what: str
    limit: int
    setting: str
    trailer: int = 0

    @property
    def body_bytes(self) -> int:
        """The most bytes the body may hold."""
        return self.limit + self.trailer


_UPLOADS: tuple[tuple[re.Pattern[str], str, str], ...] = (
    (re.compile(r"^/v1/runs/[^/]+/probe/?$"), "probe bundle", "max_probe_bytes"),
    (
        re.compile(r"^/v1/runs/[^/]+/checkpoints/[^/]+(/optimizer)?/?$"),
        "checkpoint",
        "max_checkpoint_bytes",
    ),
    (re.compile(r"^/v1/runs/[^/]+/train-log/?$"), "train log", "max_train_log_bytes"),
)


def body_limit(
    settings: Settings, method: str, path: str, *, sha256_header: str | None = None
) -> BodyLimit:
    """The limit of ``method path``: an upload route's own, else OBSTACLE_MAX_REQUEST_BYTES.

    ``sha256_header``: the request's X-Content-SHA256; 'trailing' lets an upload's body carry its
    64-digit digest beyond the limit.
    """
    if method == "PUT":
        for pattern, what, name in _UPLOADS:
            if pattern.match(path):
                trailing = (sha256_header or "").strip().lower() == TRAILING
                return BodyLimit(
                    what,
                    getattr(settings, name),
                    f"OBSTACLE_{name.upper()}",
                    trailer=TRAILING_DIGEST_BYTES if trailing else 0,
                )
    return BodyLimit("request body", settings.max_request_bytes, "OBSTACLE_MAX_REQUEST_BYTES")


def too_large(limit: BodyLimit, received: str) -> ProblemError:
    return ProblemError(
        413,
        f"The {limit.what} is {received}; this service accepts at most {limit.limit} bytes "
        f"({limit.setting}). Send a smaller one or ask the operator to raise the limit.",
        slug="too-large",
        title="The request is too large",
        headers=_CLOSE,
    )


def idle_body(timeout_s: float, received: int) -> ProblemError:
    return ProblemError(
        408,
        f"The request body stopped arriving: no byte for {timeout_s:g} s after {received} bytes "
        "(OBSTACLE_BODY_IDLE_TIMEOUT_S); nothing was stored. Send it again over a working "
        "connection.",
        slug="body-timeout",
        title="The request body timed out",
        headers=_CLOSE,
    )


def _content_length(headers: Headers) -> int | None:
    value = headers.get("content-length")
    return int(value) if value is not None and value.isdigit() else None


class RequestLimits:
    """Refuse what is too large or unauthenticated before reading it; cut off idle bodies."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        settings: Settings,
        sessions: Callable[[], SessionFactory],
    ) -> None:
        self.app = app
        self.settings = settings
        self.sessions = sessions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        limit = body_limit(
            self.settings,
            scope["method"],
            scope["path"],
            sha256_header=headers.get(SHA256_HEADER),
        )
        length = _content_length(headers)
        has_body = (length is not None and length > 0) or "transfer-encoding" in headers
        refusal: ProblemError | None = None
        if length is not None and length > limit.body_bytes:
            refusal = too_large(limit, f"{length - limit.trailer} bytes (Content-Length)")
        elif has_body and scope["path"].startswith("/v1/"):
            refusal = await run_in_threadpool(
                token_problem, self.sessions(), headers.get("authorization")
            )
            if refusal is not None:
                refusal.headers = {**(refusal.headers or {}), **_CLOSE}
        if refusal is not None:
            await _answer(refusal, scope, receive, send)
            return
        await self.app(scope, self._limited(receive, limit), send)

    def _limited(self, receive: Receive, limit: BodyLimit) -> Receive:
        idle_s = self.settings.body_idle_timeout_s
        received = 0
        done = False

        async def receive_limited() -> Message:
            nonlocal received, done
            if done:  # the body is in; what follows (a disconnect) may take any time
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), idle_s)
            except TimeoutError:
                raise RequestRefused(idle_body(idle_s, received)) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                done = not message.get("more_body", False)
                if received > limit.body_bytes:
                    raise RequestRefused(too_large(limit, f"more than {limit.limit} bytes"))
            else:
                done = True
            return message

        return receive_limited


async def _answer(problem: ProblemError, scope: Scope, receive: Receive, send: Send) -> None:
    response = problem_response(
        problem.status,
        problem.detail,
        title=problem.title,
        slug=problem.slug,
        request=Request(scope),
        headers=problem.headers,
    )
    await response(scope, receive, send)

"""Errors as RFC 9457 problem documents (``application/problem+json``).

Every error a client can cause leaves as a 4xx problem whose ``detail`` says what was wrong and
how to fix it; the obstacle ``InputError`` family is translated here, at the boundary. Only a bug
in the service gives a 500, and its body leaks nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from obstacle.errors import (
    CheckpointError,
    InputError,
    MemoryBudgetError,
    ParameterError,
    ProbeError,
    RunDirectoryError,
    UnsafeArchiveError,
)

__all__ = [
    "INPUT_ERRORS",
    "PROBLEM_RESPONSES",
    "Problem",
    "ProblemError",
    "RequestRefused",
    "install_problem_handlers",
]

logger = logging.getLogger("obstacle.service")

MEDIA_TYPE = "application/problem+json"


class Problem(BaseModel):
    """An RFC 9457 problem document."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[dict[str, Any]] | None = None


class ProblemError(Exception):
    """Raised by the service to answer with a problem document."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        slug: str,
        title: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.slug = slug
        self.title = title
        self.headers = headers


class RequestRefused(StarletteHTTPException):
    """A problem raised from inside the request body's stream (too large, idle too long).

    An HTTPException, because FastAPI lets those out of its body reading unchanged (any other
    exception there becomes a 400 without a reason).
    """

    def __init__(self, problem: ProblemError) -> None:
        super().__init__(problem.status, problem.detail, headers=problem.headers)
        self.problem = problem


# Most specific first: (class, status, slug, title). A test checks every InputError is listed.
INPUT_ERRORS: tuple[tuple[type[InputError], int, str, str], ...] = (
    (UnsafeArchiveError, 422, "unsafe-program", "The probe's program archive was refused"),
    (ProbeError, 422, "invalid-probe", "The probe is invalid"),
    (CheckpointError, 422, "invalid-checkpoint", "The checkpoint is invalid"),
    (ParameterError, 422, "invalid-parameter", "A parameter is out of range"),
    (RunDirectoryError, 422, "invalid-run", "The run is incomplete"),
    (MemoryBudgetError, 422, "over-memory-budget", "The analysis does not fit the memory budget"),
    (InputError, 400, "bad-input", "The input is wrong"),
)

_STATUS_TITLES = {
    400: "Bad request",
    401: "Not authenticated",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Content too large",
    415: "Unsupported media type",
    422: "Unprocessable content",
    500: "Internal server error",
    503: "Service unavailable",
}


def problem_type(slug: str) -> str:
    return f"urn:obstacle:problem:{slug}"


def problem_response(
    status: int,
    detail: str,
    *,
    title: str | None = None,
    slug: str | None = None,
    request: Request | None = None,
    headers: Mapping[str, str] | None = None,
    errors: list[dict[str, Any]] | None = None,
) -> JSONResponse:
    body = Problem(
        type=problem_type(slug) if slug else "about:blank",
        title=title or _STATUS_TITLES.get(status, "Error"),
        status=status,
        detail=detail,
        instance=request.url.path if request is not None else None,
        errors=errors,
    )
    return JSONResponse(
        body.model_dump(exclude_none=True),
        status_code=status,
        headers=headers,
        media_type=MEDIA_TYPE,
    )


def _problem_schema(description: str) -> dict[str, Any]:
    return {"description": description, "model": Problem, "content": {MEDIA_TYPE: {}}}


# Responses every authenticated route documents besides its own.
PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: _problem_schema("Missing or unknown bearer token"),
    404: _problem_schema("No such resource in the token's project"),
    422: _problem_schema("The request or the uploaded content is invalid"),
}


def upload_responses(model: type[BaseModel], what: str) -> dict[int | str, dict[str, Any]]:
    """The extra responses of an upload route."""
    return {
        200: {
            "model": model,
            "description": f"The same {what} was already uploaded; nothing changed.",
        },
        400: _problem_schema(f"No or malformed {what} checksum header"),
        409: _problem_schema(
            "Other bytes were already uploaded here, or a prerequisite is missing"
        ),
        413: _problem_schema(f"The {what} is over the size limit"),
    }


def install_problem_handlers(app: FastAPI) -> None:
    """Answer every error with a problem document."""

    async def on_problem(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, RequestRefused):
            exc = exc.problem
        assert isinstance(exc, ProblemError)
        return problem_response(
            exc.status,
            exc.detail,
            title=exc.title,
            slug=exc.slug,
            request=request,
            headers=exc.headers,
        )

    async def on_input_error(request: Request, exc: Exception) -> JSONResponse:
        for cls, status, slug, title in INPUT_ERRORS:
            if isinstance(exc, cls):
                return problem_response(status, str(exc), title=title, slug=slug, request=request)
        raise AssertionError("unreachable: InputError is the last entry")  # pragma: no cover

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = [
            {
                "loc": list(err.get("loc", ())),
                "msg": str(err.get("msg", "")),
                "type": str(err.get("type", "")),
            }
            for err in exc.errors()
        ]
        listed = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors)
        return problem_response(
            422,
            f"The request is invalid: {listed}. Fix these fields and send it again.",
            title="The request is invalid",
            slug="invalid-request",
            request=request,
            errors=errors,
        )

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if isinstance(exc, RequestRefused):
            return await on_problem(request, exc)
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"There is no route {request.url.path}; the API is described at /openapi.json."
        if exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}; see /openapi.json."
        return problem_response(exc.status_code, detail, request=request, headers=exc.headers)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return problem_response(
            500,
            "The service failed on this request; it is not your input. Retry later, and report it "
            "if it persists.",
            request=request,
        )

    app.add_exception_handler(ProblemError, on_problem)
    app.add_exception_handler(InputError, on_input_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)

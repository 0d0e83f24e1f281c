"""httpx errors translated into the package's one hierarchy, at the boundary.

The client raises only these (from ``obstacle.errors``); no httpx type ever leaks out:

    ObstacleError
    ├── InputError                 the URL or request is malformed (httpx.InvalidURL, ...)
    └── TransportError             talking to the service failed
        ├── ConnectError           httpx.ConnectError, httpx.ProxyError
        ├── ServiceTimeoutError    httpx.TimeoutException and its four subclasses
        └── ServiceError           the service answered 4xx/5xx (RFC 9457 problem+json)

``map_httpx_exceptions`` does the translation; ``test_exceptions.py`` checks that every exception
class httpx exports has a row in ``HTTPX_ERRORS``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import httpx

from obstacle.errors import (
    ConnectError,
    InputError,
    ObstacleError,
    ServiceError,
    ServiceTimeoutError,
    TransportError,
)

__all__ = ["HTTPX_ERRORS", "map_httpx_exceptions", "service_error"]

# Most specific first: the first row whose httpx class matches wins.
HTTPX_ERRORS: tuple[tuple[type[Exception], type[ObstacleError], str], ...] = (
    (httpx.TimeoutException, ServiceTimeoutError, "the service did not answer in time"),
    (httpx.ConnectError, ConnectError, "the service could not be reached"),
    (httpx.ProxyError, ConnectError, "the proxy refused the connection"),
    (httpx.UnsupportedProtocol, InputError, "the URL's scheme is not http or https"),
    (httpx.InvalidURL, InputError, "the URL is malformed"),
    (httpx.HTTPStatusError, ServiceError, "the service answered with an error"),
    (httpx.NetworkError, TransportError, "the connection broke"),
    (httpx.ProtocolError, TransportError, "the service broke the HTTP protocol"),
    (httpx.DecodingError, TransportError, "the response could not be decoded"),
    (httpx.TooManyRedirects, TransportError, "the service redirected too many times"),
    (httpx.TransportError, TransportError, "the request failed"),
    (httpx.RequestError, TransportError, "the request failed"),
    (httpx.StreamError, TransportError, "a request or response stream was misused"),
    (httpx.CookieConflict, TransportError, "conflicting cookies"),
    (httpx.HTTPError, TransportError, "the request failed"),
)

_HINT = (
    "Check that the service runs at that URL (GET /healthz) and that this machine can reach it; "
    "idempotent calls were already retried."
)


def translate(exc: Exception, *, what: str = "") -> ObstacleError:
    """The ``obstacle`` error for the httpx exception ``exc``."""
    where = f"{what}: " if what else ""
    for source, target, meaning in HTTPX_ERRORS:
        if isinstance(exc, source):
            if isinstance(exc, httpx.HTTPStatusError):
                return service_error(exc.response, what=what)
            if target is InputError:
                return InputError(f"{where}{meaning} ({exc}). Pass a URL like http://host:8000.")
            return target(f"{where}{meaning} ({type(exc).__name__}: {exc}). {_HINT}")
    return TransportError(f"{where}the request failed ({type(exc).__name__}: {exc}). {_HINT}")


@contextlib.contextmanager
def map_httpx_exceptions(what: str = "") -> Iterator[None]:
    """Re-raise any httpx exception as its ``obstacle`` error (``from None``: no httpx chain)."""
    try:
        yield
    except httpx.HTTPError as exc:
        raise translate(exc, what=what) from None
    except (httpx.InvalidURL, httpx.CookieConflict, httpx.StreamError) as exc:
        raise translate(exc, what=what) from None


def service_error(response: httpx.Response, *, what: str = "") -> ServiceError:
    """A ServiceError carrying the RFC 9457 problem (its ``detail`` is the message)."""
    problem: dict[str, Any] | None = None
    try:
        body = response.json()
        if isinstance(body, dict):
            problem = body
    except ValueError:
        problem = None
    except httpx.ResponseNotRead:
        problem = None
    status = response.status_code
    if problem is not None and "detail" in problem:
        detail = str(problem["detail"])
        title = str(problem.get("title") or response.reason_phrase)
    else:
        title = response.reason_phrase
        try:
            detail = response.text[:500] or "(empty body)"
        except httpx.ResponseNotRead:
            detail = "(body not read)"
    where = what or f"{response.request.method} {response.request.url.path}"
    return ServiceError(f"{where}: {status} {title}: {detail}", status=status, problem=problem)

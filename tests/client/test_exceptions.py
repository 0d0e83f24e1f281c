"""Every httpx exception is translated into the obstacle hierarchy; retries follow the rules."""

from __future__ import annotations

import inspect

import httpx
import pytest

import obstacle.client
from obstacle.client import Client
from obstacle.client._exceptions import HTTPX_ERRORS, map_httpx_exceptions
from obstacle.errors import (
    ConnectError,
    InputError,
    ObstacleError,
    ServiceError,
    ServiceTimeoutError,
    TransportError,
)

HTTPX_EXCEPTIONS = sorted(
    (
        value
        for value in vars(httpx).values()
        if inspect.isclass(value) and issubclass(value, Exception)
    ),
    key=lambda cls: cls.__name__,
)
EXPECTED = {
    httpx.ConnectTimeout: ServiceTimeoutError,
    httpx.ReadTimeout: ServiceTimeoutError,
    httpx.WriteTimeout: ServiceTimeoutError,
    httpx.PoolTimeout: ServiceTimeoutError,
    httpx.TimeoutException: ServiceTimeoutError,
    httpx.ConnectError: ConnectError,
    httpx.ProxyError: ConnectError,
    httpx.InvalidURL: InputError,
    httpx.UnsupportedProtocol: InputError,
    httpx.HTTPStatusError: ServiceError,
}


def _instance(cls: type[Exception]) -> Exception:
    request = httpx.Request("GET", "http://service.test/v1/runs")
    if issubclass(cls, httpx.HTTPStatusError):
        response = httpx.Response(
            503,
            json={"title": "Unavailable", "status": 503, "detail": "the broker is down"},
            request=request,
        )
        return cls("503", request=request, response=response)
    if issubclass(cls, httpx.RequestError):
        return cls("boom", request=request)
    if issubclass(cls, httpx.StreamError):
        return cls() if cls is not httpx.StreamError else cls("stream")
    return cls("boom")


def test_httpx_exports_exceptions() -> None:
    assert len(HTTPX_EXCEPTIONS) >= 25


@pytest.mark.parametrize("cls", HTTPX_EXCEPTIONS, ids=lambda c: c.__name__)
def test_every_httpx_exception_is_mapped(cls: type[Exception]) -> None:
    # Every class has a row (itself or an ancestor), and raising it gives an obstacle error.
    assert any(issubclass(cls, source) for source, _, _ in HTTPX_ERRORS), cls
    with pytest.raises(ObstacleError) as caught, map_httpx_exceptions("GET /v1/runs"):
        raise _instance(cls)
    error = caught.value
    assert not isinstance(error, httpx.HTTPError)
    assert type(error).__module__ == "obstacle.errors"
    assert error.__cause__ is None and error.__suppress_context__
    assert isinstance(error, EXPECTED.get(cls, TransportError))
    assert "GET /v1/runs" in str(error)


def test_service_error_carries_the_problem() -> None:
    with pytest.raises(ServiceError) as caught, map_httpx_exceptions():
        raise _instance(httpx.HTTPStatusError)
    assert caught.value.status == 503
    assert caught.value.problem["detail"] == "the broker is down"
    assert "the broker is down" in str(caught.value)


def test_no_public_name_shadows_a_builtin() -> None:
    import builtins

    import obstacle
    import obstacle.errors

    for module in (obstacle, obstacle.errors, obstacle.client):
        assert not set(module.__all__) & set(dir(builtins)), module.__name__
    assert issubclass(obstacle.ServiceTimeoutError, obstacle.TransportError)
    assert not hasattr(obstacle.errors, "TimeoutError")


def test_public_names_are_complete() -> None:
    public = {
        name
        for name, value in vars(obstacle.client).items()
        if not name.startswith("_")
        and getattr(value, "__module__", "").startswith(("obstacle.client._", "obstacle.schemas"))
    }
    assert public == set(obstacle.client.__all__)


def _counting(responses: list[int]) -> tuple[httpx.MockTransport, list[str]]:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.method)
        status = responses[min(len(seen), len(responses)) - 1]
        if status >= 400:
            return httpx.Response(status, json={"title": "x", "status": status, "detail": "flaky"})
        return httpx.Response(status, json={"status": "ok", "database": "ok", "broker": "ok"})

    return httpx.MockTransport(handler), seen


def test_idempotent_calls_retry_on_5xx() -> None:
    transport, seen = _counting([503, 502, 200])
    with Client("http://service.test", "t", retries=3, backoff=0.001, transport=transport) as c:
        assert c.health()["status"] == "ok"
    assert seen == ["GET", "GET", "GET"]


def test_retries_give_up_with_the_service_error() -> None:
    transport, seen = _counting([503])
    c = Client("http://service.test", "t", retries=2, backoff=0.001, transport=transport)
    with c, pytest.raises(ServiceError) as caught:
        c.health()
    assert caught.value.status == 503 and len(seen) == 3


def test_post_is_not_retried_on_5xx() -> None:
    transport, seen = _counting([503, 201])
    c = Client("http://service.test", "t", retries=3, backoff=0.001, transport=transport)
    with c, pytest.raises(ServiceError):
        c.start_analysis("00000000-0000-0000-0000-000000000000")
    assert seen == ["POST"]


def test_unreachable_service_is_a_connect_error() -> None:
    c = Client("http://127.0.0.1:9", "t", retries=1, backoff=0.001)
    with c, pytest.raises(ConnectError, match="could not be reached"):
        c.health()


@pytest.mark.parametrize("url", ["", "localhost:8000", "ftp://x"])
def test_bad_url_is_an_input_error(url: str) -> None:
    with pytest.raises(InputError, match="'url' parameter"):
        Client(url, "t")

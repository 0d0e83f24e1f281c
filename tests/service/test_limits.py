"""Request limits on a real ``obstacle serve`` process: refused before the body is read, cut off
when slow, never a 500 (issue 13)."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest_services import Tenant, make_settings, make_tenant
from obstacle.service.settings import Settings
from service.live import raw_connection, read_response, serving

LIMITS = {
    "OBSTACLE_MAX_REQUEST_BYTES": "4096",
    "OBSTACLE_MAX_TRAIN_LOG_BYTES": "65536",
    "OBSTACLE_HEADER_TIMEOUT_S": "1",
    "OBSTACLE_BODY_IDLE_TIMEOUT_S": "1",
    "OBSTACLE_MAX_HEADER_BYTES": "16384",
}


@pytest.fixture(scope="module")
def live(
    sqlite_database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Settings, Tenant]]:
    data_dir = tmp_path_factory.mktemp("limits")
    settings = make_settings(sqlite_database_url, redis_url, data_dir)
    with serving(settings, data_dir, **LIMITS) as (base, _):
        yield base, settings, make_tenant(sqlite_database_url)


def _head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: test", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _problem(raw: bytes) -> tuple[int, dict[str, str], dict[str, object]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    return int(status_line.split()[1]), headers, json.loads(body)


def _spooled(settings: Settings) -> list[Path]:
    return list(settings.resolved_upload_tmp_dir.glob("upload-*"))


def test_a_body_over_the_limit_is_refused_from_content_length_without_reading_it(
    live: tuple[str, Settings, Tenant],
) -> None:
    base, _, tenant = live
    with raw_connection(base, timeout=10) as sock:
        # 200 MiB announced, not a byte sent: only an answer from the headers can arrive.
        headers = {**tenant.headers, "Content-Type": "application/json"}
        sock.sendall(_head("POST", "/v1/runs", {**headers, "Content-Length": str(200 << 20)}))
        status, response_headers, problem = _problem(read_response(sock))
    assert status == 413
    assert response_headers["content-type"] == "application/problem+json"
    assert response_headers["connection"] == "close"
    assert "OBSTACLE_MAX_REQUEST_BYTES" in str(problem["detail"])
    assert str(200 << 20) in str(problem["detail"])


@pytest.mark.parametrize("authorization", [None, "Bearer obst_not-a-token", "Basic eDp5"])
def test_a_body_without_a_valid_token_is_refused_before_it_is_read(
    live: tuple[str, Settings, Tenant], authorization: str | None
) -> None:
    base, _, _ = live
    headers = {"Content-Type": "application/json", "Content-Length": "1000"}
    if authorization is not None:
        headers["Authorization"] = authorization
    with raw_connection(base, timeout=10) as sock:
        sock.sendall(_head("POST", "/v1/runs", headers))  # the body never comes
        status, response_headers, problem = _problem(read_response(sock))
    assert status == 401
    assert response_headers["www-authenticate"].startswith("Bearer")
    assert "obstacle token create" in str(problem["detail"])


def test_a_chunked_body_is_counted_while_it_streams(live: tuple[str, Settings, Tenant]) -> None:
    base, settings, tenant = live
    with httpx.Client(base_url=base, timeout=30) as client:
        run = client.post("/v1/runs", json={"name": "chunked"}, headers=tenant.headers).json()

        def chunks() -> Iterator[bytes]:
            for _ in range(40):  # 40 × 4 KiB > the 64 KiB train-log limit
                yield b'{"step": 1, "loss": 0.5}\n'.ljust(4096, b" ")

        response = client.put(
            f"/v1/runs/{run['id']}/train-log",
            content=chunks(),
            headers={**tenant.headers, "X-Content-SHA256": "0" * 64},
        )
        assert response.status_code == 413, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert "OBSTACLE_MAX_TRAIN_LOG_BYTES" in response.json()["detail"]
        assert (
            client.get(f"/v1/runs/{run['id']}", headers=tenant.headers).json()["train_log"] is None
        )
    assert _spooled(settings) == []


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_trailing_checksum_is_not_counted_against_the_limit(
    live: tuple[str, Settings, Tenant], chunked: bool
) -> None:
    """A log of exactly the limit, its SHA-256 after it: stored; one byte more: 413."""
    base, settings, tenant = live
    limit = int(LIMITS["OBSTACLE_MAX_TRAIN_LOG_BYTES"])
    line = b'{"step": 1, "loss": 0.5}\n'
    exact = line * (limit // len(line)) + b" " * (limit % len(line))
    headers = {**tenant.headers, "X-Content-SHA256": "trailing"}
    with httpx.Client(base_url=base, timeout=30) as client:
        run = client.post("/v1/runs", json={"name": "trailing"}, headers=tenant.headers).json()
        url = f"/v1/runs/{run['id']}/train-log"
        for log, status in ((exact + b" ", 413), (exact, 201)):
            body = log + hashlib.sha256(log).hexdigest().encode()
            response = client.put(url, content=iter([body]) if chunked else body, headers=headers)
            assert response.status_code == status, response.text
        stored = client.get(f"/v1/runs/{run['id']}", headers=tenant.headers).json()["train_log"]
    assert stored["size_bytes"] == limit
    assert stored["sha256"] == hashlib.sha256(exact).hexdigest()
    assert _spooled(settings) == []


def test_a_body_that_stops_arriving_is_cut_off_and_its_spool_deleted(
    live: tuple[str, Settings, Tenant],
) -> None:
    base, settings, tenant = live
    run = httpx.post(f"{base}/v1/runs", json={"name": "slow"}, headers=tenant.headers).json()
    headers = {**tenant.headers, "X-Content-SHA256": "0" * 64, "Content-Length": "60000"}
    with raw_connection(base, timeout=20) as sock:
        sock.sendall(_head("PUT", f"/v1/runs/{run['id']}/train-log", headers))
        sock.sendall(b'{"step": 1, "loss": 0.5}\n' * 10)
        started = time.monotonic()
        status, response_headers, problem = _problem(read_response(sock))
        waited = time.monotonic() - started
    assert status == 408
    assert response_headers["connection"] == "close"
    assert "OBSTACLE_BODY_IDLE_TIMEOUT_S" in str(problem["detail"])
    assert waited < 15
    assert _spooled(settings) == []


def test_headers_that_arrive_slowly_are_cut_off(live: tuple[str, Settings, Tenant]) -> None:
    base, _, _ = live
    with raw_connection(base, timeout=20) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n")
        for _ in range(3):
            try:
                sock.sendall(b"X-Slow: 1\r\n")
            except OSError:
                break
            time.sleep(0.5)
        raw = read_response(sock)
        waited = time.monotonic() - started
    assert raw.startswith(b"HTTP/1.1 408 "), raw[:200]
    assert b"OBSTACLE_HEADER_TIMEOUT_S" in raw
    assert waited < 15


def test_headers_over_the_limit_are_refused(live: tuple[str, Settings, Tenant]) -> None:
    base, _, _ = live
    with raw_connection(base, timeout=20) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n")
        try:
            for _ in range(64):
                sock.sendall(b"X-Big: " + b"a" * 1000 + b"\r\n")
        except OSError:
            pass
        raw = read_response(sock)
    assert raw.startswith(b"HTTP/1.1 431 "), raw[:200]
    assert b"OBSTACLE_MAX_HEADER_BYTES" in raw


def test_requests_within_the_limits_are_served(live: tuple[str, Settings, Tenant]) -> None:
    base, _, tenant = live
    with httpx.Client(base_url=base, timeout=30) as client:
        for _ in range(3):  # one keep-alive connection, several requests
            response = client.post("/v1/runs", json={"name": "ok"}, headers=tenant.headers)
            assert response.status_code == 201, response.text
        assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize(
    ("token", "route", "status"),
    [(False, "checkpoints/5", 401), (True, "checkpoints/5", 404), (True, "train-log", 413)],
)
def test_a_client_that_sends_its_whole_body_still_reads_the_early_answer(
    live: tuple[str, Settings, Tenant], token: bool, route: str, status: int
) -> None:
    # The server answers from the headers and lingers, discarding the rest, instead of resetting
    # the connection under a client that is still sending (which would lose the answer).
    base, _, tenant = live
    headers = {**(tenant.headers if token else {}), "X-Content-SHA256": "0" * 64}
    url = f"{base}/v1/runs/{uuid.uuid4()}/{route}"
    for _ in range(3):
        response = httpx.put(url, content=b"\0" * (3 << 20), headers=headers, timeout=30)
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/problem+json"

"""Hostile clients of a running API, and what the server costs while they attack (issue 13).

Used by tests/service/test_attacks.py and bench/service_attacks.py (the same attacks, measured):

- ``flood``: a 200 MiB JSON body, with or without a token, sent as fast as the server takes it;
- ``slow_headers``: a connection that sends one header byte at a time, every ``pause`` seconds;
- ``slow_body``: an authenticated upload whose body stops after a few bytes.

``Attack.run`` starts them all, samples the server's RSS, probes ``/healthz`` while they run and
returns the figures.
"""

from __future__ import annotations

import socket
import statistics
import threading
import time
from dataclasses import dataclass, field

import httpx
import psutil

MiB = 1 << 20


def _connect(base: str, timeout: float) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=timeout)


def _status(sock: socket.socket) -> int | None:
    """The status of whatever the server answered before closing, or None if it answered nothing."""
    data = b""
    try:
        while len(data) < 4096:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    if not data.startswith(b"HTTP/1.1 "):
        return None
    return int(data.split(b" ", 2)[1])


def flood(base: str, *, token: str | None, mib: int = 200, chunked: bool = False) -> int | None:
    """POST ``mib`` MiB of JSON to /v1/runs as fast as the server reads; the status it answered."""
    body_head = b'{"name": "flood", "meta": {"x": "'
    headers = [b"POST /v1/runs HTTP/1.1", b"Host: attack", b"Content-Type: application/json"]
    if token is not None:
        headers.append(f"Authorization: Bearer {token}".encode())
    headers.append(
        b"Transfer-Encoding: chunked" if chunked else f"Content-Length: {mib * MiB}".encode()
    )
    block = b"x" * MiB
    with _connect(base, timeout=30) as sock:
        try:
            sock.sendall(b"\r\n".join(headers) + b"\r\n\r\n")
            for index in range(mib):
                data = body_head if index == 0 else block
                sock.sendall(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
        except OSError:
            pass  # the server answered and closed: the rest was never read
        return _status(sock)


def slow_headers(
    base: str, *, pause: float = 0.5, limit_s: float = 120
) -> tuple[int | None, float]:
    """Send a request's headers one byte per ``pause``; (status, seconds until the server cut us)."""
    request = b"GET /healthz HTTP/1.1\r\nHost: attack\r\n" + b"X-Slow: " + b"s" * 10_000
    started = time.monotonic()
    with _connect(base, timeout=limit_s) as sock:
        try:
            for byte in request:
                sock.sendall(bytes([byte]))
                time.sleep(pause)
                if time.monotonic() - started > limit_s:
                    break
        except OSError:
            pass
        status = _status(sock)
    return status, time.monotonic() - started


def slow_body(
    base: str, *, token: str, path: str, limit_s: float = 120
) -> tuple[int | None, float]:
    """Start an upload to ``path``, then stop sending; (status, seconds until the server cut us)."""
    head = (
        f"PUT {path} HTTP/1.1\r\nHost: attack\r\nAuthorization: Bearer {token}\r\n"
        f"X-Content-SHA256: {'0' * 64}\r\nContent-Length: 60000\r\n\r\n"
    ).encode()
    started = time.monotonic()
    with _connect(base, timeout=limit_s) as sock:
        sock.sendall(head + b'{"step": 1, "loss": 0.5}\n' * 4)
        status = _status(sock)
    return status, time.monotonic() - started


@dataclass
class Figures:
    rss_before_mb: float
    rss_peak_mb: float
    healthz_ms: list[float]
    flood_statuses: dict[str, int | None]
    slow_header_cuts: list[tuple[int | None, float]]
    slow_body_cuts: list[tuple[int | None, float]]
    spooled_left: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def rss_growth_mb(self) -> float:
        return self.rss_peak_mb - self.rss_before_mb

    def lines(self) -> list[str]:
        ms = self.healthz_ms
        header_s = [s for _, s in self.slow_header_cuts]
        body_s = [s for _, s in self.slow_body_cuts]
        return [
            f"server RSS: {self.rss_before_mb:.1f} MB before, {self.rss_peak_mb:.1f} MB peak "
            f"(growth {self.rss_growth_mb:.1f} MB)",
            f"/healthz during the attack ({len(ms)} probes): p50 {statistics.median(ms):.1f} ms, "
            f"max {max(ms):.1f} ms",
            f"200 MiB floods answered: {self.flood_statuses}",
            f"slow-header clients cut after {min(header_s):.2f}-{max(header_s):.2f} s with "
            f"{sorted({str(s) for s, _ in self.slow_header_cuts})}",
            f"slow-body clients cut after {min(body_s):.2f}-{max(body_s):.2f} s with "
            f"{sorted({str(s) for s, _ in self.slow_body_cuts})}",
        ]


def attack(
    base: str,
    pid: int,
    *,
    token: str,
    run_id: str,
    slow_clients: int = 10,
    probes: int = 20,
) -> Figures:
    """Run every attack at once against the API at ``base`` (process ``pid``) and measure it."""
    server = psutil.Process(pid)
    rss_before = server.memory_info().rss / 1e6
    peak = rss_before
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, server.memory_info().rss / 1e6)
            time.sleep(0.02)

    floods: dict[str, int | None] = {}
    header_cuts: list[tuple[int | None, float]] = []
    body_cuts: list[tuple[int | None, float]] = []
    upload = f"/v1/runs/{run_id}/train-log"
    jobs = [
        lambda: floods.update(anonymous=flood(base, token=None)),
        lambda: floods.update(anonymous_chunked=flood(base, token=None, chunked=True)),
        lambda: floods.update(unknown_token=flood(base, token="obst_not-a-token")),
        lambda: floods.update(unknown_token_chunked=flood(base, token="obst_x", chunked=True)),
        lambda: floods.update(token=flood(base, token=token)),
        lambda: floods.update(token_chunked=flood(base, token=token, chunked=True)),
    ]
    for _ in range(slow_clients):
        jobs.append(lambda: header_cuts.append(slow_headers(base)))
        jobs.append(lambda: body_cuts.append(slow_body(base, token=token, path=upload)))
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    threads = [threading.Thread(target=job, daemon=True) for job in jobs]
    for thread in threads:
        thread.start()
    latencies: list[float] = []
    time.sleep(0.3)  # the attack is under way
    with httpx.Client(base_url=base, timeout=30) as client:
        for _ in range(probes):
            begun = time.perf_counter()
            response = client.get("/healthz")
            latencies.append((time.perf_counter() - begun) * 1000)
            assert response.status_code == 200, response.text
            time.sleep(0.1)
    for thread in threads:
        thread.join(timeout=180)
    done.set()
    sampler.join()
    return Figures(rss_before, peak, latencies, floods, header_cuts, body_cuts)

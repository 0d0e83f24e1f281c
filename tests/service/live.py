"""A real ``obstacle serve --api-only`` process for the HTTP tests, with settings of the test's own."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from conftest_services import OBSTACLE_CLI, Process, service_env
from obstacle.service.settings import Settings


def start_live_api(
    start: Callable[..., Process], settings: Settings, **env: str
) -> tuple[str, Process]:
    """The base URL of a new API process once /healthz answers 200, and the process."""
    argv = [*OBSTACLE_CLI, "serve", "--api-only", "--port", "0"]
    api = start(argv, service_env(settings, **env), "api")
    base = api.wait_for(r"API listening on (http://[0-9.]+:\d+)", timeout=90).group(1)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/healthz", timeout=5).status_code == 200:
                return base, api
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"the API at {base} did not become healthy; log:\n{api.text()[-4000:]}")


def raw_connection(base: str, timeout: float = 30) -> socket.socket:
    """A TCP connection to the API, for clients that misbehave on purpose."""
    host, port = base.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=timeout)


def read_response(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


@contextmanager
def serving(settings: Settings, log_dir: Path, **env: str) -> Iterator[tuple[str, Process]]:
    """``start_live_api`` for a fixture wider than one test: stopped when the block ends."""
    started: list[Process] = []

    def start(argv: list[str], environment: dict[str, str], name: str) -> Process:
        log = log_dir / f"{name}.log"
        with log.open("wb") as handle:
            popen = subprocess.Popen(
                argv,
                env=environment,
                stdout=handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        started.append(Process(popen, log))
        return started[-1]

    try:
        yield start_live_api(start, settings, **env)
    finally:
        for process in started:
            process.stop()

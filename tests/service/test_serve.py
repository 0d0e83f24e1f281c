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


@pytest.mark.slow
def test_serve_runs_the_embedded_stack_and_stops_all_of_it(
    tmp_path: Path, processes: Callable[..., Process]
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OBSTACLE_")}
    env["OBSTACLE_DEVICE"] = "cpu"
    serve = processes([*OBSTACLE_CLI, "serve", "--port", "0"], env, "serve", cwd=tmp_path)
    line = serve.wait_for(r"API listening on .*", timeout=90).group(0)
    base = re.search(r"http://[0-9.]+:\d+", line).group(0)  # type: ignore[union-attr]
    broker = re.search(r"broker (redis://\S+) \(embedded\)", line).group(1)  # type: ignore[union-attr]
    worker_pid = int(re.search(r"worker pid (\d+)", line).group(1))  # type: ignore[union-attr]
    assert "database sqlite:///" in line and str(tmp_path / "obstacle-data") in line

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            health = httpx.get(f"{base}/healthz", timeout=2)
            if health.status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    assert health.json() == {"status": "ok", "database": "ok", "broker": "ok"}

    created = subprocess.run(
        [*OBSTACLE_CLI, "token", "create", "--project", "laptop"],
        env=env,
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
    for _ in range(50):
        try:
            os.kill(worker_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the worker outlived `obstacle serve`")
    with pytest.raises(redis.exceptions.ConnectionError):
        redis.Redis.from_url(broker, socket_connect_timeout=1).ping()

"""The worker's container health check (``python -m obstacle.workers.health``) against a real
worker: healthy while its node answers a ping through the broker, unhealthy with a reason after."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest_services import Process, make_settings, service_env, start_worker

HEALTH = [sys.executable, "-m", "obstacle.workers.health"]


@pytest.mark.slow
def test_health_check_follows_a_real_worker(
    sqlite_database_url: str, redis_url: str, tmp_path: Path, processes: Callable[..., Process]
) -> None:
    settings = make_settings(sqlite_database_url, redis_url, tmp_path)
    env = service_env(settings)
    worker = start_worker(processes, settings, "worker")
    healthy = subprocess.run(HEALTH, env=env, capture_output=True, text=True, timeout=60)
    assert healthy.returncode == 0, healthy.stderr
    assert f"obstacle-cpu-{worker.popen.pid}@" in healthy.stdout

    worker.kill()
    unhealthy = subprocess.run(HEALTH, env=env, capture_output=True, text=True, timeout=60)
    assert unhealthy.returncode == 1
    assert "no worker node of host" in unhealthy.stderr and "Traceback" not in unhealthy.stderr

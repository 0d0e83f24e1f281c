"""Under a 200 MiB body, slow-header and slow-body clients at once, a real ``obstacle serve``
keeps its memory and keeps answering /healthz (issue 13; the figures: bench/service_attacks.py)."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from conftest_services import make_settings, make_tenant
from service.attacks import attack
from service.live import serving

TIMEOUTS = {"OBSTACLE_HEADER_TIMEOUT_S": "2", "OBSTACLE_BODY_IDLE_TIMEOUT_S": "2"}


def test_attacks_cost_the_server_little_memory_and_no_health_latency(
    sqlite_database_url: str, redis_url: str, tmp_path: Path
) -> None:
    settings = make_settings(sqlite_database_url, redis_url, tmp_path)
    tenant = make_tenant(sqlite_database_url)
    with serving(settings, tmp_path, **TIMEOUTS) as (base, api):
        run = httpx.post(f"{base}/v1/runs", json={"name": "target"}, headers=tenant.headers)
        figures = attack(base, api.popen.pid, token=tenant.token, run_id=run.json()["id"])
        log = api.text()
    print("\n".join(figures.lines()))
    assert figures.rss_growth_mb < 100, figures.lines()
    # The issue asks 100 ms; a shared 2-core CI machine gets a margin above it for the worst probe.
    assert sorted(figures.healthz_ms)[len(figures.healthz_ms) // 2] < 100, figures.lines()
    assert max(figures.healthz_ms) < 250, figures.lines()
    # Content-Length over the limit: 413 from the headers; chunked: 401 from the headers without
    # a valid token, 413 once the limit is passed with one.
    assert figures.flood_statuses == {
        "anonymous": 413,
        "anonymous_chunked": 401,
        "unknown_token": 413,
        "unknown_token_chunked": 401,
        "token": 413,
        "token_chunked": 413,
    }, figures.lines()
    assert all(s == 408 and t < 20 for s, t in figures.slow_header_cuts), figures.lines()
    assert all(s == 408 and t < 20 for s, t in figures.slow_body_cuts), figures.lines()
    assert list(settings.resolved_upload_tmp_dir.glob("upload-*")) == []
    assert not re.search(r"Traceback|Exception in ASGI", log), log[-3000:]


pytestmark = pytest.mark.slow

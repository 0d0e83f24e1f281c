"""End to end over real HTTP: API and worker processes, a real run, the local verdict."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest_services import Process, Tenant, make_settings, start_api, start_worker, upload_run
from obstacle.battery.analysis import analyze


def poll(
    client: httpx.Client, analysis_id: str, headers: dict[str, str], timeout: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    seen: list[dict[str, int]] = []
    while time.monotonic() < deadline:
        body: dict[str, Any] = client.get(f"/v1/analyses/{analysis_id}", headers=headers).json()
        if not seen or seen[-1] != body["progress"]:
            seen.append(body["progress"])
        if body["state"] in ("succeeded", "failed"):
            body["_progress_seen"] = seen
            return body
        time.sleep(0.2)
    raise AssertionError(f"analysis {analysis_id} did not finish in {timeout} s; progress {seen}")


@pytest.fixture(scope="module")
def local_report(tiny_run: Path) -> dict[str, Any]:
    """`obstacle analyze` on the same run directory, in this process (once for both databases)."""
    return analyze(tiny_run, preset="quick", target_loss=0.05)


@pytest.mark.slow
def test_upload_analyse_and_get_the_local_verdict(
    local_report: dict[str, Any],
    database_url: str,
    redis_url: str,
    tmp_path: Path,
    tenant: Tenant,
    tiny_run: Path,
    processes: Callable[..., Process],
) -> None:
    settings = make_settings(database_url, redis_url, tmp_path)
    base = start_api(processes, settings)
    start_worker(processes, settings, "worker")
    with httpx.Client(base_url=base, timeout=30) as client:
        run_id = upload_run(client, tiny_run, tenant.headers)
        started = client.post(
            f"/v1/runs/{run_id}/analyses",
            json={"preset": "quick", "target_loss": 0.05},
            headers=tenant.headers,
        )
        assert started.status_code == 202, started.text
        result = poll(client, started.json()["id"], tenant.headers, timeout=120)
        assert result["state"] == "succeeded", result
        assert result["progress"] == {"done": 3, "total": 3, "running": 0, "failed": 0}
        assert result["errors"] == []

        local = local_report
        remote = result["report"]
        assert remote["schema"] == "obstacle.report/1"
        assert [c["step"] for c in remote["checkpoints"]] == [5, 10, 15]
        assert remote["verdict"]["primary"] == local["verdict"]["primary"]
        assert [o["kind"] for o in remote["verdict"]["obstacles"]] == [
            o["kind"] for o in local["verdict"]["obstacles"]
        ]
        assert [o["kind"] for o in remote["verdict"]["ruled_out"]] == [
            o["kind"] for o in local["verdict"]["ruled_out"]
        ]

        if result["report_files"]:
            html = client.get(f"/v1/analyses/{result['id']}/report.html", headers=tenant.headers)
            assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
            for name in (f for f in result["report_files"] if f.startswith("plots/")):
                png = client.get(f"/v1/analyses/{result['id']}/{name}", headers=tenant.headers)
                assert png.status_code == 200 and png.content.startswith(b"\x89PNG")

"""End to end over real HTTP: API and worker processes, a real run, the local verdict."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest_services import (
    WORKER_READY,
    Process,
    Tenant,
    make_settings,
    poll,
    start_api,
    start_worker,
    upload_run,
)
from obstacle.artifacts.layout import TRAIN_LOG, list_checkpoints
from obstacle.battery.analysis import analyze
from scenarios.builders import SCENARIOS

SCENARIO = "poor_conditioning/relu_mlp_momentum"  # SGD with momentum: optimizer state travels too


@pytest.fixture(scope="module")
def scenario_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scenario run of the verdict suite, with its training log, as a client uploads it."""
    run_dir = tmp_path_factory.mktemp("scenario") / "run"
    SCENARIOS[SCENARIO](run_dir)
    assert (run_dir / TRAIN_LOG).is_file(), "the scenario must log its minibatch losses"
    return run_dir


@pytest.fixture(scope="module")
def local_report(scenario_run: Path) -> dict[str, Any]:
    """`obstacle analyze` on the same run directory, in this process (once for both databases)."""
    return analyze(scenario_run, preset="quick")


@pytest.mark.slow
def test_upload_analyse_and_get_the_local_verdict(
    local_report: dict[str, Any],
    database_url: str,
    redis_url: str,
    tmp_path: Path,
    tenant: Tenant,
    scenario_run: Path,
    processes: Callable[..., Process],
) -> None:
    settings = make_settings(database_url, redis_url, tmp_path)
    worker = start_worker(processes, settings, "worker", wait=False)  # both start at once
    base = start_api(processes, settings)
    worker.wait_for(WORKER_READY, timeout=60)
    with httpx.Client(base_url=base, timeout=30) as client:
        run_id = upload_run(client, scenario_run, tenant.headers)
        started = client.post(
            f"/v1/runs/{run_id}/analyses", json={"preset": "quick"}, headers=tenant.headers
        )
        assert started.status_code == 202, started.text
        result = poll(client, started.json()["id"], tenant.headers, timeout=120)
        assert result["state"] == "succeeded", result
        steps = [step for step, _ in list_checkpoints(scenario_run)]
        total = len(steps)
        assert result["progress"] == {"done": total, "total": total, "running": 0, "failed": 0}
        assert result["errors"] == []

        local = local_report
        remote = result["report"]
        assert remote["schema"] == "obstacle.report/1"
        assert [c["step"] for c in remote["checkpoints"]] == steps
        assert remote["verdict"]["primary"] == local["verdict"]["primary"], (
            remote["verdict"],
            local["verdict"],
        )
        assert [o["kind"] for o in remote["verdict"]["obstacles"]] == [
            o["kind"] for o in local["verdict"]["obstacles"]
        ]
        assert [o["kind"] for o in remote["verdict"]["ruled_out"]] == [
            o["kind"] for o in local["verdict"]["ruled_out"]
        ]
        # The training log travelled: the service's report plots the same logged losses.
        assert local["run"]["train_log"] is not None
        assert remote["run"]["train_log"]["steps"] == local["run"]["train_log"]["steps"]
        assert remote["run"]["train_log"]["loss"] == pytest.approx(
            local["run"]["train_log"]["loss"], rel=1e-12, nan_ok=True
        )
        assert remote["run"]["train_log"]["rate"] == local["run"]["train_log"]["rate"]

        if result["report_files"]:
            html = client.get(f"/v1/analyses/{result['id']}/report.html", headers=tenant.headers)
            assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
            pngs = [
                f for f in result["report_files"] if f.startswith("plots/") and f.endswith(".png")
            ]
            assert pngs, result["report_files"]
            for name in pngs:  # plots/captions.txt is served inside the HTML, not on its own
                png = client.get(f"/v1/analyses/{result['id']}/{name}", headers=tenant.headers)
                assert png.status_code == 200 and png.content.startswith(b"\x89PNG")

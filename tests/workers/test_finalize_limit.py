"""A real prefork worker (the pool that enforces time limits) on a run whose run-level tests take
longer than OBSTACLE_FINALIZE_TIME_LIMIT_S: the task is queued with the limit its checkpoints'
measured cost predicts, and the analysis succeeds instead of failing after every checkpoint is done.
This is what a 25M-parameter model on a CPU worker meets with the 240 s default."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from torch import nn

import obstacle
from conftest_services import (
    OBSTACLE_CLI,
    WORKER_READY,
    Process,
    make_settings,
    make_tenant,
    poll,
    service_env,
    upload_run,
)
from obstacle.service.app import create_app

FLOOR_S = 1  # OBSTACLE_FINALIZE_TIME_LIMIT_S, below what this run's run-level tests take


def _run(run_dir: Path) -> Path:
    """Three checkpoints of a 9k-parameter MLP whose probe is 8 batches of 512: the standard
    preset's ~290 run-level loss evaluations take seconds."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.Tanh(), nn.Linear(128, 8))
    x = torch.randn(8 * 512, 64)
    y = (x[:, :8].argmax(dim=1) + (x[:, 8] > 1).long()) % 8
    batches = [(x[i : i + 512], y[i : i + 512]) for i in range(0, len(x), 512)]
    loss_fn = nn.CrossEntropyLoss()
    obstacle.Probe.capture(model, loss_fn, batches).save(run_dir)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
    for step in range(1, 31):
        xb, yb = batches[step % len(batches)]
        optimizer.zero_grad()
        loss = loss_fn(model(xb), yb)
        loss.backward()
        optimizer.step()
        if step % 10 == 0:
            obstacle.save_checkpoint(run_dir, model, step=step, lr=0.2, train_loss=loss.item())
    return run_dir


@pytest.mark.slow
def test_a_run_level_task_longer_than_the_setting_gets_the_time_its_checkpoints_predict(
    sqlite_database_url: str,
    redis_url: str,
    tmp_path: Path,
    processes: Callable[..., Process],
) -> None:
    settings = make_settings(
        sqlite_database_url, redis_url, tmp_path, finalize_time_limit_s=FLOOR_S
    )
    tenant = make_tenant(sqlite_database_url)
    argv = [*OBSTACLE_CLI, "worker", "--pool", "prefork", "--concurrency", "1"]
    worker = processes([*argv, "--loglevel", "INFO"], service_env(settings), "worker")
    run_dir = _run(tmp_path / "run")
    with TestClient(create_app(settings)) as client:
        run_id = upload_run(client, run_dir, tenant.headers)
        worker.wait_for(WORKER_READY, timeout=90)
        started = client.post(
            f"/v1/runs/{run_id}/analyses", json={"preset": "standard"}, headers=tenant.headers
        )
        assert started.status_code == 202, started.text
        result = poll(client, started.json()["id"], tenant.headers, timeout=400)
    assert result["state"] == "succeeded", (result.get("errors"), worker.text()[-3000:])
    assert result["report"]["run"]["subspace"]["loss"], "the run-level tests ran to the end"

    queued = worker.wait_for(r"run-level task queued, time limit (\d+) s \(3 × the ([\d.]+) s", 10)
    took = worker.wait_for(
        r"Task obstacle\.finalize_analysis\[[^\]]+\] succeeded in ([\d.]+)s", timeout=10
    )
    limit, predicted, spent = int(queued.group(1)), float(queued.group(2)), float(took.group(1))
    # The setting alone would have stopped the task (its soft limit is 0.9 × the hard one).
    assert spent > FLOOR_S, (
        "the run-level tests must outlast the setting for this test to mean anything"
    )
    assert limit > spent and limit >= predicted, (limit, predicted, spent)

"""Warm start through the service: one worker analyses an analysis's checkpoints in order, Lanczos
carried from each to the next, so the service spends the HVPs that `obstacle analyze` spends."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from torch import nn

import obstacle
from conftest_services import Process, Tenant, make_settings, poll, start_worker, upload_run
from obstacle.battery.analysis import analyze, analyze_checkpoint
from obstacle.service.app import create_app

PRESET = "quick"
CHECKPOINTS = 5


def build_sequence_run(run_dir: Path) -> Path:
    """A run where warm starting pays: a 1.4k-parameter MLP on teacher labels, plain SGD, a
    checkpoint every 10 steps (the tiny run's 44 parameters converge too fast to tell)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 3)
    ).double()
    generator = torch.Generator().manual_seed(0)
    teacher = torch.randn(8, 3, generator=generator, dtype=torch.float64)
    x = torch.randn(128, 8, generator=generator, dtype=torch.float64)
    y = (x @ teacher).argmax(dim=1)
    batches = [(x[i : i + 32], y[i : i + 32]) for i in range(0, 128, 32)]
    loss_fn = nn.CrossEntropyLoss()
    obstacle.Probe.capture(model, loss_fn, batches).save(run_dir)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    step = 0
    for _ in range(CHECKPOINTS):
        for _ in range(10):
            xb, yb = batches[step % len(batches)]
            optimizer.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            optimizer.step()
            step += 1
        obstacle.save_checkpoint(run_dir, model, step=step, lr=0.1, train_loss=loss.item())
    return run_dir


def hvp_evals(record: dict[str, Any]) -> int:
    """The HVPs the battery spent on one checkpoint, over all its quantities."""
    return sum(
        int((d or {}).get("cost", {}).get("hvp_evals", 0)) for d in record["details"].values()
    )


@pytest.fixture(scope="module")
def sequence_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_sequence_run(tmp_path_factory.mktemp("sequence") / "run")


@pytest.fixture(scope="module")
def local_hvps(sequence_run: Path) -> list[int]:
    """HVPs per checkpoint of `obstacle analyze` (in order, warm-started), once for both databases;
    checked to be well below cold starts, or this run could not tell the two apart."""
    report = analyze(sequence_run, preset=PRESET)
    warm = [hvp_evals(r) for r in report["checkpoints"]]
    cold = [
        hvp_evals(analyze_checkpoint(sequence_run, int(r["step"]), preset=PRESET))
        for r in report["checkpoints"]
    ]
    assert len(warm) == CHECKPOINTS and sum(warm) < 0.85 * sum(cold), (warm, cold)
    return warm


@pytest.mark.slow
def test_the_service_spends_the_hvps_of_a_local_analysis(
    local_hvps: list[int],
    database_url: str,
    redis_url: str,
    tmp_path: Path,
    tenant: Tenant,
    sequence_run: Path,
    processes: Callable[..., Process],
) -> None:
    settings = make_settings(database_url, redis_url, tmp_path)
    assert settings.checkpoints_per_task >= CHECKPOINTS  # the default: one group, one worker
    with TestClient(create_app(settings)) as client:
        run_id = upload_run(client, sequence_run, tenant.headers)
        start_worker(processes, settings, "worker")
        started = client.post(
            f"/v1/runs/{run_id}/analyses", json={"preset": PRESET}, headers=tenant.headers
        )
        assert started.status_code == 202, started.text
        result = poll(client, started.json()["id"], tenant.headers, timeout=180)
    assert result["state"] == "succeeded", result
    records = result["report"]["checkpoints"]
    assert all(r["details"]["lanczos"]["matvecs"] > 0 for r in records)
    service = [hvp_evals(r) for r in records]
    assert len(service) == CHECKPOINTS
    assert sum(service) <= 1.1 * sum(local_hvps), (service, local_hvps)

"""The SDK and the CLI against a real running service (API + Celery worker + Redis + SQLite)."""

from __future__ import annotations

import hashlib
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import obstacle
from obstacle.artifacts.layout import TRAIN_LOG, checkpoint_filename, optimizer_filename
from obstacle.battery.checkpoint import append_train_log
from obstacle.cli import app
from obstacle.client import AnalysisResult, Client, upload_run_dir
from obstacle.errors import InputError, ServiceError

from .conftest import CountingTransport, Service

pytestmark = pytest.mark.slow
runner = CliRunner()
ANALYSIS_TIMEOUT = "600"


def gate(service: Service, *args: str) -> tuple[int, str]:
    result = runner.invoke(
        app,
        ["gate", *args, "--preset", "quick", "--no-progress", "--timeout", ANALYSIS_TIMEOUT],
        env={"OBSTACLE_URL": service.url, "OBSTACLE_TOKEN": service.token},
    )
    return result.exit_code, result.output


def test_gate_passes_a_healthy_run(service: Service, healthy_run: Path, tmp_path: Path) -> None:
    junit = tmp_path / "gate.xml"
    code, out = gate(service, str(healthy_run), "--junit-xml", str(junit))
    assert code == 0, out
    root = ET.parse(junit).getroot()
    names = [case.get("name") for case in root.iter("testcase")]
    assert sorted(names) == sorted(
        f"{healthy_run.name}: {label}"
        for label in ["local_minimum", "saddle_point", "poor_conditioning", "gradient_noise",
                      "no_critical_point", "divergence", "overfitting"]
    )  # fmt: skip
    assert root.find("testsuite/testcase/failure") is None


def test_gate_fails_a_divergent_run(service: Service, divergent_run: Path, tmp_path: Path) -> None:
    junit, summary = tmp_path / "gate.xml", tmp_path / "summary.md"
    code, out = gate(
        service, str(divergent_run), "--junit-xml", str(junit), "--markdown", str(summary)
    )
    assert code == 1, out
    assert "divergence present" in out and "    - [" in out
    run_id = re.search(rf"^run: {divergent_run.name} \(([0-9a-f-]{{36}})\)$", out, re.M)
    analysis_id = re.search(r"^analysis: ([0-9a-f-]{36})$", out, re.M)
    assert run_id and analysis_id, out
    report_url = f"{service.url}/v1/analyses/{analysis_id.group(1)}/report.html"
    assert f"report: {report_url}" in out
    root = ET.parse(junit).getroot()
    failures = root.findall("testsuite/testcase/failure")
    assert [f.get("type") for f in failures] == ["divergence"]
    names = [case.get("name") for case in root.iter("testcase")]
    assert f"{divergent_run.name}: divergence" in names  # the run's name, not the server's path
    props = {p.get("name"): p.get("value") for p in root.iter("property")}
    assert props["run_id"] == run_id.group(1) and props["report_url"] == report_url
    text = summary.read_text(encoding="utf-8")
    assert "`divergence`" in text and analysis_id.group(1) in text
    with Client(service.url, service.token) as client:  # the link serves the report
        html = client.request("GET", report_url.removeprefix(service.url)).text
    assert html.lstrip().lower().startswith("<!doctype html")


def test_gate_exits_2_on_broken_input(service: Service, broken_run: Path) -> None:
    code, out = gate(service, str(broken_run))
    assert code == 2, out
    assert "422" in out  # the service's problem detail is shown


def test_gate_exits_2_when_the_service_is_down(divergent_run: Path) -> None:
    down = Service(url="http://127.0.0.1:9", token="x", data_dir=Path("."))
    code, out = gate(down, str(divergent_run))
    assert code == 2 and "could not be reached" in out


def test_gate_on_an_existing_run(service: Service, divergent_run: Path) -> None:
    with Client(service.url, service.token) as client:
        run_id = upload_run_dir(client, divergent_run, name="existing", progress=False).run.id
    code, out = gate(service, "--run", run_id, "--fail-on", "divergence")
    assert code == 1, out
    assert f"run: existing ({run_id})" in out


def test_resumed_upload_sends_only_missing_checkpoints(
    service: Service, divergent_run: Path, tmp_path: Path
) -> None:
    partial = tmp_path / "resume-me"
    shutil.copytree(divergent_run, partial)
    steps = sorted(
        int(p.name[5:14]) for p in (partial / "checkpoints").glob("step_*[0-9].safetensors")
    )
    missing = steps[3:]
    for step in missing:  # as if the first upload was interrupted after three checkpoints
        (partial / "checkpoints" / checkpoint_filename(step)).rename(tmp_path / f"{step}.st")
        (partial / "checkpoints" / optimizer_filename(step)).rename(tmp_path / f"{step}.opt")
    for step in range(steps[-1] + 1):  # the loss blows up: NaN at the end, as json writes it
        loss = float("nan") if step == steps[-1] else 2.0 ** (step / 4)
        append_train_log(partial, step=step, lr=0.5, loss=loss)
    log = (partial / TRAIN_LOG).read_bytes()
    assert b"NaN" in log
    lines = log.splitlines(keepends=True)
    (partial / TRAIN_LOG).write_bytes(b"".join(lines[: len(lines) // 2]))  # logged so far
    with Client(service.url, service.token) as client:
        first = upload_run_dir(client, partial, progress=False)
        assert first.uploaded == steps[:3] and first.probe_uploaded and first.train_log_uploaded
        (partial / TRAIN_LOG).write_bytes(log)  # training went on: the log grew
        for step in missing:
            (tmp_path / f"{step}.st").rename(partial / "checkpoints" / checkpoint_filename(step))
            (tmp_path / f"{step}.opt").rename(partial / "checkpoints" / optimizer_filename(step))
    counting = CountingTransport()
    with Client(service.url, service.token, transport=counting) as client:
        second = upload_run_dir(client, partial, progress=False)
    assert second.run.id == first.run.id
    assert second.skipped == steps[:3] and second.uploaded == missing
    assert not second.probe_uploaded and second.train_log_uploaded
    puts = [path for method, path in counting.sent if method == "PUT"]
    expected = [f"/v1/runs/{first.run.id}/checkpoints/{s}" for s in missing]
    expected_optim = [f"{p}/optimizer" for p in expected]
    assert sorted(puts) == sorted(
        [*expected, *expected_optim, f"/v1/runs/{first.run.id}/train-log"]
    )
    # Steps the service lacked were hashed while sent (read once); the log it held a version of
    # was hashed first, to compare, and went with its digest in the header.
    assert {counting.checksums[path] for path in [*expected, *expected_optim]} == {"trailing"}
    train_log_sha = counting.checksums[f"/v1/runs/{first.run.id}/train-log"]
    assert train_log_sha == hashlib.sha256(log).hexdigest()
    assert second.run.num_checkpoints == len(steps)
    assert second.run.train_log_sha256 == hashlib.sha256(log).hexdigest()
    counting = CountingTransport()
    with Client(service.url, service.token, transport=counting) as client:
        third = upload_run_dir(client, partial, progress=False)
    assert not third.train_log_uploaded and not third.uploaded  # nothing new: nothing sent
    assert [path for method, path in counting.sent if method == "PUT"] == []


def test_sdk_logs_checkpoints_during_training_and_analyses(
    service: Service, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    g = torch.Generator().manual_seed(0)
    batches = [
        (
            torch.randn(16, 4, generator=g, dtype=torch.float64),
            torch.randint(0, 2, (16,), generator=g),
        )
        for _ in range(3)
    ]
    loss_fn = nn.CrossEntropyLoss()
    probe = obstacle.Probe.capture(model, loss_fn, batches)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    reference = tmp_path / "reference"
    losses: list[float] = []
    with Client(service.url, service.token) as client:
        with client.create_run("sdk", probe=probe, queue_size=2) as run:
            for step in range(13):
                x, y = batches[step % 3]
                loss = loss_fn(model(x), y)
                optimizer.zero_grad()
                loss.backward()
                if step % 3 == 0:
                    losses.append(loss.item())
                    run.log_checkpoint(
                        step, model, lr=0.1, train_loss=loss.item(), optimizer=optimizer
                    )
                    obstacle.save_checkpoint(
                        reference,
                        model,
                        step=step,
                        lr=0.1,
                        train_loss=loss.item(),
                        optimizer=optimizer,
                    )
                optimizer.step()  # mutates the weights while the upload may still be queued
            run.flush()
            assert run.uploaded_steps == [0, 3, 6, 9, 12]
            remote = {c.step: c for c in client.list_checkpoints(run.id)}
            for step, loss in zip(run.uploaded_steps, losses, strict=True):
                # The same file save_checkpoint writes (safetensors orders the header's metadata
                # at random, so the bytes, not their size, may differ between two saves).
                path = reference / "checkpoints" / checkpoint_filename(step)
                assert remote[step].size_bytes == path.stat().st_size
                assert remote[step].lr == 0.1 and remote[step].train_loss == loss
                optim = path.with_name(optimizer_filename(step))
                assert remote[step].optimizer_sha256 is not None
                assert optim.is_file()
            result = run.analyze(preset="quick", progress=False, timeout=600)
        assert isinstance(result, AnalysisResult)
        assert result.verdict["primary"] and result.report_json["checkpoints"]
        html = result.save_html(tmp_path / "report.html")
        assert html.read_text(encoding="utf-8").lstrip().lower().startswith("<!doctype html")
        code = runner.invoke(
            app,
            ["report", result.id, "--json", str(tmp_path / "r.json"), "--url", service.url,
             "--token", service.token],
        )  # fmt: skip
        assert code.exit_code == 0, code.output
        assert result.verdict["summary"] in code.output


def test_service_errors_carry_the_problem(service: Service) -> None:
    with Client(service.url, "not-a-token") as client, pytest.raises(ServiceError) as caught:
        client.list_runs()
    assert caught.value.status == 401
    assert "obstacle token create" in caught.value.problem["detail"]


def test_log_checkpoint_needs_a_probe(service: Service) -> None:
    with Client(service.url, service.token) as client:
        run = client.create_run("no-probe")
        with pytest.raises(InputError, match="no probe"):
            run.log_checkpoint(0, nn.Linear(2, 2), lr=0.1)
        client.delete_run(run.id)

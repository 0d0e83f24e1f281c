"""`obstacle submit`, `runs`, `analyses` and `status --wait` against a real service and worker."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from obstacle.cli import app
from obstacle.client import Client
from obstacle.errors import ServiceTimeoutError

from .conftest import Service

pytestmark = pytest.mark.slow
runner = CliRunner()


def obstacle(service: Service, *args: str) -> tuple[int, str]:
    result = runner.invoke(
        app, list(args), env={"OBSTACLE_URL": service.url, "OBSTACLE_TOKEN": service.token}
    )
    return result.exit_code, result.output


def test_submit_then_list_and_follow_to_the_verdict(service: Service, divergent_run: Path) -> None:
    code, out = obstacle(
        service, "submit", str(divergent_run), "--name", "cli-submit", "--preset", "quick",
        "--no-progress",
    )  # fmt: skip
    assert code == 0, out
    run_id = re.search(r"^run ([0-9a-f-]{36}) \(cli-submit\)", out, re.M)
    analysis_id = re.search(r"^analysis ([0-9a-f-]{36}): queued", out, re.M)
    assert run_id and analysis_id, out
    run, analysis = run_id.group(1), analysis_id.group(1)
    assert f"report: {service.url}/v1/analyses/{analysis}/report.html" in out
    assert f"obstacle status {analysis} --wait" in out

    code, out = obstacle(service, "runs")
    assert code == 0, out
    assert re.search(rf"^{run}\s+\d+\s+yes\s+\S+\s+cli-submit$", out, re.M), out
    code, out = obstacle(service, "runs", "--json")
    assert code == 0 and run in [json.loads(line)["id"] for line in out.splitlines()], out

    code, out = obstacle(service, "analyses", run)
    assert code == 0 and re.search(rf"^{analysis}\s+\w+", out, re.M), out

    code, out = obstacle(service, "status", analysis, "--wait", "--timeout", "600", "--no-progress")
    assert code == 0, out
    assert f"analysis {analysis} of run {run}: succeeded" in out
    assert "divergence" in out and f"/v1/analyses/{analysis}/report.html" in out

    code, out = obstacle(service, "status", analysis, "--json")
    status = json.loads(out)
    assert code == 0 and status["state"] == "succeeded" and status["primary"] == "divergence"
    code, out = obstacle(service, "analyses", run, "--json")
    listed = [json.loads(line) for line in out.splitlines()]
    assert [(a["id"], a["primary"]) for a in listed] == [(analysis, "divergence")]


def test_submit_json_and_a_resubmission_uploads_nothing(
    service: Service, divergent_run: Path
) -> None:
    code, out = obstacle(
        service, "submit", str(divergent_run), "--name", "cli-json", "--json", "--no-progress"
    )
    assert code == 0, out
    first = json.loads(out)
    assert set(first) >= {"run_id", "analysis_id", "report_url"} and first["uploaded"]
    code, out = obstacle(
        service, "submit", str(divergent_run), "--run", first["run_id"], "--json", "--no-progress"
    )
    second = json.loads(out)
    assert code == 0 and second["run_id"] == first["run_id"]
    assert second["uploaded"] == [] and second["analysis_id"] != first["analysis_id"]
    # Waiting less than the analysis takes: the renamed timeout error says how to follow it.
    with (
        Client(service.url, service.token) as client,
        pytest.raises(ServiceTimeoutError) as caught,
    ):
        client.wait_analysis(second["analysis_id"], timeout=0.01, progress=False)
    assert f"obstacle status {second['analysis_id']} --wait" in str(caught.value)


def test_commands_exit_2_with_the_reason(service: Service, broken_run: Path) -> None:
    code, out = obstacle(service, "submit", str(broken_run), "--no-progress")
    assert code == 2 and "422" in out, out
    missing = "00000000-0000-0000-0000-000000000000"
    for args in (("status", missing, "--wait"), ("analyses", missing)):
        code, out = obstacle(service, *args)
        assert code == 2 and "404" in out, out
    code, out = obstacle(service, "submit", str(broken_run), "--preset", "fast")
    assert code == 2 and "--preset must be quick, standard or full; got 'fast'" in out


def test_new_commands_document_their_exit_status() -> None:
    for command in ("submit", "runs", "analyses", "status"):
        result = CliRunner(env={"COLUMNS": "200"}).invoke(app, [command, "--help"])
        assert result.exit_code == 0, result.output
        assert "Exit status" in result.output, (command, result.output)

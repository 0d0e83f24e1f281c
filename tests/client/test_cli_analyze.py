"""`obstacle.analyze(run_dir)` in Python gives the report `obstacle analyze RUN_DIR --json` writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import obstacle
from obstacle.cli import app

pytestmark = pytest.mark.slow


def test_analyze_returns_the_typed_report_the_cli_writes(
    divergent_run: Path, tmp_path: Path
) -> None:
    report = obstacle.analyze(divergent_run, preset="quick")
    assert isinstance(report, obstacle.Report) and isinstance(report.verdict, obstacle.Verdict)
    assert report.primary == "divergence" and report.summary == report.verdict.summary
    finding = report.verdict.finding("divergence")
    assert finding is not None and finding.confidence >= 0.5 and finding.evidence
    assert all(e.statement for e in finding.evidence)
    assert report.run["name"] == divergent_run.name and len(report.checkpoints) >= 3

    written = tmp_path / "cli.json"
    result = CliRunner().invoke(
        app, ["analyze", str(divergent_run), "--preset", "quick", "--json", str(written),
              "--no-progress"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    from_cli = json.loads(written.read_text(encoding="utf-8"))
    assert report.to_json()["verdict"] == from_cli["verdict"]
    assert report.to_json().keys() == from_cli.keys()
    assert report.summary in result.output

    html = report.save_html(tmp_path / "report.html")
    assert html.read_text(encoding="utf-8").lstrip().lower().startswith("<!doctype html")
    assert (
        json.loads(report.save_json(tmp_path / "r.json").read_text())["verdict"]
        == (from_cli["verdict"])
    )


def test_analyze_refuses_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(obstacle.InputError, match="nowhere"):
        obstacle.analyze(tmp_path / "nowhere")

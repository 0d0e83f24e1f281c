"""`obstacle gate`: exit 0 on a healthy run, 1 on a stuck one, 2 when no analysis is possible.

In-process (``--local``) here; against the real service in ``test_service.py``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from typer.testing import CliRunner

from obstacle.cli import app
from obstacle.client._gate import OBSTACLE_LABELS

runner = CliRunner()


def gate(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["gate", *args, "--preset", "quick", "--no-progress"])
    return result.exit_code, result.output


def junit_cases(path: Path) -> dict[str, ET.Element]:
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    return {case.get("name", ""): case for case in root.iter("testcase")}


@pytest.mark.slow
def test_local_gate_passes_a_healthy_run(healthy_run: Path, tmp_path: Path) -> None:
    junit, summary = tmp_path / "gate.xml", tmp_path / "summary.md"
    code, out = gate(
        str(healthy_run), "--local", "--junit-xml", str(junit), "--markdown", str(summary)
    )
    assert code == 0, out
    assert "PASSED" in out and f"run: {healthy_run.name}" in out
    cases = junit_cases(junit)
    assert set(cases) == {f"{healthy_run.name}: {label}" for label in OBSTACLE_LABELS}
    assert not any(case.find("failure") is not None for case in cases.values())
    assert "✅ passed" in summary.read_text(encoding="utf-8")


@pytest.mark.slow
def test_local_gate_fails_a_divergent_run_with_evidence(
    divergent_run: Path, tmp_path: Path
) -> None:
    junit, summary = tmp_path / "gate.xml", tmp_path / "summary.md"
    code, out = gate(
        str(divergent_run), "--local", "--junit-xml", str(junit), "--markdown", str(summary)
    )
    assert code == 1, out
    assert "FAILED" in out and "divergence present with confidence" in out
    assert "    - [" in out  # the evidence lines, one per test
    cases = junit_cases(junit)
    failure = cases[f"{divergent_run.name}: divergence"].find("failure")
    assert failure is not None and failure.get("type") == "divergence"
    assert "[" in (failure.text or "")
    assert "❌ failed" in summary.read_text(encoding="utf-8")


@pytest.mark.slow
def test_local_gate_ignores_obstacles_not_listed(divergent_run: Path) -> None:
    code, out = gate(str(divergent_run), "--local", "--fail-on", "saddle_point,overfitting")
    assert code == 0, out


@pytest.mark.slow
def test_local_gate_respects_min_confidence(divergent_run: Path) -> None:
    code, out = gate(str(divergent_run), "--local", "--min-confidence", "1.0")
    # Divergence is certain here (confidence 1.0), so it still fails at the strictest level.
    assert code == 1, out


def test_local_gate_exits_2_on_broken_input(broken_run: Path, tmp_path: Path) -> None:
    junit, summary = tmp_path / "gate.xml", tmp_path / "summary.md"
    code, out = gate(
        str(broken_run), "--local", "--junit-xml", str(junit), "--markdown", str(summary)
    )
    assert code == 2, out
    assert "error:" in out
    cases = junit_cases(junit)
    name = f"{broken_run.name}: analysis"
    assert list(cases) == [name] and cases[name].find("error") is not None
    assert "no verdict" in summary.read_text(encoding="utf-8")


def test_gate_exits_2_on_a_missing_directory(tmp_path: Path) -> None:
    code, out = gate(str(tmp_path / "nowhere"), "--local")
    assert code == 2, out


@pytest.mark.parametrize(
    "args",
    [
        ["--fail-on", "saddle,divergence"],  # unknown label
        ["--run", "abc"],  # both RUN_DIR and --run
    ],
)
def test_gate_usage_errors_exit_2(args: list[str], tmp_path: Path) -> None:
    code, out = gate(str(tmp_path), "--local", *args)
    assert code == 2, out


def test_gate_without_service_settings_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OBSTACLE_URL", raising=False)
    monkeypatch.delenv("OBSTACLE_TOKEN", raising=False)
    code, out = gate(str(tmp_path))
    assert code == 2 and "OBSTACLE_URL" in out


def test_junit_names_each_case_after_the_run_and_keeps_the_ids(tmp_path: Path) -> None:
    from obstacle.client._gate import evaluate, junit_xml

    report = {
        "run": {"name": "3f9c2a0d81b7"},  # the service's report names its own directory
        "verdict": {
            "primary": "divergence",
            "summary": "The run diverged.",
            "obstacles": [{"kind": "divergence", "confidence": 1.0, "evidence": []}],
            "ruled_out": [],
        },
    }
    outcome = evaluate(
        report,
        fail_on=["divergence", "saddle_point"],
        min_confidence=0.5,
        run_name="resnet-lr0.1",
        run_id="r-1",
        analysis_id="a-1",
        report_url="http://svc/v1/analyses/a-1/report.html",
    )
    root = ET.parse(junit_xml(outcome, tmp_path / "gate.xml")).getroot()
    cases = root.findall("testsuite/testcase")
    assert [c.get("name") for c in cases] == [
        "resnet-lr0.1: divergence",
        "resnet-lr0.1: saddle_point",
    ]
    assert {c.get("classname") for c in cases} == {"obstacle.gate.resnet-lr0_1"}
    props = {p.get("name"): p.get("value") for p in root.iter("property")}
    assert props["run_id"] == "r-1" and props["analysis_id"] == "a-1"
    assert props["report_url"] == "http://svc/v1/analyses/a-1/report.html"
    assert "3f9c2a0d81b7" not in ET.tostring(root, encoding="unicode")


def test_every_command_has_help() -> None:
    for command in ("upload", "submit", "runs", "analyses", "status", "report", "gate"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0, result.output
        assert "Usage" in result.output


def test_commands_module_imports_no_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, obstacle.client.commands; "
        "assert 'torch' not in sys.modules and 'fastapi' not in sys.modules, "
        "sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'fastapi'))"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)

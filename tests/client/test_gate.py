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
    assert "PASSED" in out
    cases = junit_cases(junit)
    assert set(cases) == set(OBSTACLE_LABELS)
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
    failure = cases["divergence"].find("failure")
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
    assert list(cases) == ["analysis"] and cases["analysis"].find("error") is not None
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


def test_every_command_has_help() -> None:
    for command in ("upload", "status", "report", "gate"):
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

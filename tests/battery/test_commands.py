"""`obstacle analyze` and `obstacle demo` as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from obstacle.cli import app
from support import classification_batches, tiny_mlp, write_run

runner = CliRunner()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("run")
    write_run(
        run,
        tiny_mlp(),
        torch.nn.functional.cross_entropy,
        classification_batches(),
        steps=6,
        lr=0.5,
        every=2,
    )
    return run


def test_analyze_prints_the_verdict_and_writes_json_and_html(run_dir: Path, tmp_path: Path) -> None:
    out = runner.invoke(
        app,
        [
            "analyze",
            str(run_dir),
            "--preset",
            "quick",
            "--json",
            str(tmp_path / "r.json"),
            "--html",
            str(tmp_path / "r.html"),
            "--no-progress",
        ],
    )
    assert out.exit_code == 0, out.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["schema"] == "obstacle.report/1"
    assert report["verdict"]["summary"] in out.output
    assert "Ruled out:" in out.output
    html = (tmp_path / "r.html").read_text()
    assert report["verdict"]["primary"].replace("_", " ") in html.lower().replace("_", " ")
    assert (tmp_path / "r_files" / "plots").is_dir()


def test_target_loss_and_threshold_overrides_reach_the_verdict(
    run_dir: Path, tmp_path: Path
) -> None:
    out = runner.invoke(
        app,
        [
            "analyze",
            str(run_dir),
            "--preset",
            "quick",
            "--target-loss",
            "0.01",
            "--threshold",
            "plateau_rel=0.5",
            "--json",
            str(tmp_path / "r.json"),
            "--no-progress",
        ],
    )
    assert out.exit_code == 0, out.output
    verdict = json.loads((tmp_path / "r.json").read_text())["verdict"]
    assert verdict["target_loss"] == 0.01
    assert verdict["thresholds"]["plateau_rel"] == 0.5


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda run: run / "nowhere", "no probe found"),
        (lambda run: _truncated_copy(run), "truncated"),
    ],
)
def test_bad_run_directory_exits_2_with_a_clear_message(
    run_dir: Path, tmp_path: Path, make, message: str
) -> None:  # type: ignore[no-untyped-def]
    target = make(_copy(run_dir, tmp_path))
    out = runner.invoke(app, ["analyze", str(target), "--preset", "quick", "--no-progress"])
    assert out.exit_code == 2
    assert message in out.output


def test_bad_threshold_exits_2(run_dir: Path) -> None:
    out = runner.invoke(app, ["analyze", str(run_dir), "--threshold", "plateau_rel"])
    assert out.exit_code == 2 and "NAME=NUMBER" in out.output
    out = runner.invoke(
        app, ["analyze", str(run_dir), "--threshold", "nonsense=1", "--no-progress"]
    )
    assert out.exit_code == 2 and "Unknown threshold" in out.output


def test_help_explains_every_command() -> None:
    out = runner.invoke(app, ["--help"])
    assert out.exit_code == 0
    for command in ("analyze", "demo", "serve", "worker", "upload", "status", "report", "gate"):
        assert command in out.output
    out = runner.invoke(app, ["analyze", "--help"])
    assert "--target-loss" in out.output and "--preset" in out.output


@pytest.mark.slow
def test_demo_trains_analyses_and_names_each_obstacle(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "obstacle.cli", "demo", "--out", str(tmp_path), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    assert last == (
        "Verdicts: healthy-digits-mlp → healthy, saddle-deep-linear → saddle_point, "
        "divergent-digits-mlp → divergence"
    )
    for name in ("healthy-digits-mlp", "saddle-deep-linear", "divergent-digits-mlp"):
        assert (tmp_path / f"{name}.html").stat().st_size > 10_000
        assert json.loads((tmp_path / f"{name}.json").read_text())["schema"] == "obstacle.report/1"


def _copy(run: Path, tmp_path: Path) -> Path:
    import shutil

    target = tmp_path / "copy"
    shutil.copytree(run, target)
    return target


def _truncated_copy(run: Path) -> Path:
    path = sorted((run / "checkpoints").glob("step_*.safetensors"))[-1]
    path.write_bytes(path.read_bytes()[:-7])
    return run

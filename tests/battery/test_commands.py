"""`obstacle analyze` and `obstacle demo` as a user runs them."""

from __future__ import annotations

import fcntl
import inspect
import json
import os
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from obstacle.battery.analysis import analyze
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
    run = report["run"]
    assert f"{run['num_parameters']:,} parameters, preset quick, on cpu in float64" in out.output
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


def test_the_command_picks_its_device_as_a_worker_does() -> None:
    # A user on a GPU machine gets the GPU without a flag, as the service's workers do.
    from obstacle.workers.settings import WorkerSettings

    analyze = next(c for c in typer.main.get_command(app).commands.values() if c.name == "analyze")
    device = next(p for p in analyze.params if p.name == "device")
    assert device.default == WorkerSettings.model_fields["device"].default == "auto"
    out = runner.invoke(app, ["analyze", "--help"], env={"COLUMNS": "400"}, terminal_width=400)
    assert "auto (a GPU when CUDA is present" in out.output


def test_the_command_list_shows_each_summary_unbroken() -> None:
    # Wide enough for every summary on one line: a break inside one is the docstring's, not the
    # terminal's (it split `upload` and `status` mid-sentence).
    out = runner.invoke(app, ["--help"], env={"COLUMNS": "400"}, terminal_width=400)
    assert out.exit_code == 0
    lines = [" ".join(line.strip(" │").split()) for line in out.output.splitlines()]
    for command in app.registered_commands:
        assert command.callback is not None and command.callback.__doc__
        summary = " ".join(inspect.cleandoc(command.callback.__doc__).split("\n\n")[0].split())
        assert any(line.endswith(summary) for line in lines), (command.name, summary, out.output)


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


def test_progress_names_each_test_and_counts_its_products(run_dir: Path) -> None:
    """Within a checkpoint, progress hears of each test in order and of each of its Hessian-vector
    products: a long checkpoint shows where it is, and the ticks are the record's own HVPs."""
    events: list[tuple[str, int, int]] = []
    report = analyze(run_dir, preset="quick", progress=lambda *e: events.append(e))
    records = report["checkpoints"]
    starts = [i for i, e in enumerate(events) if e[0] == "checkpoint"]
    assert [events[i][1:] for i in starts] == [(k, len(records)) for k in range(len(records) + 1)]
    assert events[-2:] == [("run", 0, 1), ("run", 1, 1)]
    for record, lo, hi in zip(records, starts[:-1], starts[1:], strict=True):
        inside = events[lo + 1 : hi]
        tests = [(name.removeprefix("test:"), j, m) for name, j, m in inside if name != "products"]
        assert [name for name, _, _ in tests] == list(record["details"])
        assert [(j, m) for _, j, m in tests] == [(j, len(tests)) for j in range(len(tests))]
        # Each test's products count 1, 2, 3, ... from its own start.
        count, ticks = 0, 0
        for name, done, total in inside:
            if name == "products":
                assert (done, total) == (count + 1, 0)
                count, ticks = done, ticks + 1
            else:
                count = 0
        hvps = sum((d.get("cost") or {}).get("hvp_evals", 0) for d in record["details"].values())
        assert ticks == hvps > 0


def test_the_progress_bar_on_a_terminal_shows_the_test_and_its_products(run_dir: Path) -> None:
    """On a real terminal (a pty for stderr) the bar names the running test and its products."""
    command = [sys.executable, "-c", "from obstacle.cli import main; main()"]
    primary, secondary = os.openpty()
    # 50 rows of 200 columns: a new pty is 0 × 0, and a bar fitted to 0 columns shows nothing.
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    shown = b""
    try:
        with subprocess.Popen(
            [*command, "analyze", str(run_dir), "--preset", "quick"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=secondary,
        ) as child:
            os.close(secondary)  # the child holds the only other end: EOF when it exits
            while True:  # read as it writes, so that a full pty never blocks it
                try:
                    chunk = os.read(primary, 1 << 16)
                except OSError:  # EIO: the other end is closed
                    break
                if not chunk:
                    break
                shown += chunk
            code = child.wait(timeout=300)
    finally:
        os.close(primary)
    text = shown.decode("utf-8", "replace")
    assert code == 0, text[-2000:]
    assert re.search(r"lanczos \(\d+/\d+\), Hessian-vector products: 1\b", text), text[-2000:]
    assert "run-level tests and verdict" in text

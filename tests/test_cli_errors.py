"""The command line never shows a Python traceback for bad input: exit 2 and one line naming the
input; `obstacle --debug ...` shows the traceback. Each case runs the real console entry point."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest_services import build_run

OBSTACLE = [sys.executable, "-c", "from obstacle.cli import main; main()"]


@pytest.fixture(scope="module")
def good_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_run(tmp_path_factory.mktemp("good") / "run", checkpoints=2)


def _clone(good: Path, dest: Path) -> Path:
    shutil.copytree(good, dest)
    return dest


def _manifest_not_utf8(run: Path) -> Path:
    path = run / "probe" / "manifest.json"
    path.write_bytes(b'\xff\xfe{"format": "\xe9"}')
    return path


def _manifest_nested(run: Path) -> Path:
    path = run / "probe" / "manifest.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    return path


def _checkpoint_is_a_directory(run: Path) -> Path:
    path = sorted((run / "checkpoints").glob("step_*[0-9].safetensors"))[0]
    path.unlink()
    path.mkdir()
    return path


def _probe_data_is_a_directory(run: Path) -> Path:
    path = run / "probe" / "data.safetensors"
    path.unlink()
    path.mkdir()
    return path


def _truncated_checkpoint(run: Path) -> Path:
    path = sorted((run / "checkpoints").glob("step_*[0-9].safetensors"))[-1]
    path.write_bytes(path.read_bytes()[:50])
    return path


def _train_log_not_utf8(run: Path) -> Path:
    path = run / "train_log.jsonl"
    path.write_bytes(b'\xff\xff{"step":')
    return path


def _manifest_huge_number(run: Path) -> Path:
    path = run / "probe" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["num_batches"] = 0
    path.write_text(
        json.dumps(manifest).replace('"num_batches": 0', '"num_batches": ' + "9" * 5000)
    )
    return path


BROKEN_RUNS: dict[str, Callable[[Path], Path]] = {
    "manifest not UTF-8": _manifest_not_utf8,
    "manifest nested 100000 deep": _manifest_nested,
    "manifest with a 5000-digit number": _manifest_huge_number,
    "checkpoint path is a directory": _checkpoint_is_a_directory,
    "probe data path is a directory": _probe_data_is_a_directory,
    "truncated safetensors checkpoint": _truncated_checkpoint,
    "training log not UTF-8": _train_log_not_utf8,
}


def _obstacle(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> tuple[int, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("OBSTACLE_")}
    done = subprocess.run(
        [*OBSTACLE, *args],
        env={**base, **(env or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
    )
    return done.returncode, done.stdout + done.stderr


def _assert_refused(code: int, output: str, names: str) -> None:
    assert code == 2, output
    assert "Traceback" not in output, output
    assert names in output, output


@pytest.mark.parametrize("case", sorted(BROKEN_RUNS))
def test_analyze_refuses_a_broken_run_naming_the_file(
    case: str, good_run: Path, tmp_path: Path
) -> None:
    run = _clone(good_run, tmp_path / "run")
    bad = BROKEN_RUNS[case](run)
    code, output = _obstacle("analyze", str(run), "--preset", "quick", "--no-progress")
    _assert_refused(code, output, str(bad))


@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_analyze_refuses_a_missing_or_empty_run_dir(kind: str, tmp_path: Path) -> None:
    run = tmp_path / "run"
    if kind == "empty":
        run.mkdir()
    code, output = _obstacle("analyze", str(run), "--no-progress")
    _assert_refused(code, output, str(run))


def test_analyze_json_output_that_is_a_directory(good_run: Path, tmp_path: Path) -> None:
    code, output = _obstacle(
        "analyze", str(good_run), "--preset", "quick", "--no-progress", "--json", str(tmp_path)
    )
    _assert_refused(code, output, str(tmp_path))


def test_demo_out_that_is_a_file(tmp_path: Path) -> None:
    out = tmp_path / "a-file"
    out.write_text("")
    code, output = _obstacle("demo", "--out", str(out), "--no-progress")
    _assert_refused(code, output, str(out))


def test_serve_data_dir_that_is_a_file(tmp_path: Path) -> None:
    data = tmp_path / "a-file"
    data.write_text("")
    code, output = _obstacle(
        "serve", "--api-only", "--port", "0", "--data-dir", str(data),
        env={"OBSTACLE_BROKER_URL": "redis://127.0.0.1:6379/13"},
    )  # fmt: skip
    _assert_refused(code, output, str(data))


def test_serve_with_a_database_url_that_does_not_parse(tmp_path: Path) -> None:
    code, output = _obstacle(
        "serve", "--api-only", "--port", "0",
        env={"OBSTACLE_DATABASE_URL": "garbage", "OBSTACLE_BROKER_URL": "redis://127.0.0.1:6379/13"},
        cwd=tmp_path,
    )  # fmt: skip
    _assert_refused(code, output, "OBSTACLE_DATABASE_URL")


def test_token_create_with_an_unreachable_database(tmp_path: Path) -> None:
    code, output = _obstacle(
        "token", "create", "--project", "x",
        env={"OBSTACLE_DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:1/x"},
        cwd=tmp_path,
    )  # fmt: skip
    _assert_refused(code, output, "OBSTACLE_DATABASE_URL")


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("OBSTACLE_VISIBILITY_TIMEOUT_S", "abc"),
        ("OBSTACLE_MEMORY_BUDGET", "lots"),
        ("OBSTACLE_BROKER_URL", "notaurl"),  # the worker used to retry a connection forever
    ],
)
def test_worker_with_a_bad_setting(variable: str, value: str, tmp_path: Path) -> None:
    env = {"OBSTACLE_BROKER_URL": "redis://127.0.0.1:6379/13", variable: value}
    code, output = _obstacle("worker", env=env, cwd=tmp_path)
    _assert_refused(code, output, variable)


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    out = tmp_path / "a-file"
    out.write_text("")
    code, output = _obstacle("--debug", "demo", "--out", str(out), "--no-progress")
    assert code != 0 and "Traceback" in output and "NotADirectoryError" in output, output

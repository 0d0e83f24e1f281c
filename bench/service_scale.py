"""The service on a large model, the way a user runs it: `obstacle serve --api-only`, one
`obstacle worker` (prefork, one pool process with one intra-op thread) and `obstacle submit RUN_DIR`,
on a bench/scale.py run (a probe of the preset's 8 batches, 3 checkpoints) at 10M–25M parameters.
The service's settings are left at their defaults.

    python bench/service_scale.py --model gpt --size 25M            # ~20 minutes on 2 CPU cores
    python bench/service_scale.py --model cnn --size 25M --write    # also results-service-scale-cpu.txt

Prints: the upload's seconds (`obstacle submit`, the SDK's streaming upload); each task's wall time
from the worker's log; the run-level task's time limit and why it is that; the worker's peak RSS
(VmHWM of its pool process, which holds the battery); the verdict; and the Lanczos matvecs per
checkpoint. The matvecs must equal what bench/scale.py prints for the same row: the same run,
precision and warm start along one group. Needs a Redis (OBSTACLE_BROKER_URL, default
redis://127.0.0.1:6379/14, which is flushed); the database is SQLite in a temporary directory.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
import torch
from _machine import describe_machine
from _service import cli, create_token, free_port
from scale import FAMILIES, build_run, width_for, write_section

from obstacle.battery import presets
from obstacle.client import Client
from obstacle.errors import ObstacleError

RESULTS = Path(__file__).with_name("results-service-scale-cpu.txt")
MIB = 2**20


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (its pool processes)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as handle:
        return subprocess.Popen(argv, env=env, stdout=handle, stderr=subprocess.STDOUT)


def _wait_for(log: Path, pattern: str, process: subprocess.Popen[bytes], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(pattern, log.read_text(errors="replace"))
        if found:
            return found.group(1) if found.groups() else found.group(0)
        if process.poll() is not None:
            break
        time.sleep(0.3)
    raise SystemExit(f"{pattern!r} did not appear in {log}:\n{log.read_text()[-3000:]}")


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    family = FAMILIES[args.model]
    target = int(float(args.size.rstrip("Mm")) * 1e6)
    width = width_for(family, target)
    run_dir = work / "run"
    parameters = build_run(run_dir, family, width, presets.PRESETS[args.preset].max_batches)
    checkpoint_mib = sum(p.stat().st_size for p in run_dir.glob("checkpoints/*")) / MIB
    print(f"{args.model} × {parameters:,} parameters; run {checkpoint_mib:.0f} MiB", flush=True)

    redis.Redis.from_url(args.broker).flushdb()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OBSTACLE_")}
    env.update(
        OBSTACLE_DATA_DIR=str(work / "data"), OBSTACLE_BROKER_URL=args.broker, PYTHONUNBUFFERED="1"
    )
    token, port = create_token(env), free_port()
    api_log, worker_log = work / "api.log", work / "worker.log"
    api = _start(cli("serve", "--api-only", "--port", str(port)), env, api_log)
    worker = _start(
        cli("worker", "--pool", "prefork", "--concurrency", "1", "--loglevel", "INFO"),
        env,
        worker_log,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_for(api_log, r"API listening", api, 120)
        _wait_for(worker_log, r"ready\.", worker, 120)
        started = time.monotonic()
        submitted = subprocess.run(
            cli(
                *("submit", str(run_dir), "--url", url, "--token", token),
                *("--preset", args.preset, "--no-progress"),
            ),
            env=env,
            capture_output=True,
            text=True,
        )
        upload_s = time.monotonic() - started
        if submitted.returncode != 0:
            raise SystemExit(f"obstacle submit failed:\n{submitted.stdout}{submitted.stderr}")
        analysis_id = re.search(r"analysis ([0-9a-f-]{36})", submitted.stdout)
        assert analysis_id is not None, submitted.stdout
        error = None
        with Client(url, token, timeout=60) as client:
            try:
                result = client.wait_analysis(analysis_id.group(1), poll_interval=2)
                report: dict[str, Any] | None = result.report_json
            except ObstacleError as exc:
                report, error = None, str(exc)
        analysis_s = time.monotonic() - started - upload_s
        pools = _descendants(worker.pid)
        peak = max((_hwm_mib(pid) for pid in pools), default=0.0)
    finally:
        for process in (worker, api):
            process.terminate()
        for process in (worker, api):
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
    text = worker_log.read_text(errors="replace")
    tasks = re.findall(r"Task obstacle\.(\w+)\[[^\]]+\] succeeded in ([\d.]+)s", text)
    limit = re.search(r"run-level task queued, time limit (.+)", text)
    return {
        "parameters": parameters,
        "checkpoint_mib": checkpoint_mib,
        "upload_s": upload_s,
        "analysis_s": analysis_s,
        "tasks": [(name, float(seconds)) for name, seconds in tasks],
        "limit": limit.group(1).strip() if limit else None,
        "peak_mib": peak,
        "error": error,
        "report": report,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=list(FAMILIES), default="gpt")
    parser.add_argument("--size", default="25M", help="target parameter count (default 25M)")
    parser.add_argument("--preset", default="standard", choices=list(presets.PRESETS))
    parser.add_argument(
        "--broker",
        default=os.environ.get("OBSTACLE_BROKER_URL", "redis://127.0.0.1:6379/14"),
        help="the Redis the service and worker use (flushed first)",
    )
    parser.add_argument("--write", action="store_true", help=f"also write {RESULTS.name}")
    args = parser.parse_args()
    torch.set_num_threads(1)
    machine = describe_machine(f"preset {args.preset}; worker prefork, 1 pool process")
    print(machine, flush=True)
    with tempfile.TemporaryDirectory(prefix="service-scale-") as tmp:
        r = run(args, Path(tmp))
    report = r["report"] or {}
    records = report.get("checkpoints") or []
    matvecs = [((c.get("details") or {}).get("lanczos") or {}).get("matvecs") for c in records]
    tasks = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in r["tasks"])
    lines = [
        f"{args.model} {r['parameters']:,} parameters, {r['checkpoint_mib']:.0f} MiB of checkpoints",
        f"upload (obstacle submit) {r['upload_s']:.1f} s; analysis {r['analysis_s']:.1f} s",
        f"tasks: {tasks}",
        f"run-level time limit: {r['limit']}",
        f"worker pool process peak RSS {r['peak_mib']:.0f} MiB",
        f"Lanczos matvecs per checkpoint {matvecs}",
        (f"verdict {report['verdict']['primary']}" if report else f"analysis failed: {r['error']}"),
    ]
    print("\n".join(lines), flush=True)
    if args.write:
        command = "python bench/service_scale.py " + shlex.join(sys.argv[1:])
        body = f"{datetime.date.today()}: `{command}`\n\n{machine}\n\n" + "\n".join(
            f"- {line}" for line in lines
        )
        title = f"{args.model} × {args.size}, preset {args.preset}"
        header = "bench/service_scale.py — the service on a large model, as a user runs it"
        write_section(RESULTS, title, body, header)


if __name__ == "__main__":
    main()

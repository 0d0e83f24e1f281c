"""SIGKILL a real worker's pool process 20 times during analyses and count what comes out.

    python bench/worker_kills.py               # 20 kills
    python bench/worker_kills.py --kills 5     # a smoke run

An embedded Redis and a SQLite database in a temporary directory, the API in this process
(``create_app`` under a TestClient), one ``obstacle worker --pool prefork --concurrency 1``
process, and the tiny three-checkpoint run of the service tests. Analyses (quick preset) are
started so that one always runs; each kill hits the pool process while it analyses a checkpoint,
and the next kill waits until that checkpoint has finished. Printed: analyses submitted, completed
(succeeded with every checkpoint done and reported once), lost, duplicated, the time from each kill
to its checkpoint finished (the task rejected back to the queue, a new pool process forked and
warmed up, the checkpoint analysed again), and the machine. Not a test:
``tests/workers/test_worker_kills.py`` does 3 kills in CI.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from _machine import describe_machine

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fastapi.testclient import TestClient  # noqa: E402

from conftest_services import (  # noqa: E402
    OBSTACLE_CLI,
    build_run,
    make_settings,
    make_tenant,
    service_env,
    upload_run,
)
from obstacle.platform.db import create_db_engine, migrate, session_factory  # noqa: E402
from obstacle.service.app import create_app  # noqa: E402
from obstacle.service.embedded import EmbeddedRedis  # noqa: E402
from workers.worker_kills import kill_during_analyses  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds for the whole run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="worker-kills-") as tmp:
        root = Path(tmp)
        redis_server = EmbeddedRedis(root / "redis")
        database = f"sqlite:///{root / 'obstacle.db'}"
        engine = create_db_engine(database)
        migrate(engine)
        worker: subprocess.Popen[bytes] | None = None
        try:
            settings = make_settings(
                database, redis_server.start(), root / "data", checkpoints_per_task=3
            )
            run_dir = build_run(root / "run")
            tenant = make_tenant(database)
            env = service_env(settings, OBSTACLE_MAX_TASK_ATTEMPTS=str(args.kills + 2))
            log_path = root / "worker.log"
            with log_path.open("wb") as log:
                worker = subprocess.Popen(
                    [*OBSTACLE_CLI, "worker", "--pool", "prefork", "--concurrency", "1"],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            while "ready." not in log_path.read_text(errors="replace"):
                if worker.poll() is not None:
                    raise SystemExit(f"the worker exited:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.2)
            started = time.monotonic()
            with TestClient(create_app(settings)) as client:
                run_id = upload_run(client, run_dir, tenant.headers)

                def submit() -> uuid.UUID:
                    answer = client.post(
                        f"/v1/runs/{run_id}/analyses",
                        json={"preset": "quick"},
                        headers=tenant.headers,
                    )
                    answer.raise_for_status()
                    return uuid.UUID(answer.json()["id"])

                outcome = kill_during_analyses(
                    session_factory(engine),
                    worker.pid,
                    submit,
                    [5, 10, 15],
                    kills=args.kills,
                    timeout_s=args.timeout,
                    log=lambda line: print(line, flush=True),
                )
            elapsed = time.monotonic() - started
        finally:
            if worker is not None and worker.poll() is None:
                worker.terminate()
                try:
                    worker.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    worker.kill()
            engine.dispose()
            redis_server.stop()
    recoveries = outcome.recoveries_s
    print(f"kills: {len(recoveries)} of {args.kills} (SIGKILL of the prefork pool process)")
    print(f"analyses submitted: {outcome.submitted}")
    print(f"completed: {outcome.completed}")
    print(f"lost: {outcome.lost}")
    print(f"duplicated: {outcome.duplicated}")
    if recoveries:
        print(
            "time per recovery (kill -> the killed checkpoint finished): "
            f"median {statistics.median(recoveries):.1f} s, min {min(recoveries):.1f} s, "
            f"max {max(recoveries):.1f} s"
        )
    for failure in outcome.failures:
        print(f"failure: {failure}")
    print(f"wall time: {elapsed:.0f} s")
    print(describe_machine(f"load average {os.getloadavg()[0]:.1f}"))


if __name__ == "__main__":
    main()

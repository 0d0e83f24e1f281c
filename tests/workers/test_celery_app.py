"""The Celery configuration the guarantees rest on, read from a worker's own import."""

from __future__ import annotations

import json
import subprocess
import sys

CODE = """
import json, os
os.environ.update(OBSTACLE_BROKER_URL="redis://127.0.0.1:1/0", OBSTACLE_VISIBILITY_TIMEOUT_S="120",
                  OBSTACLE_CHECKPOINT_TIME_LIMIT_S="25", OBSTACLE_CHECKPOINTS_PER_TASK="4",
                  OBSTACLE_FINALIZE_TIME_LIMIT_S="110")
from obstacle.workers.app import app
import obstacle.workers.tasks as tasks
conf = app.conf
out = {"transport": conf.broker_transport_options, "prefetch": conf.worker_prefetch_multiplier,
       "ignore_result": conf.task_ignore_result, "serializer": conf.task_serializer,
       "accept": list(conf.accept_content), "tasks": {}}
for name in ("obstacle.analyze_checkpoints", "obstacle.finalize_analysis"):
    task = app.tasks[name]
    out["tasks"][name] = {"acks_late": task.acks_late, "reject": task.reject_on_worker_lost,
                          "time_limit": task.time_limit, "soft": task.soft_time_limit}
out["names"] = sorted(n for n in app.tasks if n.startswith("obstacle."))
print(json.dumps(out))
"""


def test_tasks_are_acknowledged_late_bounded_and_come_back_fast() -> None:
    result = subprocess.run(
        [sys.executable, "-c", CODE], capture_output=True, text=True, timeout=60, check=True
    )
    conf = json.loads(result.stdout.strip().splitlines()[-1])
    assert conf["transport"]["visibility_timeout"] == 120
    assert conf["transport"]["unacked_restore_throttle"] == 1
    assert conf["transport"]["unacked_restore_interval"] <= 10
    assert conf["prefetch"] == 1 and conf["ignore_result"] is True
    assert conf["serializer"] == "json" and conf["accept"] == ["json"]
    # A group of up to 4 checkpoints gets 4 × 25 s.
    group = conf["tasks"]["obstacle.analyze_checkpoints"]
    assert group == {"acks_late": True, "reject": True, "time_limit": 100, "soft": 90}
    finalize = conf["tasks"]["obstacle.finalize_analysis"]
    assert finalize == {"acks_late": True, "reject": True, "time_limit": 110, "soft": 99}
    assert conf["names"] == ["obstacle.analyze_checkpoints", "obstacle.finalize_analysis"]

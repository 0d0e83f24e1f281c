"""Huge pages for torch's large CPU tensors: on in the processes obstacle owns (the `obstacle`
command, the worker's Celery app), off in a training process that only imports the SDK, and fewer
page faults by the hundreds where the kernel allows them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from obstacle._hugepages import HUGE_PAGES_ENV

VECTOR = 25_000_000  # float32: 100 MB, a vector of a 25M-parameter model
PAGES = VECTOR * 4 // 4096


def _python(code: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k != HUGE_PAGES_ENV}
    done = subprocess.run(
        [sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_command_and_the_worker_turn_it_on_and_the_sdk_does_not() -> None:
    show = f"import os; print(os.environ.get({HUGE_PAGES_ENV!r}))"
    command = (
        "import sys\nfrom obstacle import cli\nsys.argv = ['obstacle', '--help']\n"
        f"try:\n    cli.main()\nexcept SystemExit:\n    pass\n{show}"
    )
    assert _python(command).splitlines()[-1] == "1"
    broker = {"OBSTACLE_BROKER_URL": "redis://127.0.0.1:6379/0"}  # read, not connected to
    assert _python(f"import obstacle.workers.app\n{show}", **broker) == "1"
    assert _python(f"import obstacle, obstacle.client\n{show}") == "None"
    # What the user set is kept.
    assert _python(command, **{HUGE_PAGES_ENV: "0"}).splitlines()[-1] == "0"


def _faults_filling_a_vector(**env: str) -> int:
    code = (
        "import resource, torch\nfrom obstacle._hugepages import use_huge_pages\n"
        "use_huge_pages()\n"
        f"x = torch.empty({VECTOR})\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "x.fill_(1.0)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)"
    )
    return int(_python(code, **env))


def test_a_fresh_vector_faults_per_huge_page_where_the_kernel_allows_it() -> None:
    mode = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    small = _faults_filling_a_vector(**{HUGE_PAGES_ENV: "0"})
    assert small >= 0.9 * PAGES  # one per 4 KiB page
    huge = _faults_filling_a_vector()
    if "[never]" in mode:  # the kernel refuses them: nothing changes, and nothing breaks
        assert huge >= 0.9 * PAGES
    else:
        assert huge < PAGES / 10, (huge, small, mode)

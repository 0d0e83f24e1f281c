"""A local `obstacle serve` for the service benchmarks: started, token made, healthy, then handed over."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx


def cli(*args: str) -> list[str]:
    """The `obstacle` command line run by this interpreter."""
    return [sys.executable, "-c", "from obstacle.cli import main; main()", *args]


def create_token(env: dict[str, str]) -> str:
    """A new token of project "bench" in the service's database that ``env`` names."""
    return subprocess.run(
        cli("token", "create", "--project", "bench"),
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def serve(
    data_dir: Path,
    *,
    on_start: Callable[[int], None] | None = None,
    wait_for_worker: bool = False,
) -> tuple[subprocess.Popen[bytes], str, str]:
    """(process, url, token) of `obstacle serve` on a free port with its data in ``data_dir``.

    ``on_start`` gets the server's pid as soon as it runs (e.g. to pin it to a core);
    ``wait_for_worker`` also waits for the embedded worker's "ready." (it imports torch as it
    starts), so nothing timed afterwards shares the machine with that start-up.
    """
    env = {**os.environ, "OBSTACLE_DATA_DIR": str(data_dir)}
    token = create_token(env)
    port = free_port()
    log_path = data_dir / "serve.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        cli("serve", "--port", str(port)), env=env, stdout=log, stderr=subprocess.STDOUT
    )
    if on_start is not None:
        on_start(process.pid)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    else:
        process.terminate()
        raise SystemExit(f"the service did not start; see {log_path}")
    while wait_for_worker and time.monotonic() < deadline and "ready." not in log_path.read_text():
        time.sleep(0.3)
    return process, url, token

"""The README's walkthrough runs as written: its marked code blocks, in order, against a real service.

A block preceded by ``<!-- walkthrough -->`` is run; Python blocks with ``python``, bash blocks
by bash with ``set -euo pipefail``, all in one script in one empty directory. The block marked
``<!-- walkthrough: service -->`` is what the reader runs in a second terminal: it is started in
the background (on a free port, through OBSTACLE_PORT) and waited for. The only change to the text
is the service's address: the README's ``127.0.0.1:8000`` becomes the free port's.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(
    r"<!-- walkthrough(?:: (?P<role>\w+))? -->\n```(?P<lang>\w+)\n(?P<code>.*?)```", re.S
)
README_ADDRESS = "127.0.0.1:8000"


@dataclass(frozen=True)
class Block:
    role: str  # "run" or "service"
    lang: str
    code: str


def walkthrough() -> list[Block]:
    text = README.read_text(encoding="utf-8")
    return [
        Block(m.group("role") or "run", m.group("lang"), m.group("code"))
        for m in BLOCK.finditer(text)
    ]


def test_the_walkthrough_is_marked() -> None:
    blocks = walkthrough()
    assert [b.role for b in blocks].count("service") == 1
    assert {b.lang for b in blocks} == {"python", "bash"}
    code = "\n".join(b.code for b in blocks)
    for step in ("Probe.capture", "save_checkpoint", "obstacle serve", "token create", "submit",
                 "obstacle gate"):  # fmt: skip
        assert step in code, step
    marked = README.read_text(encoding="utf-8").count("<!-- walkthrough")
    assert marked == len(blocks), "a marker is not followed by a fenced code block"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.slow
def test_the_walkthrough_runs_as_written(tmp_path: Path) -> None:
    blocks = walkthrough()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OBSTACLE_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["OBSTACLE_DEVICE"] = "cpu"
    port = _free_port()
    address = f"127.0.0.1:{port}"

    script = ["set -euo pipefail"]
    service = None
    for index, block in enumerate(blocks):
        if block.role == "service":
            service = block
        elif block.lang == "python":
            (tmp_path / f"block_{index}.py").write_text(block.code, encoding="utf-8")
            script.append(f"python block_{index}.py")
        else:
            script.append(block.code.replace(README_ADDRESS, address))
    assert service is not None
    (tmp_path / "walkthrough.sh").write_text("\n".join(script) + "\n", encoding="utf-8")

    log = (tmp_path / "serve.log").open("wb")
    server = subprocess.Popen(
        ["bash", "-c", service.code],
        cwd=tmp_path,
        env={**env, "OBSTACLE_PORT": str(port)},
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: stopped as the reader's Ctrl-C would
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"http://{address}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            serve_log = (tmp_path / "serve.log").read_text(errors="replace")
            assert server.poll() is None and time.monotonic() < deadline, serve_log
            time.sleep(0.3)
        done = subprocess.run(
            ["bash", "walkthrough.sh"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=420,
        )
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGINT)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
        log.close()
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    serve_log = (tmp_path / "serve.log").read_text(errors="replace")
    assert f"data directory {tmp_path.resolve() / 'obstacle-data'} (--data-dir)" in serve_log
    assert re.search(r"^analysis [0-9a-f-]{36} of run [0-9a-f-]{36}: succeeded$", output, re.M)
    assert "PASSED" in output and f"http://{address}/v1/analyses/" in output
    cases = [c.get("name") for c in ET.parse(tmp_path / "gate.xml").getroot().iter("testcase")]
    assert cases and all(str(name).startswith("digits: ") for name in cases)

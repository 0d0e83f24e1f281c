"""Uploads stream from disk to the store: flat memory on both sides, retries start the file over.

Against the real ``obstacle serve`` of ``conftest.py`` over real HTTP. Memory is the peak RSS
(``VmHWM``, reset through ``/proc/PID/clear_refs``) of the client, run in a subprocess of its own,
and of the API's process, while a checkpoint of ``SIZE_MIB`` is uploaded.
"""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import torch
from torch import nn
from tqdm import tqdm

import obstacle
from obstacle.artifacts.layout import checkpoint_filename
from obstacle.battery.checkpoint import CHECKPOINT_FORMAT
from obstacle.client import Client, FileBody
from support import reset_peak_rss, status_bytes

from .conftest import Service

pytestmark = pytest.mark.slow

SIZE_MIB = 160
COLUMNS = 8192
STEP = 10
# "Flat" memory: each side grows by well under the file it moved (about 4 MB and 20 MB measured).
MAX_GROWTH = SIZE_MIB * (1 << 20) // 4


def write_checkpoint(path: Path, rows: int, *, step: int) -> None:
    """A safetensors checkpoint of ``0.weight`` [rows, COLUMNS] float32, written 4 MiB at a time."""
    nbytes = rows * COLUMNS * 4
    header = {
        "__metadata__": {"format": CHECKPOINT_FORMAT, "step": str(step), "lr": "0.01"},
        "0.weight": {"dtype": "F32", "shape": [rows, COLUMNS], "data_offsets": [0, nbytes]},
    }
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    pattern = torch.randn(1 << 20, generator=torch.Generator().manual_seed(0)).numpy().tobytes()
    with path.open("wb") as handle:
        handle.write(struct.pack("<Q", len(raw)) + raw)
        for start in range(0, nbytes, len(pattern)):
            handle.write(pattern[: nbytes - start])


@pytest.fixture(scope="module")
def large_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory: a linear model's probe and one checkpoint of SIZE_MIB.

    The probe holds the weight too (as large: the service refuses a program whose weights are a
    stride-0 view of one element, so the cheap trick of an expanded scalar is gone); the bundle
    is uploaded first, the checkpoint second, and both count in the peaks.
    """
    rows = SIZE_MIB * (1 << 20) // (COLUMNS * 4)
    model = nn.Sequential(nn.Linear(COLUMNS, rows, bias=False))
    with torch.no_grad():
        model[0].weight.zero_()
    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(2, COLUMNS, generator=g), torch.randint(0, rows, (2,), generator=g))
    run_dir = tmp_path_factory.mktemp("large") / "large-run"
    obstacle.Probe.capture(model, nn.CrossEntropyLoss(), [batch]).save(run_dir)
    del model
    (run_dir / "checkpoints").mkdir()
    write_checkpoint(run_dir / "checkpoints" / checkpoint_filename(STEP), rows, step=STEP)
    return run_dir


# The client: warmed up (imports, connection) before its peak RSS is reset, then one upload.
CLIENT = """
import json, sys
from pathlib import Path
import obstacle.artifacts.bundle, obstacle.client._upload
from obstacle.client import Client, upload_run_dir

def status(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

url, token, run_dir = sys.argv[1:]
with Client(url, token, timeout=120) as client:
    client.health()
    Path("/proc/self/clear_refs").write_text("5")
    before = status("VmRSS")
    result = upload_run_dir(client, run_dir, progress=True)
    growth = status("VmHWM") - before
print(json.dumps({"growth": growth, "run": result.run.id, "uploaded": result.uploaded}))
"""


def test_a_large_checkpoint_streams_in_flat_memory(service: Service, large_run: Path) -> None:
    assert service.pid is not None
    checkpoint = large_run / "checkpoints" / checkpoint_filename(STEP)
    server_before = reset_peak_rss(service.pid)
    done = subprocess.run(
        [sys.executable, "-c", CLIENT, service.url, service.token, str(large_run)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    server_growth = status_bytes("VmHWM", service.pid) - server_before
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["uploaded"] == [STEP]
    size = checkpoint.stat().st_size
    assert report["growth"] < MAX_GROWTH, (
        f"the client grew by {report['growth'] / 1e6:.0f} MB uploading {size / 1e6:.0f} MB"
    )
    assert server_growth < MAX_GROWTH, (
        f"the API process grew by {server_growth / 1e6:.0f} MB receiving {size / 1e6:.0f} MB"
    )
    # The bar counts bytes: its total is the probe bundle and the checkpoint, in MB.
    assert "B/s" in done.stderr
    with Client(service.url, service.token) as client:
        (stored,) = client.list_checkpoints(report["run"])
        probe = client.get_run(report["run"]).probe
    assert probe is not None
    assert f"/{tqdm.format_sizeof(size + probe.size_bytes)}" in done.stderr
    assert stored.sha256 == FileBody.from_path(checkpoint).sha256
    assert stored.size_bytes == size


class _CutOnce(httpx.BaseTransport):
    """Real HTTP, except that the first PUT loses its connection after one chunk of its body."""

    def __init__(self) -> None:
        self._inner = httpx.HTTPTransport()
        self.puts = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "PUT":
            self.puts += 1
            if self.puts == 1:
                next(iter(request.stream))  # type: ignore[call-overload]
                raise httpx.WriteError("connection reset while sending the body", request=request)
        return self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()


@pytest.mark.parametrize("hashed", ["before", "while sent"])
def test_a_retried_upload_sends_the_file_again_from_its_start(
    service: Service, tmp_path: Path, hashed: str
) -> None:
    log = tmp_path / "train_log.jsonl"
    with log.open("w") as handle:  # several chunks of FileBody
        for step in range(120_000):
            handle.write(json.dumps({"step": step, "lr": 0.01, "loss": 1.0 / (step + 1)}) + "\n")
    sent: list[int] = []
    make = FileBody.from_path if hashed == "before" else FileBody.streamed
    body = make(log, on_sent=sent.append)
    transport = _CutOnce()
    with Client(service.url, service.token, transport=transport, backoff=0.01) as client:
        run = client.create_run("retried")
        client.put_train_log(run.id, body)
        info = client.get_run(run.id)
    assert transport.puts == 2
    assert sent.count(0) == 2 and sent[-1] == body.size, "the second try started at byte 0"
    with log.open("rb") as handle:
        assert info.train_log_sha256 == hashlib.file_digest(handle, "sha256").hexdigest()


def test_a_path_that_is_a_str_is_refused(service: Service) -> None:
    with Client(service.url, service.token) as client:
        run = client.create_run("str-path")
        with pytest.raises(obstacle.ParameterError, match=r"Wrap a file name in pathlib\.Path"):
            client.put_train_log(run.id, "train_log.jsonl")  # type: ignore[arg-type]

"""How much memory and disk does the service spend on hostile uploads? (issue 13, part B)

Starts a local ``obstacle serve`` (its own data directory and token), uploads a tiny probe, then
sends three attacks measured on main (2.7 GiB RSS for the first two, 1 GiB on disk for the third):

1. a safetensors checkpoint whose header is 100 MiB of JSON;
2. a safetensors checkpoint whose ``__metadata__`` holds 60 MiB of JSON;
3. a probe bundle whose data member is 1 GiB of zeros stored deflated (about 1 MiB on the wire);
4. for scale, a checkpoint whose header is just under the header limit (16 MiB), all metadata:
   the most JSON the service parses from one upload before refusing it.

Each body is streamed from a file (the client holds no copy). While each request runs, a sampler
reads the API process's RSS and the size of the service's data directory every 10 ms, and times
``GET /healthz``. Prints, per attack: the answer, the server's RSS growth over its level before the
attack (peak - before), the data directory's peak growth beyond the spooled body, and the
slowest ``/healthz``. Acceptance: RSS growth < 100 MB on each, nothing expanded to disk, a 4xx.

    python bench/malformed_uploads.py
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import struct
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import torch
from _machine import describe_machine
from _service import serve
from torch import nn

import obstacle
from obstacle.artifacts.bundle import pack_probe
from obstacle.artifacts.layout import PROBE_DATA, PROBE_DIR, PROBE_MANIFEST, PROBE_PROGRAM
from obstacle.artifacts.safetensors_header import MAX_HEADER_BYTES

MiB = 1 << 20
CHUNK = 4 * MiB


def _stream(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            yield chunk


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    for chunk in _stream(path):
        digest.update(chunk)
    return digest.hexdigest()


def _huge_header_checkpoint(path: Path, header_bytes: int) -> None:
    """A checkpoint whose header is ``header_bytes`` of JSON (a long padding key)."""
    tensor = {"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
    start = json.dumps({"__metadata__": {"lr": "0.1"}, **tensor})[:-1] + ', "pad": "'
    end = '"}'
    with path.open("wb") as handle:
        handle.write(struct.pack("<Q", header_bytes))
        handle.write(start.encode())
        remaining = header_bytes - len(start) - len(end)
        while remaining > 0:
            n = min(remaining, CHUNK)
            handle.write(b"a" * n)
            remaining -= n
        handle.write(end.encode())
        handle.write(b"\0" * 4)


def _big_metadata_checkpoint(path: Path, metadata_bytes: int) -> None:
    """A checkpoint whose ``__metadata__`` holds ``metadata_bytes`` of JSON text in one value."""
    inner = json.dumps({"class": "SGD", "hyperparameters": {"x": "b" * metadata_bytes}})
    header = json.dumps(
        {
            "__metadata__": {"lr": "0.1", "optimizer": inner},
            "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
        }
    ).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)


def _deflated_bomb(path: Path, probe_dir: Path, expanded: int) -> None:
    """A bundle with the real manifest and program and a data member of zeros, deflated."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as bundle:
        for name in (PROBE_MANIFEST, PROBE_PROGRAM):  # stored, as pack_probe writes them
            bundle.write(probe_dir / name, name, compress_type=zipfile.ZIP_STORED)
        with bundle.open(PROBE_DATA, "w", force_zip64=True) as member:
            zeros = b"\0" * CHUNK
            for _ in range(expanded // CHUNK):
                member.write(zeros)


def _tree_bytes(root: Path) -> int:
    total = 0
    for directory, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):  # a spooled file may go away meanwhile
                total += os.lstat(os.path.join(directory, name)).st_size
    return total


class Sampler:
    """Peak RSS of one process and peak size of a directory, and /healthz latency, meanwhile."""

    def __init__(self, pid: int, directory: Path, url: str) -> None:
        self.process = psutil.Process(pid)
        self.directory = directory
        self.url = url
        self.peak_rss = 0
        self.peak_disk = 0
        self.slowest_health = 0.0
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._memory, daemon=True),
            threading.Thread(target=self._health, daemon=True),
        ]

    def _memory(self) -> None:
        while not self._stop.is_set():
            self.peak_rss = max(self.peak_rss, self.process.memory_info().rss)
            self.peak_disk = max(self.peak_disk, _tree_bytes(self.directory))
            time.sleep(0.01)

    def _health(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                start = time.perf_counter()
                client.get(f"{self.url}/healthz")
                self.slowest_health = max(self.slowest_health, time.perf_counter() - start)
                time.sleep(0.05)

    def __enter__(self) -> Sampler:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="obstacle-malformed-") as tmp:
        root = Path(tmp)
        run_dir = root / "run"
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
        batches = [(torch.randn(16, 4), torch.randint(0, 2, (16,))) for _ in range(2)]
        obstacle.Probe.capture(model, nn.CrossEntropyLoss(), batches).save(run_dir)
        files = root / "files"
        files.mkdir()
        attacks = [
            ("safetensors header of 100 MiB", "checkpoint", files / "header.safetensors"),
            ("safetensors metadata of 60 MiB", "checkpoint", files / "metadata.safetensors"),
            ("bundle member deflated 1 GiB -> ~1 MiB", "probe", files / "bomb.zip"),
            ("header of 15.9 MiB, just under its limit", "checkpoint", files / "under.safetensors"),
        ]
        _huge_header_checkpoint(attacks[0][2], 100 * MiB)
        _big_metadata_checkpoint(attacks[1][2], 60 * MiB)
        _deflated_bomb(attacks[2][2], run_dir / PROBE_DIR, 1024 * MiB)
        _big_metadata_checkpoint(attacks[3][2], MAX_HEADER_BYTES - 4096)

        data_dir = root / "data"
        data_dir.mkdir()
        process, url, token = serve(data_dir)
        try:
            auth = {"Authorization": f"Bearer {token}"}
            with httpx.Client(base_url=url, headers=auth, timeout=300) as client:
                probed = client.post("/v1/runs", json={"name": "probed"}).json()["id"]
                bundle = pack_probe(run_dir / PROBE_DIR)
                answer = client.put(
                    f"/v1/runs/{probed}/probe",
                    content=io.BytesIO(bundle).read(),
                    headers={"X-Content-SHA256": hashlib.sha256(bundle).hexdigest()},
                )
                assert answer.status_code == 201, answer.text
                print(describe_machine())
                print(f"{'attack':42} {'body':>10} {'answer':>6} {'RSS +MB':>8} "
                      f"{'disk +MB':>9} {'healthz max ms':>15}")  # fmt: skip
                for name, route, path in attacks:
                    if route == "checkpoint":
                        target = f"/v1/runs/{probed}/checkpoints/7"
                    else:
                        fresh = client.post("/v1/runs", json={"name": "bomb"}).json()["id"]
                        target = f"/v1/runs/{fresh}/probe"
                    size = path.stat().st_size
                    time.sleep(0.5)
                    before_rss = psutil.Process(process.pid).memory_info().rss
                    before_disk = _tree_bytes(data_dir)
                    with Sampler(process.pid, data_dir, url) as sampler:
                        answer = client.put(
                            target,
                            content=_stream(path),
                            headers={
                                "X-Content-SHA256": _sha256(path),
                                "Content-Length": str(size),
                            },
                        )
                    grew_rss = max(sampler.peak_rss - before_rss, 0) / 1e6
                    # the spooled body itself is on disk while it is checked: count beyond it
                    grew_disk = max(sampler.peak_disk - before_disk - size, 0) / 1e6
                    detail = answer.json().get("detail", "")[:90]
                    print(f"{name:42} {size / MiB:>8.1f}Mi {answer.status_code:>6} "
                          f"{grew_rss:>8.1f} {grew_disk:>9.1f} "
                          f"{sampler.slowest_health * 1000:>15.1f}")  # fmt: skip
                    assert 400 <= answer.status_code < 500, answer.text
                    print(f"    {detail}")
        finally:
            process.terminate()
            process.wait(timeout=30)


if __name__ == "__main__":
    main()

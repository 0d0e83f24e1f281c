"""How fast, and in how much memory, does a large checkpoint upload? (issue 11: streaming I/O)

Writes a synthetic safetensors checkpoint of ``--size-mib`` (default 1024: one float32 weight,
which the probe's program holds too, as a real model's does), starts a local ``obstacle serve``
with its own data directory and token, and uploads the file through the SDK as
``Client.put_checkpoint(path)`` does: hashed while it is sent, the digest trailing the body. The service stores it durably (fsync
before its 201). Prints the client's and the API process's RSS growth, the upload's time split
into sending the body and the service's work after the last byte, and, measured in the same run
with the same file: local copies (``shutil.copyfile``, in the page cache, and the same copy
flushed to disk with fsync, as the service stores an upload) and SHA-256 on one core (which the
service must spend on every byte it receives). Every timed part starts after ``os.sync()``, so
none pays for the writeback of an earlier one, and with the output of the one before removed (the
copies, and the stored checkpoint from the service's data directory): on this VM, writing into
page-cache memory not recycled from a freed file ran at 0.36–0.47 GB/s against 4–4.7 GB/s
(measured), which would price the machine's first touch of its memory, not the upload.
Acceptance (issue 11): RSS growth < 200 MB on each side, upload >= 80% of the local copy.

    python bench/upload_stream.py [--size-mib 1024] [--repeat 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import struct
import tempfile
import time
from pathlib import Path

import torch
from _machine import describe_machine
from _service import serve
from torch import nn

import obstacle
from obstacle.battery.checkpoint import CHECKPOINT_FORMAT
from obstacle.client import Client, FileBody

COLUMNS = 8192  # the weight is [rows, COLUMNS] float32
MB = 1e6
MiB = 1 << 20


def _probe(rows: int) -> obstacle.Probe:
    """A linear classifier with a [rows, COLUMNS] weight (zeros).

    The probe holds the weight as large as the checkpoint's: the service refuses a program whose
    weights are a stride-0 view of one element, so an expanded scalar no longer passes. Only the
    checkpoint's upload is timed.
    """
    model = nn.Sequential(nn.Linear(COLUMNS, rows, bias=False))
    with torch.no_grad():
        model[0].weight.zero_()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, COLUMNS, generator=g)
    y = torch.randint(0, rows, (2,), generator=g)
    return obstacle.Probe.capture(model, nn.CrossEntropyLoss(), [(x, y)])


def write_checkpoint(path: Path, rows: int, *, step: int, lr: float) -> int:
    """A safetensors file holding ``0.weight`` [rows, COLUMNS] float32, written 4 MiB at a time."""
    nbytes = rows * COLUMNS * 4
    header = {
        "__metadata__": {"format": CHECKPOINT_FORMAT, "step": str(step), "lr": repr(lr)},
        "0.weight": {"dtype": "F32", "shape": [rows, COLUMNS], "data_offsets": [0, nbytes]},
    }
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    pattern = torch.randn(MiB, generator=torch.Generator().manual_seed(1)).numpy().tobytes()
    with path.open("wb") as handle:
        handle.write(struct.pack("<Q", len(raw)) + raw)
        left = nbytes
        while left:
            left -= handle.write(pattern[: min(len(pattern), left)])
    return path.stat().st_size


def _status_kib(pid: int | str, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def reset_peak(pid: int | str) -> int:
    """Reset the process's peak RSS to its current RSS (Linux clear_refs); the RSS in bytes."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return _status_kib(pid, "VmRSS") * 1024


def peak(pid: int | str) -> int:
    """The process's peak RSS (VmHWM) in bytes."""
    return _status_kib(pid, "VmHWM") * 1024


def _flushed(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_rates(source: Path, scratch: Path, size: int) -> dict[str, float]:
    """MB/s of ``shutil.copyfile`` (page cache) and of the same copy flushed to disk (fsync)."""
    target = scratch / "copy.safetensors"
    os.sync()
    start = time.perf_counter()
    shutil.copyfile(source, target)
    copied = time.perf_counter()
    target.unlink()
    os.sync()
    again = time.perf_counter()
    shutil.copyfile(source, target)
    _flushed(target)
    _flushed(scratch)
    durable = time.perf_counter()
    target.unlink()
    return {
        "copyfile": size / MB / (copied - start),
        "copyfile_fsync": size / MB / (durable - again),
    }


def sha256_rate(source: Path, size: int) -> float:
    """MB/s of hashlib's SHA-256 over the file (in the page cache), on one core."""
    start = time.perf_counter()
    with source.open("rb") as handle:
        hashlib.file_digest(handle, "sha256")
    return size / MB / (time.perf_counter() - start)


def upload(client: Client, run_id: str, path: Path, step: int, server_pid: int) -> dict[str, float]:
    """One ``put_checkpoint`` of ``path`` (hashed while sent) timed in parts, with RSS growth."""
    os.sync()
    client_base, server_base = reset_peak("self"), reset_peak(server_pid)
    start = time.perf_counter()
    last_byte = [start]

    def sent(n: int) -> None:
        last_byte[0] = time.perf_counter()

    client.put_checkpoint(run_id, step, FileBody.streamed(path, on_sent=sent))
    done = time.perf_counter()
    return {
        "client_rss": (peak("self") - client_base) / MB,
        "server_rss": (peak(server_pid) - server_base) / MB,
        "total_s": done - start,
        "send_s": last_byte[0] - start,
        "after_s": done - last_byte[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="checkpoint size in MiB")
    parser.add_argument("--repeat", type=int, default=3, help="uploads (each to a new step)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = max(1, args.size_mib * MiB // (COLUMNS * 4))
    print(describe_machine(f"load average {os.getloadavg()[0]:.2f} at the start"))
    with tempfile.TemporaryDirectory(prefix="obstacle-bench-") as tmp:
        scratch = Path(tmp)
        print(f"disk: {shutil.disk_usage(scratch).free / 1e9:.0f} GB free under {scratch}")
        probe = _probe(rows)
        process, url, token = serve(scratch, wait_for_worker=True)
        try:
            with Client(url, token, timeout=600) as client:
                run = client.create_run("bench-upload", probe=probe)
                results = []
                for step in range(1, args.repeat + 1):
                    source = scratch / f"step_{step}.safetensors"
                    size = write_checkpoint(source, rows, step=step, lr=0.01)
                    result = {"size": size, **copy_rates(source, scratch, size)}
                    result["sha256"] = sha256_rate(source, size)
                    result |= upload(client, run.id, source, step, process.pid)
                    results.append(result)
                    source.unlink()
                    for stored in scratch.rglob("checkpoints/*/*.safetensors"):
                        stored.unlink()  # the service's copy (see the docstring)
        finally:
            process.terminate()
            process.wait(timeout=30)
    print(f"checkpoint: {results[0]['size'] / MB:.0f} MB (float32 [{rows}, {COLUMNS}])")
    for r in results:
        r["rate"] = r["size"] / MB / r["total_s"]
        print(
            f"upload {r['rate']:6.0f} MB/s ({r['total_s']:.2f} s: body {r['send_s']:.2f} s, "
            f"service after last byte {r['after_s']:.2f} s); RSS growth client "
            f"{r['client_rss']:.0f} MB, server {r['server_rss']:.0f} MB"
        )
        print(
            f"  same run: copyfile {r['copyfile']:6.0f} MB/s (upload/copy "
            f"{r['rate'] / r['copyfile']:.2f}); copyfile + fsync {r['copyfile_fsync']:6.0f} MB/s "
            f"(upload/copy {r['rate'] / r['copyfile_fsync']:.2f}); SHA-256 on one core "
            f"{r['sha256']:6.0f} MB/s"
        )
    rss = max(max(r["client_rss"], r["server_rss"]) for r in results)

    def median(key: str) -> float:
        return statistics.median(r["rate"] / r[key] for r in results)

    print(
        f"acceptance: RSS growth < 200 MB on each side: {'yes' if rss < 200 else 'NO'} (at most "
        f"{rss:.0f} MB); upload >= 0.80 x the local copy (median of {len(results)}): against "
        f"copyfile + fsync {median('copyfile_fsync'):.2f} "
        f"({'yes' if median('copyfile_fsync') >= 0.8 else 'NO'}), against copyfile in the page "
        f"cache {median('copyfile'):.2f} ({'yes' if median('copyfile') >= 0.8 else 'NO'}); load "
        f"average {os.getloadavg()[0]:.2f} at the end"
    )


if __name__ == "__main__":
    main()

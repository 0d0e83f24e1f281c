"""How fast, and in how much memory, does a large checkpoint upload? (issue 11: streaming I/O)

Writes a synthetic safetensors checkpoint of ``--size-mib`` (default 1024: one float32 weight of
a probe whose exported program is tiny, so only the checkpoint is large), starts a local
``obstacle serve`` with its own data directory and token, and uploads the file through the SDK
(``Client.put_checkpoint`` with its path). Prints the client's and the API process's RSS growth,
the upload's throughput split into its parts (the client's SHA-256 pass, sending the body, the
service's work after the last byte), and the throughput of local copies of the same file measured
in the same run: ``shutil.copyfile`` (in-kernel) and a chunked read/write through user space.
Acceptance (issue 11): RSS growth < 200 MB on each side, upload >= 80% of the local copy.

    python bench/upload_stream.py [--size-mib 1024] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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


def copy_rates(source: Path, scratch: Path, size: int) -> tuple[float, float]:
    """MB/s of ``shutil.copyfile`` and of a 4 MiB read/write loop, the copy removed after each."""
    target = scratch / "copy.safetensors"
    start = time.perf_counter()
    shutil.copyfile(source, target)
    kernel = size / MB / (time.perf_counter() - start)
    target.unlink()
    buffer = bytearray(4 * MiB)
    view = memoryview(buffer)
    start = time.perf_counter()
    with source.open("rb") as src, target.open("wb") as dst:
        while read := src.readinto(buffer):
            dst.write(view[:read])
    user = size / MB / (time.perf_counter() - start)
    target.unlink()
    return kernel, user


def upload(client: Client, run_id: str, path: Path, step: int, server_pid: int) -> dict[str, float]:
    """One ``put_checkpoint`` of ``path`` timed in parts, with both sides' RSS growth."""
    client_base, server_base = reset_peak("self"), reset_peak(server_pid)
    start = time.perf_counter()
    body = FileBody.from_path(path)
    hashed = time.perf_counter()
    last_byte = [hashed]

    def sent(n: int) -> None:
        last_byte[0] = time.perf_counter()

    client.put_checkpoint(run_id, step, FileBody(body.path, body.size, body.sha256, on_sent=sent))
    done = time.perf_counter()
    return {
        "client_rss": (peak("self") - client_base) / MB,
        "server_rss": (peak(server_pid) - server_base) / MB,
        "total_s": done - start,
        "hash_s": hashed - start,
        "send_s": last_byte[0] - hashed,
        "after_s": done - last_byte[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="checkpoint size in MiB")
    parser.add_argument("--repeat", type=int, default=2, help="uploads (each to a new step)")
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
            with Client(url, token, timeout=300) as client:
                run = client.create_run("bench-upload", probe=probe)
                results = []
                for step in range(1, args.repeat + 1):
                    source = scratch / f"step_{step}.safetensors"
                    size = write_checkpoint(source, rows, step=step, lr=0.01)
                    kernel, user = copy_rates(source, scratch, size)
                    result = upload(client, run.id, source, step, process.pid)
                    result |= {"size": size, "copyfile": kernel, "user_copy": user}
                    results.append(result)
                    source.unlink()  # the store keeps its own
        finally:
            process.terminate()
            process.wait(timeout=30)
    print(f"checkpoint: {results[0]['size'] / MB:.0f} MB (float32 [{rows}, {COLUMNS}])")
    for r in results:
        r["rate"] = r["size"] / MB / r["total_s"]
        print(
            f"upload {r['rate']:6.0f} MB/s ({r['total_s']:.2f} s: client SHA-256 {r['hash_s']:.2f} s, "
            f"body {r['send_s']:.2f} s, service after last byte {r['after_s']:.2f} s); "
            f"RSS growth client {r['client_rss']:.0f} MB, server {r['server_rss']:.0f} MB"
        )
        print(
            f"  local copy: shutil.copyfile {r['copyfile']:6.0f} MB/s (ratio upload/copy "
            f"{r['rate'] / r['copyfile']:.2f}); read/write loop {r['user_copy']:6.0f} MB/s (ratio "
            f"{r['rate'] / r['user_copy']:.2f})"
        )
    rss = max(max(r["client_rss"], r["server_rss"]) for r in results)
    ratio = max(r["rate"] / r["copyfile"] for r in results)
    print(
        f"acceptance: RSS growth < 200 MB on each side: {'yes' if rss < 200 else 'NO'} (at most "
        f"{rss:.0f} MB); upload >= 0.80 x shutil.copyfile: {'yes' if ratio >= 0.8 else 'NO'} "
        f"(best {ratio:.2f}); load average {os.getloadavg()[0]:.2f} at the end"
    )


if __name__ == "__main__":
    main()

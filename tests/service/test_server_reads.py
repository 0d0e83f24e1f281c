"""``GuardedHttpToolsProtocol`` reads a connection up to ``READ_BYTES`` at a time: an upload's body
crosses the protocol, the ASGI app and the spool once per read, so larger reads mean fewer trips
(asyncio alone reads 256 KiB). A real uvicorn server on a real socket."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any, ClassVar

import httpx
import pytest
import uvicorn

from obstacle.service.server import READ_BYTES, GuardedHttpToolsProtocol

ASYNCIO_READ = 256 << 10


class _Counting(GuardedHttpToolsProtocol):
    reads: ClassVar[Counter[int]] = Counter()

    def data_received(self, data: bytes) -> None:
        _Counting.reads[len(data)] += 1
        super().data_received(data)


async def _drain(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    received, more = 0, True
    while more:
        message = await receive()
        received += len(message.get("body", b""))
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(received).encode()})


@pytest.fixture
def server() -> Iterator[str]:
    config = uvicorn.Config(_drain, host="127.0.0.1", port=0, http=_Counting, log_level="warning")
    served = uvicorn.Server(config)
    thread = threading.Thread(target=served.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not served.started and time.monotonic() < deadline:
        time.sleep(0.02)
    port = served.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    served.should_exit = True
    thread.join(10)


def test_a_large_body_arrives_in_reads_larger_than_asyncios(server: str) -> None:
    _Counting.reads.clear()
    chunk = os.urandom(READ_BYTES)
    count = 64

    def body() -> Iterator[bytes]:
        for _ in range(count):
            yield chunk

    response = httpx.put(
        server, content=body(), headers={"Content-Length": str(count * READ_BYTES)}, timeout=60
    )
    assert response.status_code == 200 and int(response.text) == count * READ_BYTES
    sizes = _Counting.reads
    assert max(sizes) <= READ_BYTES
    large = sum(n for size, n in sizes.items() if size > ASYNCIO_READ)
    assert large >= count // 2, f"reads by size: {sorted(sizes.items())}"

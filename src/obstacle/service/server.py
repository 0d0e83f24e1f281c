"""The uvicorn configuration of ``obstacle serve``: header size and time limits, keep-alive.

uvicorn bounds neither how long a client may take to send its headers nor (with httptools) how
large they may be, so a slow-headers client holds a connection forever. ``GuardedHttpToolsProtocol``
adds both: a request whose request line and headers are not complete within
OBSTACLE_HEADER_TIMEOUT_S gets 408, and one whose headers pass OBSTACLE_MAX_HEADER_BYTES gets 431;
either way the connection is closed. Body size and body idle time are checked by
``obstacle.service.limits``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from obstacle.service.settings import Settings

__all__ = ["GuardedHttpToolsProtocol", "uvicorn_config"]


def _plain_response(status: int, reason: str, text: str) -> bytes:
    body = text.encode("utf-8")
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode("ascii") + body


# A connection answered before its request was read whole (401, 413, 408, 431) is not closed at
# once: closing a socket with unread bytes sends a reset, which can destroy the answer before the
# client reads it. Its write side is shut (the client reads the answer, then EOF) and what it still
# sends is discarded unread, for at most this long.
LINGER_S = 2.0


# The most one read from a connection takes (asyncio reads 256 KiB). An upload's body goes through
# the protocol, the ASGI app and the spool once per read: larger reads, fewer trips.
READ_BYTES = 1 << 20


class _LingeringTransport:
    """The connection's transport, whose ``close`` lingers while the request is unfinished."""

    def __init__(self, transport: asyncio.Transport, protocol: GuardedHttpToolsProtocol) -> None:
        self._transport = transport
        self._protocol = protocol

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def close(self) -> None:
        if self._protocol.request_unfinished and not self._transport.is_closing():
            self._protocol.linger()
        else:
            self._transport.close()


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline and a size limit on each request's headers,
    and a lingering close for requests answered before they were read."""

    header_timeout_s: float = 10.0
    max_header_bytes: int = 64 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_deadline: asyncio.TimerHandle | None = None
        self._awaiting_headers = False
        self._header_bytes = 0
        self.request_unfinished = False
        self._lingering: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if isinstance(getattr(transport, "max_size", None), int):  # asyncio's selector transport
            transport.max_size = READ_BYTES  # type: ignore[attr-defined]
        self.transport = _LingeringTransport(transport, self)  # type: ignore[assignment]
        self._expect_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        if self._lingering is not None:
            self._lingering.cancel()
        super().connection_lost(exc)

    def linger(self) -> None:
        """Send what is buffered, then EOF; discard what arrives; close after LINGER_S."""
        if self._lingering is not None:
            return
        raw: asyncio.Transport = self.transport._transport  # type: ignore[attr-defined]
        self._cancel_deadline()
        self._unset_keepalive_if_required()
        if raw.can_write_eof():
            raw.write_eof()
        raw.resume_reading()
        self._lingering = self.loop.call_later(LINGER_S, raw.close)

    def on_message_complete(self) -> None:
        self.request_unfinished = False
        super().on_message_complete()

    def data_received(self, data: bytes) -> None:
        if self._lingering is not None:
            return  # answered already; the rest of the request is discarded unread
        counted = self._awaiting_headers
        super().data_received(data)
        if counted and self._awaiting_headers:
            # The headers are not complete after this chunk: all of it was request line/headers.
            self._header_bytes += len(data)
            if self._header_bytes > self.max_header_bytes and not self.transport.is_closing():
                self._refuse(
                    431,
                    "Request Header Fields Too Large",
                    f"The request line and headers passed {self.max_header_bytes} bytes "
                    "(OBSTACLE_MAX_HEADER_BYTES); send smaller headers.",
                )

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.request_unfinished = True
        self._expect_headers()

    def on_headers_complete(self) -> None:
        self._awaiting_headers = False
        self.request_unfinished = True
        self._cancel_deadline()
        super().on_headers_complete()

    def _expect_headers(self) -> None:
        if self._awaiting_headers:
            return
        self._awaiting_headers = True
        self._header_bytes = 0
        self._cancel_deadline()
        self._header_deadline = self.loop.call_later(self.header_timeout_s, self._headers_late)

    def _cancel_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_late(self) -> None:
        self._header_deadline = None
        if not self._awaiting_headers or self.transport.is_closing():
            return
        if self._header_bytes == 0 and (self.cycle is None or self.cycle.response_complete):
            # An idle connection that never started a request: nothing to answer.
            self.transport.close()
            return
        self._refuse(
            408,
            "Request Timeout",
            f"The request line and headers did not arrive within {self.header_timeout_s:g} s "
            "(OBSTACLE_HEADER_TIMEOUT_S); send them at once.",
        )

    def _refuse(self, status: int, reason: str, text: str) -> None:
        self._cancel_deadline()
        self._awaiting_headers = False
        self.logger.warning("%s %s from %s", status, reason, self.client)
        self.transport.write(_plain_response(status, reason, text))
        self.linger()


def uvicorn_config(app: Any, settings: Settings, **options: Any) -> uvicorn.Config:
    """The uvicorn configuration of ``app`` with the limits of ``settings``."""
    protocol = type(
        "GuardedHttpToolsProtocol",
        (GuardedHttpToolsProtocol,),
        {
            "header_timeout_s": settings.header_timeout_s,
            "max_header_bytes": settings.max_header_bytes,
        },
    )
    return uvicorn.Config(
        app,
        http=protocol,
        timeout_keep_alive=settings.keep_alive_timeout_s,
        # Used only if the h11 parser is chosen instead; the same header bound.
        h11_max_incomplete_event_size=settings.max_header_bytes,
        **{"log_level": "info", **options},
    )

"""Bounds on what a connection costs before its request reaches the app: a deadline and a
size and count limit for the request head, and a bound on open connections.

KServe 0.21 serves HTTP with uvicorn and httptools (``kserve/protocol/rest/server.py``,
``RESTServer``) and sets none of these: uvicorn starts no timer before the first response
and limits no header. Measured on the old code: 1,000 connections dripping their headers a
byte a second were all open after 45 s (1,021 file descriptors); 1,000,000 headers (13.9
MB) were answered 200 at +116 MB RSS; four 16.8 MB header values cost 3-4 s of CPU
(httptools appends a value read by read, so its cost grows with the square of the size).

``guarded_protocol`` makes a subclass of uvicorn's ``HttpToolsProtocol`` that:

- closes a connection whose request head (request line and headers) is not complete within
  ``HEADER_TIMEOUT`` of its first byte, or of the connection's opening for its first
  request: 408 when part of a head came, a plain close when nothing did;
- feeds the parser at most ``MAX_HEADER_BYTES`` of one head, and answers 431 when the head
  does not end within them (the parser never holds more, so its quadratic appends stay
  small), and 431 past ``MAX_HEADER_COUNT`` headers;
- keeps at most ``MAX_CONNECTIONS`` connections open: at the bound, a new connection first
  closes one idle keep-alive connection (a client reopens those transparently); when none
  is idle, it is answered 503 and closed at once, so file descriptors stay bounded.

All of it holds for a client that reaches the pod directly, without an ingress in front.
``transformer.server`` installs it in KServe's uvicorn config (``TransformerModelServer``).
"""

from __future__ import annotations

import json
import logging
from asyncio import Transport
from dataclasses import dataclass
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from . import metrics

log = logging.getLogger("transformer.http")


@dataclass(frozen=True)
class HeadLimits:
    """What one connection may cost before its request reaches the app.

    Attributes:
        timeout_s: seconds a request head may take to arrive (``HEADER_TIMEOUT``).
        max_bytes: bytes of one request head, request line included (``MAX_HEADER_BYTES``).
        max_count: headers in one request (``MAX_HEADER_COUNT``).
        max_connections: connections open at once (``MAX_CONNECTIONS``).
    """

    timeout_s: float
    max_bytes: int
    max_count: int
    max_connections: int


class _Refused(Exception):
    """Raised in a parser callback to stop parsing a head that broke a limit (httptools
    turns it into a parser error, which uvicorn answers with ``send_400_response``)."""


def _response(status: int, detail: str, extra: bytes = b"") -> bytes:
    body = json.dumps({"detail": detail}).encode("ascii")
    return b"".join([STATUS_LINE[status], b"content-type: application/json\r\n",
                     b"content-length: %d\r\n" % len(body), extra,
                     b"connection: close\r\n\r\n", body])


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the bounds of :class:`HeadLimits` (``limits``)."""

    limits: HeadLimits  # set on the subclass ``guarded_protocol`` makes

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._refused = False  # this connection was turned away at once
        self._in_head = True  # between requests or inside a head: bytes count as head
        self._head_bytes = 0
        self._head_count = 0
        self._refusal = ""  # why a parser callback stopped parsing
        self._head_timer: Any = None

    # --- connections -----------------------------------------------------------------------

    def connection_made(self, transport: Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections and not self._evict_idle():
            self._refused = True
            metrics.HTTP_REFUSED.labels("connections").inc()
            transport.write(_response(
                503, f"too many connections ({self.limits.max_connections}, "
                     "MAX_CONNECTIONS); retry shortly", b"retry-after: 1\r\n"))
            transport.close()
            return
        super().connection_made(transport)
        self._start_head_timer()

    def _evict_idle(self) -> bool:
        """Close one keep-alive connection that waits for a next request; whether one was."""
        for other in self.connections:
            if (isinstance(other, GuardedHttpToolsProtocol) and other._idle()
                    and not other.transport.is_closing()):
                metrics.HTTP_REFUSED.labels("idle_evicted").inc()
                other.transport.close()
                self.connections.discard(other)
                return True
        return False

    def _idle(self) -> bool:
        """Served a request, answered it, and nothing of a next one came yet."""
        return (self.cycle is not None and self.cycle.response_complete and not self.pipeline
                and self._in_head and self._head_bytes == 0 and self._head_timer is None)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        self._stop_head_timer()
        super().connection_lost(exc)

    # --- the head's deadline -----------------------------------------------------------------

    def _start_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.limits.timeout_s, self._head_late)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        if not self._in_head or self.transport.is_closing():
            return
        metrics.HTTP_REFUSED.labels("header_timeout").inc()
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined head, late, while the previous answer is still being made: no
            # 408 in the middle of it; the connection closes once it is sent.
            self.cycle.keep_alive = False
            return
        if self._head_bytes:
            self.transport.write(_response(
                408, f"the request headers did not arrive within {self.limits.timeout_s:g} s "
                     "(HEADER_TIMEOUT)"))
        self.transport.close()

    # --- the head's size ---------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._refused or self.transport.is_closing():
            return
        if self._in_head:
            room = self.limits.max_bytes - self._head_bytes
            if len(data) > room:  # the head must end within the room left
                self._head_bytes += room
                self._feed(data[:room])
                if self.transport.is_closing():
                    return
                if self._in_head:
                    self._refuse(f"request headers over {self.limits.max_bytes} bytes "
                                 "(MAX_HEADER_BYTES)")
                    return
                data = data[room:]
            else:
                self._head_bytes += len(data)
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        if data:
            super().data_received(data)

    def _refuse(self, detail: str) -> None:
        metrics.HTTP_REFUSED.labels("header_limit").inc()
        self._stop_head_timer()
        self.transport.write(_response(431, detail))
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        # uvicorn answers 400 for any parser error; a callback's refusal is a 431.
        if self._refusal:
            self._refuse(self._refusal)
            return
        super().send_400_response(msg)

    # --- parser callbacks --------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_head = True
        self._head_count = 0
        self._start_head_timer()
        super().on_message_begin()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_count += 1
        if self._head_count > self.limits.max_count:
            self._refusal = (f"more than {self.limits.max_count} request headers "
                             "(MAX_HEADER_COUNT)")
            raise _Refused(self._refusal)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        self._stop_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True  # what comes next is the next request's head
        self._head_bytes = 0


def guarded_protocol(limits: HeadLimits) -> type[GuardedHttpToolsProtocol]:
    """The protocol class for uvicorn's ``Config.http``, with ``limits``."""
    assert httptools is not None  # uvicorn's httptools protocol needs it installed
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {"limits": limits})

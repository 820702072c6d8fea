"""Bounded in-flight work: a few requests processed at once, a few more waiting, the rest
turned away at once with 429 instead of piling up in memory.

A request's body is read first, holding neither a ticket nor a slot: reading is bounded
by the bytes held (:class:`ByteBudget`, over every body being read or processed), by the
body read deadline, and by the open connections (``MAX_CONNECTIONS``,
``http_guard.py``). Then the request takes a *ticket*, kept until it is answered, and a
processing *slot*. Before, the body was read under a ticket: a handful of slow uploads
held every ticket for a whole ``BODY_READ_TIMEOUT`` and legitimate requests got 429, again
and again. A request that arrives while every ticket is taken is still refused at once,
before its body is read (``check``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from .errors import Overloaded, QueueTimeout


class ByteBudget:
    """A pod-wide count of bytes held, refused rather than waited for (waiting for memory
    that other requests hold could deadlock and would hold the connection anyway).

    Args:
        limit: bytes that may be held at once.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def try_take(self, n: int) -> bool:
        """Take ``n`` bytes if they fit; whether they did."""
        if self.held + n > self.limit:
            return False
        self.held += n
        return True

    def give(self, n: int) -> None:
        """Return ``n`` bytes taken before."""
        self.held -= n
        assert self.held >= 0, "gave back more than was taken"


class Admission:
    """At most ``concurrent`` holders of a slot and ``concurrent + queued`` tickets.

    Args:
        concurrent: requests processed at once.
        queued: requests allowed in besides those (waiting for a slot, their body read);
            one more is refused immediately.
        queue_timeout_s: longest wait for a slot.
    """

    def __init__(self, *, concurrent: int, queued: int, queue_timeout_s: float) -> None:
        self._slots = asyncio.Semaphore(concurrent)
        self._capacity = concurrent + queued
        self._admitted = 0  # processing + waiting for a slot
        self._timeout = queue_timeout_s

    @property
    def admitted(self) -> int:
        return self._admitted

    def check(self) -> None:
        """Raise Overloaded when no ticket is free now (taking none): a request that would
        be turned away is turned away before its body is read."""
        if self._admitted >= self._capacity:
            raise Overloaded("the service is busy: too many requests in flight; retry shortly",
                             retry_after_s=1)

    @contextlib.asynccontextmanager
    async def ticket(self) -> AsyncIterator[None]:
        """Count the request in for the with-block, or raise Overloaded at once."""
        self.check()
        self._admitted += 1
        try:
            yield
        finally:
            self._admitted -= 1

    @contextlib.asynccontextmanager
    async def slot(self, *, timeout_s: float | None = None) -> AsyncIterator[None]:
        """Hold a processing slot for the with-block, or raise QueueTimeout.

        Args:
            timeout_s: longest wait, when shorter than the queue timeout (what is left of
                the request's deadline).
        """
        timeout = self._timeout if timeout_s is None else min(timeout_s, self._timeout)
        try:
            await asyncio.wait_for(self._slots.acquire(), timeout=max(timeout, 0.0))
        except asyncio.TimeoutError:
            raise QueueTimeout(f"no processing slot within {timeout:g} s; retry "
                               "shortly", retry_after_s=2) from None
        try:
            yield
        finally:
            self._slots.release()

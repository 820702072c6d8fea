"""Bounded in-flight work: a few requests processed at once, a few more waiting, the rest
turned away at once with 429 instead of piling up in memory.

A request takes a *ticket* when it arrives and keeps it until it is answered; it takes a
processing *slot* only once its body has been read and parsed, so a client that uploads
slowly holds a ticket (bounded by the body read deadline), never a slot. The bodies held
by every admitted request together are bounded in bytes by a :class:`ByteBudget`.
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
        queued: requests allowed in besides those (reading their body or waiting for a
            slot); one more is refused immediately.
        queue_timeout_s: longest wait for a slot.
    """

    def __init__(self, *, concurrent: int, queued: int, queue_timeout_s: float) -> None:
        self._slots = asyncio.Semaphore(concurrent)
        self._capacity = concurrent + queued
        self._admitted = 0  # processing + waiting + reading a body
        self._timeout = queue_timeout_s

    @property
    def admitted(self) -> int:
        return self._admitted

    @contextlib.asynccontextmanager
    async def ticket(self) -> AsyncIterator[None]:
        """Count the request in for the with-block, or raise Overloaded at once."""
        if self._admitted >= self._capacity:
            raise Overloaded("the service is busy: too many requests in flight; retry shortly",
                             retry_after_s=1)
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

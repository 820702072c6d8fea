"""Bounded in-flight work: a few requests processed at once, a few more waiting, the rest
turned away at once with 429 instead of piling up in memory."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from .errors import Overloaded, QueueTimeout


class Admission:
    """At most ``concurrent`` holders of a slot and ``queued`` waiters.

    Args:
        concurrent: requests processed at once.
        queued: requests allowed to wait for a slot; one more is refused immediately.
        queue_timeout_s: longest wait for a slot.
    """

    def __init__(self, *, concurrent: int, queued: int, queue_timeout_s: float) -> None:
        self._slots = asyncio.Semaphore(concurrent)
        self._capacity = concurrent + queued
        self._admitted = 0  # processing + waiting
        self._timeout = queue_timeout_s

    @property
    def admitted(self) -> int:
        return self._admitted

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold a processing slot for the with-block, or raise Overloaded / QueueTimeout."""
        if self._admitted >= self._capacity:
            raise Overloaded("the service is busy: too many requests in flight; retry shortly",
                             retry_after_s=1)
        self._admitted += 1
        try:
            try:
                await asyncio.wait_for(self._slots.acquire(), timeout=self._timeout)
            except asyncio.TimeoutError:
                raise QueueTimeout(f"no processing slot within {self._timeout:g} s; retry "
                                   "shortly", retry_after_s=2) from None
            try:
                yield
            finally:
                self._slots.release()
        finally:
            self._admitted -= 1

"""Decoding overlapped with inference: distinct images go to the predictor in chunks.

A request's images are decoded in a thread pool; each distinct image gets the next row as
soon as it is decoded, and every ``chunk_images`` rows are sent to the predictor at once,
while the rest are still being decoded. The chunks' answers are put back together in row
order. With ``chunk_images = 0`` all rows go in one call once everything is decoded.
No kserve, no gRPC here: ``embed`` is any coroutine function.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import numpy as np

from service_common.wire import IMAGE_SHAPE

T = TypeVar("T")


def _retrieve(task: asyncio.Task[object]) -> None:
    """Mark a task's outcome as seen: a chunk that fails after the request already failed
    must not be logged as 'exception never retrieved'."""
    if not task.cancelled():
        task.exception()


class ChunkSender(Generic[T]):
    """Collects decoded images as rows and sends them to ``embed`` in chunks.

    Args:
        embed: embeds a uint8 ``[n, 3, 224, 224]`` array; None for a sender that only
            collects (``rows`` and ``pixels`` still work).
        chunk_images: rows per call sent while decoding goes on; 0 sends everything in one
            call from ``results``.
    """

    def __init__(self, embed: Callable[[np.ndarray], Awaitable[T]] | None, *,
                 chunk_images: int) -> None:
        assert chunk_images >= 0, "chunk_images >= 0"
        self._embed = embed
        self._chunk = chunk_images
        self._pending: list[np.ndarray] = []
        self._tasks: list[asyncio.Task[T]] = []
        self.rows = 0

    def add(self, pixels: np.ndarray) -> int:
        """Append one image; its row. Sends a chunk when one is full."""
        self._pending.append(pixels)
        self.rows += 1
        if self._chunk and len(self._pending) >= self._chunk and self._embed is not None:
            self._send()
        return self.rows - 1

    @property
    def calls(self) -> int:
        """Predictor calls made so far."""
        return len(self._tasks)

    def pixels(self) -> np.ndarray:
        """The rows not sent yet, ``[n, 3, H, W]``: all of them for a sender that only
        collects. Sent rows are not kept (a chunk's pixels go with its call)."""
        if not self._pending:
            return np.empty((0, *IMAGE_SHAPE), dtype=np.uint8)
        return np.stack(self._pending)

    def _send(self) -> None:
        assert self._embed is not None
        batch = np.stack(self._pending)
        self._pending = []
        task = asyncio.ensure_future(self._embed(batch))
        task.add_done_callback(_retrieve)
        self._tasks.append(task)

    async def results(self) -> list[T]:
        """The answers of every chunk, in row order; the remaining rows are sent first.

        Raises:
            the first chunk's error; the other chunks are then cancelled.
        """
        if self._pending:
            self._send()
        try:
            return list(await asyncio.gather(*self._tasks))
        except BaseException:
            self.cancel()
            raise

    def cancel(self) -> None:
        """Abandon the calls in flight (the request failed for another reason)."""
        for task in self._tasks:
            task.cancel()

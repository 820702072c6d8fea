"""Batching across requests: concurrent requests share one forward pass.

Requests that arrive while the model is busy, or within ``max_wait_s`` of each other, are
concatenated (up to ``max_images``) and embedded together, then split back. A request
larger than ``max_images`` runs alone (the model chunks it). One forward pass at a time:
they share the device. Independent of kserve; counts go to ``predictor.metrics``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from . import metrics


@dataclass
class _Job:
    images: np.ndarray
    future: asyncio.Future[np.ndarray] = field(repr=False)
    queued_at: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    """Queue of embedding jobs served by one worker task.

    Args:
        run: embeds a uint8 ``[N, 3, 224, 224]`` array, returns ``[N, D]`` float32
            (blocking; it runs in a thread).
        max_images: most images combined into one call of ``run``.
        max_wait_s: how long the worker waits for more requests before running a batch
            that is not full.
        combine: False runs every request alone, one after the other (no batching across
            requests; for comparison and for strict per-request isolation).
    """

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], *, max_images: int,
                 max_wait_s: float, combine: bool = True) -> None:
        assert max_images >= 1 and max_wait_s >= 0, "max_images >= 1 and max_wait_s >= 0"
        self._run = run
        self._max_images = max_images if combine else 1
        self._max_wait_s = max_wait_s if combine else 0.0
        self._queue: asyncio.Queue[_Job] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._carry: _Job | None = None

    async def embed(self, images: np.ndarray) -> np.ndarray:
        """The embeddings of ``images``, computed in a batch shared with other callers."""
        if self._queue is None:  # asyncio objects belong to the running loop
            self._queue = asyncio.Queue()
            self._worker = asyncio.create_task(self._serve())
        job = _Job(images, asyncio.get_running_loop().create_future())
        await self._queue.put(job)
        return await job.future

    async def _collect(self, first: _Job) -> list[_Job]:
        assert self._queue is not None
        jobs, count = [first], len(first.images)
        deadline = asyncio.get_running_loop().time() + self._max_wait_s
        while count < self._max_images:
            try:
                job = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self._queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
            if count + len(job.images) > self._max_images:
                self._carry = job  # does not fit: it opens the next batch (order is kept)
                break
            jobs.append(job)
            count += len(job.images)
        return jobs

    async def _serve(self) -> None:
        assert self._queue is not None
        while True:
            first, self._carry = self._carry, None
            jobs = await self._collect(first or await self._queue.get())
            jobs = [j for j in jobs if not j.future.cancelled()]
            if not jobs:
                continue
            batch = jobs[0].images if len(jobs) == 1 else np.concatenate(
                [j.images for j in jobs])
            started = time.perf_counter()
            for j in jobs:
                metrics.QUEUE_WAIT.observe(started - j.queued_at)
            metrics.BATCH_IMAGES.observe(len(batch))
            metrics.BATCH_REQUESTS.observe(len(jobs))
            try:
                with metrics.INFERENCE.time():
                    out = await asyncio.to_thread(self._run, batch)
            except Exception as e:  # every waiting request learns of it
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(e)
                continue
            metrics.IMAGES.inc(len(batch))
            start = 0
            for j in jobs:
                if not j.future.done():
                    j.future.set_result(out[start : start + len(j.images)])
                start += len(j.images)

"""Batching across requests: concurrent requests share one forward pass.

Requests that arrive while the model is busy, or within ``max_wait_s`` of each other, are
embedded together (up to ``max_images``), then split back. A request larger than
``max_images`` runs alone (the model chunks it). The batch goes to ``run`` as the list of
the requests' arrays: joining them (into a pinned staging buffer on CUDA, one
concatenation on CPU) happens in ``run``'s thread, never on the event loop. Up to
``max_in_flight`` batches run at once (2 on CUDA: one computes while the next is copied;
the device orders them, ``predictor.runner``); the next batch is collected only once a
place is free, so that it grows meanwhile. Independent of kserve; counts go to
``predictor.metrics``.
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
        run: embeds the images of a list of uint8 ``[n_i, 3, 224, 224]`` arrays, returns
            ``[sum n_i, D]`` float32 in their order (blocking; it runs in a thread).
        max_images: most images combined into one call of ``run``.
        max_wait_s: how long the worker waits for more requests before running a batch
            that is not full.
        combine: False runs every request alone, one after the other (no batching across
            requests; for comparison and for strict per-request isolation).
        max_in_flight: calls of ``run`` at once (``run`` must be thread-safe above 1).
    """

    def __init__(self, run: Callable[[list[np.ndarray]], np.ndarray], *, max_images: int,
                 max_wait_s: float, combine: bool = True, max_in_flight: int = 1) -> None:
        assert max_images >= 1 and max_wait_s >= 0, "max_images >= 1 and max_wait_s >= 0"
        assert max_in_flight >= 1, "max_in_flight >= 1"
        self._run = run
        self._max_images = max_images if combine else 1
        self._max_wait_s = max_wait_s if combine else 0.0
        self._max_in_flight = max_in_flight
        self._queue: asyncio.Queue[_Job] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._carry: _Job | None = None
        self._running: set[asyncio.Task[None]] = set()

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
        places = asyncio.Semaphore(self._max_in_flight)
        while True:
            await places.acquire()  # collect the next batch only when it can start
            first, self._carry = self._carry, None
            jobs = await self._collect(first or await self._queue.get())
            jobs = [j for j in jobs if not j.future.cancelled()]
            if not jobs:
                places.release()
                continue
            task = asyncio.create_task(self._execute(jobs, places))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _execute(self, jobs: list[_Job], places: asyncio.Semaphore) -> None:
        try:
            parts = [j.images for j in jobs]
            images = sum(len(p) for p in parts)
            started = time.perf_counter()
            for j in jobs:
                metrics.QUEUE_WAIT.observe(started - j.queued_at)
            metrics.BATCH_IMAGES.observe(images)
            metrics.BATCH_REQUESTS.observe(len(jobs))
            try:
                with metrics.INFERENCE.time():
                    out = await asyncio.to_thread(self._run, parts)
            except Exception as e:  # every waiting request learns of it
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(e)
                return
            metrics.IMAGES.inc(images)
            start = 0
            for j in jobs:
                if not j.future.done():
                    j.future.set_result(out[start : start + len(j.images)])
                start += len(j.images)
        finally:
            places.release()

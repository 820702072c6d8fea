"""Fair shares of the pod's URL fetches and decode threads between requests.

Before, every fetch of the pod waited on one FIFO semaphore and every parse and decode
went into one FIFO thread pool, and a request queued all of its work at once: another
client's one-URL request waited 16 s behind a request of many URLs on a slow host, and
behind a 20 kB request of costly images another client's request timed out (504).

- **Fetches.** A request holds at most ``URL_FETCH_PER_REQUEST`` fetches at once
  (:class:`Share`), on top of the pod-wide ``URL_FETCH_CONCURRENCY``. With at most
  ``MAX_CONCURRENT_REQUESTS`` requests processed at once, a per-request share no larger
  than ``URL_FETCH_CONCURRENCY / MAX_CONCURRENT_REQUESTS`` (the defaults: 32 / 8 = 4) means
  a request never waits for another request's fetches.
- **Decodes.** :class:`FairExecutor` keeps the work of each request in its own queue and
  hands the pool's threads out round-robin between the requests that have work waiting:
  a request waits for at most one item of each other request ahead of it, not for all
  the work they queued.

The request a piece of work belongs to is the :class:`Share` current in its context
(``ImageLoader.load`` makes one per request; the tasks it starts inherit it).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from typing import Any, TypeVar

T = TypeVar("T")


class Share:
    """One request's share of the pod: its own fetch slots.

    Args:
        fetches: fetches this request may have in flight at once.
    """

    def __init__(self, *, fetches: int) -> None:
        self.fetch_slots = asyncio.Semaphore(fetches)


_current: contextvars.ContextVar[Share | None] = contextvars.ContextVar("fair_share",
                                                                         default=None)


def current() -> Share | None:
    """The share of the request being served in this context, if any."""
    return _current.get()


@contextlib.contextmanager
def sharing(share: Share) -> Iterator[Share]:
    """Make ``share`` current for the with-block (and the tasks started in it)."""
    token = _current.set(share)
    try:
        yield share
    finally:
        _current.reset(token)


class FairExecutor:
    """Blocking calls on ``executor``, at most ``workers`` at once, handed out round-robin
    between the requests (:class:`Share`) that have calls waiting.

    Args:
        executor: the thread pool that runs the calls.
        workers: calls given to it at once (its thread count: more would queue inside it,
            in FIFO order, which is what this avoids).
    """

    def __init__(self, executor: Executor, *, workers: int) -> None:
        self._executor = executor
        self._free = workers
        self._queues: OrderedDict[object, deque[tuple[Callable[[], Any], asyncio.Future[Any]]]]
        self._queues = OrderedDict()
        self._anonymous = object()  # the owner of calls made outside any request's share

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on a pool thread, in its request's turn."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        owner = current() or self._anonymous
        context = contextvars.copy_context()
        self._queues.setdefault(owner, deque()).append(
            (lambda: context.run(fn, *args), future))
        self._dispatch(loop)
        return await future

    def _dispatch(self, loop: asyncio.AbstractEventLoop) -> None:
        while self._free > 0 and self._queues:
            owner, queue = next(iter(self._queues.items()))
            call, future = queue.popleft()
            if queue:
                self._queues.move_to_end(owner)  # its next call waits for the others' turn
            else:
                del self._queues[owner]
            if future.done():  # cancelled while it waited (its request ended)
                continue
            try:
                running = loop.run_in_executor(self._executor, call)
            except RuntimeError as e:  # the pool is shut down (the server is stopping)
                future.set_exception(e)
                continue
            self._free -= 1
            running.add_done_callback(functools.partial(self._finished, loop, future))

    def _finished(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any],
                  done: asyncio.Future[Any]) -> None:
        self._free += 1
        if not future.done():
            if done.cancelled():
                future.cancel()
            elif (error := done.exception()) is not None:
                future.set_exception(error)
            else:
                future.set_result(done.result())
        self._dispatch(loop)

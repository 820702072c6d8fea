"""What one request may spend: an overall deadline and a byte budget for its URL images.

Without them a single request of 128 pairs of slow or large URLs could hold gigabytes and
the service for minutes (every URL fetch has its own limits, but waiting for a fetch slot
counted against nothing, and 256 URLs of 20 MB each add up). The budget is created when the
request arrives and found by the code that spends it through a context variable, so that
every route (``/similarity``, ``/embed``) and every task it starts shares it without
threading it through KServe's ``Model`` calls.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Iterator

from .errors import FetchBudgetExceeded

_MB = 1_000_000


class RequestBudget:
    """A request's deadline and the URL bytes it may still fetch.

    Args:
        timeout_s: seconds from now until the request must be answered (``REQUEST_TIMEOUT``).
        fetch_bytes: bytes its URL images may total (``MAX_REQUEST_FETCH_MB``).
    """

    def __init__(self, *, timeout_s: float, fetch_bytes: int) -> None:
        self.timeout_s = timeout_s
        self.deadline = time.monotonic() + timeout_s
        self.fetch_limit = fetch_bytes
        self.fetched = 0

    def remaining(self) -> float:
        """Seconds left before the deadline (0 when passed)."""
        return max(0.0, self.deadline - time.monotonic())

    def spend_fetched(self, n: int) -> None:
        """Count ``n`` more bytes received from URLs.

        Raises:
            FetchBudgetExceeded: the request's URL images are over the budget (413).
        """
        self.fetched += n
        if self.fetched > self.fetch_limit:
            raise FetchBudgetExceeded(
                f"the images this request fetches from URLs are over "
                f"{self.fetch_limit / _MB:g} MB in all (MAX_REQUEST_FETCH_MB): split the "
                "request or send fewer large URLs")


_CURRENT: contextvars.ContextVar[RequestBudget | None] = contextvars.ContextVar(
    "request_budget", default=None)


def current() -> RequestBudget | None:
    """The budget of the request being served (None outside a request)."""
    return _CURRENT.get()


@contextlib.contextmanager
def spending(budget: RequestBudget) -> Iterator[RequestBudget]:
    """Make ``budget`` the current one for the with-block (and the tasks it starts)."""
    token = _CURRENT.set(budget)
    try:
        yield budget
    finally:
        _CURRENT.reset(token)

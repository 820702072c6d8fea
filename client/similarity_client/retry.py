"""When to try a request again, and how long to wait first.

429 and 503 are the service saying "not now" (overloaded, predictor restarting or still
loading), 502/504 a predictor that failed or was slow; a connection error or timeout is
the transformer itself restarting. All are retried: never sooner than the service's
``Retry-After``, with exponential backoff (and jitter, so that concurrent requests do not
come back in lockstep) bounded by ``max_delay_s``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

RETRY_STATUSES = frozenset({429, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff that honours ``Retry-After``.

    Args:
        max_retries: attempts after the first before a chunk is given up (its pairs are
            then reported as retryable errors, which a rerun of the CLI retries).
        base_delay_s: the first backoff; doubled on each further retry.
        max_delay_s: no wait is longer than this, ``Retry-After`` included.
        jitter: scale each backoff by a random factor in [0.5, 1].
    """

    max_retries: int = 10
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0
    jitter: bool = True

    def __post_init__(self) -> None:
        assert self.max_retries >= 0, "max_retries must be >= 0"
        assert 0 <= self.base_delay_s <= self.max_delay_s, "need 0 <= base_delay_s <= max_delay_s"

    def delay(self, retry: int, retry_after_s: float | None) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        backoff = self.base_delay_s * 2 ** (retry - 1)
        if self.jitter:
            backoff *= random.uniform(0.5, 1.0)
        return min(self.max_delay_s, max(backoff, retry_after_s or 0.0))


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """``Retry-After`` in seconds: delta-seconds or an HTTP date; None when absent/invalid."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())

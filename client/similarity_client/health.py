"""Before scoring: is the URL the service, and is it ready?

Without this check a wrong ``--url`` was only found out by the retries of the first
request (connection errors are retried, as a restarting transformer needs): minutes of
silence. ``GET {url}/health`` answers at once: a connection error or no answer is a wrong
URL (stop, exit 2); 503 is a service still loading its model (wait, visibly, for a bounded
time); 200 is ready. Any other status (a gateway that does not route ``/health``, say) is
left for the first ``POST /similarity`` to judge.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

POLL_EVERY_S = 2.0  # while the service answers 503
SAY_EVERY_S = 10.0  # a "still waiting" line this often


class NotReady(Exception):
    """The service cannot be used now; ``exit_code`` is the CLI's status for it."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _reason(error: Exception) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def wait_until_ready(url: str, *, wait_s: float, headers: dict[str, str] | None = None,
                     say: Callable[[str], None] = print,
                     transport: httpx.BaseTransport | None = None) -> str | None:
    """Return when ``{url}/health`` answers 200 (or a status that is not 503: returned as
    a warning for the caller to show); wait for a 503 at most ``wait_s`` seconds.

    Raises:
        NotReady: the URL cannot be reached (exit 2), or the service stayed 503 (exit 1).
    """
    health = f"{url.rstrip('/')}/health"
    deadline = time.monotonic() + wait_s
    said = 0.0
    with httpx.Client(timeout=httpx.Timeout(10.0, connect=5.0), headers=headers,
                      transport=transport) as http:
        while True:
            try:
                response = http.get(health)
            except (httpx.TransportError, httpx.InvalidURL) as e:
                raise NotReady(f"cannot connect to {url} ({_reason(e)}): check --url and "
                               "that the service runs", 2) from None
            if response.status_code != 503:
                if response.status_code == 200:
                    return None
                return (f"GET {health} answered HTTP {response.status_code}; going on "
                        "(the first request will tell)")
            now = time.monotonic()
            if now >= deadline:
                raise NotReady(f"the service at {url} is still not ready (GET /health: "
                               f"HTTP 503) after {wait_s:.0f} s (--wait-ready); run again "
                               "later", 1)
            if said == 0.0 or now - said >= SAY_EVERY_S:
                left = deadline - now
                say(f"waiting for the service at {url} to be ready (GET /health: HTTP 503, "
                    f"loading?), up to {left:.0f} s more")
                said = now
            time.sleep(min(POLL_EVERY_S, max(0.0, deadline - now)))

"""The one exception of the weights fetcher, and how a file that failed a check is dropped."""

from __future__ import annotations

from pathlib import Path

README_HINT = "see README 'Getting the weights'"


class FetchError(Exception):
    """An expected failure: reported as one message and exit code 1, no traceback."""


class Unreachable(FetchError):
    """The host of a download cannot be reached (no internet access, most often).

    The message is complete on its own (what failed and how to place the file by hand);
    ``host`` and ``reason`` let a caller that lists every missing file itself (``make
    run``) say it once, in its own words.

    Attributes:
        host: the host (and port) that could not be reached.
        reason: why, in a few words ("name does not resolve", "connection refused", ...).
    """

    def __init__(self, message: str, *, host: str, reason: str) -> None:
        super().__init__(message)
        self.host = host
        self.reason = reason


def reject(path: Path, problem: str) -> FetchError:
    """Remove a file that failed verification and describe why.

    Removing it means the next run downloads it again instead of trusting it.
    """
    path.unlink(missing_ok=True)
    return FetchError(f"{path}: {problem}; removed it so that the next run fetches it again")

"""The one exception of the weights fetcher, and how a file that failed a check is dropped."""

from __future__ import annotations

from pathlib import Path

README_HINT = "see README 'Getting the weights'"


class FetchError(Exception):
    """An expected failure: reported as one message and exit code 1, no traceback."""


def reject(path: Path, problem: str) -> FetchError:
    """Remove a file that failed verification and describe why.

    Removing it means the next run downloads it again instead of trusting it.
    """
    path.unlink(missing_ok=True)
    return FetchError(f"{path}: {problem}; removed it so that the next run fetches it again")

"""HTTP download of one file into a ``.part`` file: resumable, with progress on stderr.

A download is never written to its final name here: the caller verifies the ``.part``
and renames it, so an interrupted or corrupt transfer never counts as present.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from .errors import README_HINT, FetchError, Unreachable

PROGRESS_STEPS = 10
# A line at least this often, so that a slow link shows life long before its first 10%.
PROGRESS_EVERY_S = 2.0
# Without a Content-Length there is no percentage; report every this many bytes instead.
PROGRESS_UNKNOWN_TOTAL_EVERY = 64 << 20
TIMEOUT = httpx.Timeout(60.0, connect=15.0)


def part_path(dest: Path) -> Path:
    """Where the download of ``dest`` is kept until it has been verified."""
    return dest.with_name(dest.name + ".part")


def _host(url: str) -> str:
    parsed = httpx.URL(url)
    return f"{parsed.host}:{parsed.port}" if parsed.port else parsed.host


def _reason(exc: Exception) -> str:
    """A short reason for a failed connection, in words rather than errno names."""
    text = str(exc) or type(exc).__name__
    lowered = text.lower()
    if "name or service not known" in lowered or "nodename nor servname" in lowered \
            or "temporary failure in name resolution" in lowered \
            or "no address associated" in lowered:
        return "the name does not resolve"
    if "connection refused" in lowered:
        return "connection refused"
    if isinstance(exc, httpx.ConnectTimeout) or "timed out" in lowered:
        return "connection timed out"
    return text


def _unreachable(url: str, exc: Exception, manual_step: str) -> Unreachable:
    host, reason = _host(url), _reason(exc)
    return Unreachable(
        f"could not reach {host} ({reason}); this machine may have no internet access: "
        f"download {url} elsewhere and {manual_step} ({README_HINT})",
        host=host, reason=reason,
    )


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds + 0.5), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """Prints ``name: 40% (x MB / y MB, r MB/s, m:ss left)`` at each 10% and every 2 s.

    Not per chunk: a line when the download crosses a tenth of its size, or when
    ``PROGRESS_EVERY_S`` have passed since the last line (so a 700 MB file on a slow link
    shows its rate within seconds, not after its first 70 MB), and at the end. The rate
    counts only the bytes of this run (a resumed download starts its clock at the resume
    offset), so the time left is an honest estimate.
    """

    def __init__(self, name: str, start: int, total: int | None, *, enabled: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.total = total
        self.enabled = enabled
        self._clock = clock
        self._start_bytes = start
        self._start_time = clock()
        self._last_line = self._start_time
        self.next_report = self._next_after(start)

    def _next_after(self, done: int) -> int:
        if self.total:
            step = max(self.total // PROGRESS_STEPS, 1)
        else:
            step = PROGRESS_UNKNOWN_TOTAL_EVERY
        return (done // step + 1) * step

    def line(self, done: int) -> str:
        """The progress line for ``done`` bytes."""
        elapsed = self._clock() - self._start_time
        rate = (done - self._start_bytes) / elapsed if elapsed > 0 else 0.0
        speed = f"{rate / 1e6:.1f} MB/s"
        if self.total:
            left = (
                f", {_duration((self.total - done) / rate)} left"
                if rate > 0 and done < self.total else ""
            )
            return (f"{self.name}: {100 * done // self.total}% ({done / 1e6:.1f} MB / "
                    f"{self.total / 1e6:.1f} MB, {speed}{left})")
        return f"{self.name}: {done / 1e6:.1f} MB ({speed})"

    def update(self, done: int) -> None:
        now = self._clock()
        if (done < self.next_report and done != self.total
                and now - self._last_line < PROGRESS_EVERY_S):
            return
        if self.enabled:
            print(self.line(done), file=sys.stderr, flush=True)
        self._last_line = now
        self.next_report = self._next_after(done)


def _content_range_start(response: httpx.Response) -> int | None:
    """Start offset of a ``Content-Range: bytes a-b/n`` header, None if absent or odd."""
    value = response.headers.get("content-range", "")
    unit, _, spec = value.partition(" ")
    start, _, _ = spec.partition("-")
    return int(start) if unit == "bytes" and start.isdigit() else None


def _total_size(response: httpx.Response, offset: int) -> int | None:
    length = response.headers.get("content-length")
    return offset + int(length) if length and length.isdigit() else None


def download(client: httpx.Client, url: str, dest: Path, manual_step: str, *,
             progress: bool = True) -> Path:
    """Download ``url`` into ``dest``'s ``.part`` file, resuming a previous attempt.

    An existing ``.part`` is continued with ``Range: bytes=<size>-``: on 206 the body is
    appended, on 200 (server ignores ranges) the download starts over, on 416 the part is
    taken as complete (the caller verifies it).

    Args:
        client: the HTTP client (follows redirects).
        url: what to download.
        dest: final path; the data goes to ``dest`` + ``.part``.
        manual_step: how to place the file by hand, for the no-network message.
        progress: print progress lines (bytes, rate, time left) to stderr.

    Returns:
        The ``.part`` path, complete as far as HTTP can tell, not yet verified.

    Raises:
        FetchError: unreachable host, HTTP error status or interrupted transfer.
    """
    part = part_path(dest)
    offset = part.stat().st_size if part.exists() else 0
    # identity: byte counts and Range offsets must refer to the file itself, not a gzip of it
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        print(f"resuming {part.name} at {offset / 1e6:.1f} MB", file=sys.stderr)
    try:
        with client.stream("GET", url, headers=headers) as response:
            if response.status_code == 416 and offset:
                return part
            if response.status_code not in (200, 206):
                where = f" (redirected to {response.url})" if str(response.url) != url else ""
                raise FetchError(
                    f"HTTP {response.status_code} {response.reason_phrase} for {url}{where}"
                )
            if response.status_code == 200:
                offset = 0  # the server ignored the Range header: start over
            elif _content_range_start(response) != offset:
                part.unlink(missing_ok=True)
                raise FetchError(
                    f"{url} answered a request for bytes {offset}- with Content-Range "
                    f"{response.headers.get('content-range')!r}; removed the partial "
                    "download, run again to start over"
                )
            meter = Progress(dest.name, offset, _total_size(response, offset), enabled=progress)
            _write_body(response, part, offset, meter)
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
        raise FetchError(f"cannot download {url!r}: {exc}") from None
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        raise _unreachable(url, exc, manual_step) from None
    except httpx.TransportError as exc:
        have = part.stat().st_size if part.exists() else 0
        raise FetchError(
            f"download of {url} interrupted after {have / 1e6:.1f} MB: "
            f"{exc or type(exc).__name__}; run the same command again to resume"
        ) from None
    return part


def _write_body(response: httpx.Response, part: Path, offset: int, meter: Progress) -> None:
    """Append the response body to ``part`` from ``offset`` (0 truncates)."""
    done = offset
    with part.open("ab" if offset else "wb") as out:
        for chunk in response.iter_raw():
            out.write(chunk)
            done += len(chunk)
            meter.update(done)
    if meter.total is not None and done != meter.total:
        raise FetchError(f"{part}: got {done} bytes, expected {meter.total}; run again to resume")

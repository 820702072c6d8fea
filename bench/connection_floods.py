"""Connection-level floods for ``python -m bench.worst_case --only connections`` (issue 19,
items 1 and 2): what request heads and slow uploads cost a transformer at its default
settings, measured with raw sockets from this process.

- **header drip**: ``n`` connections (default ``MAX_CONNECTIONS``, 1000) each send a
  request line and then one byte of a header a second. Printed: how many are still open
  after ``HEADER_TIMEOUT`` + 5 s and at the end, the answers they got, the transformer's
  peak file descriptors, and what a new client (``GET /health`` on a fresh connection
  every 0.5 s, as a kubelet probes) got meanwhile.
- **many headers**: one request of 1,000,000 headers (13 MB), and one of four header
  values of 16.8 MB: the answer, its time, the transformer's CPU seconds and peak memory.
- **slow uploads**: ``n`` connections (40: the 8 + 32 admission tickets) each announce a
  1 MB body and send 10 bytes a second, while another client sends a valid one-pair
  request every second: its answers and latencies.

Each flood runs on a fresh transformer (``bench.worst_case.transformer_at``).
"""

from __future__ import annotations

import os
import resource
import selectors
import socket
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx


def _addr(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` in bytes."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text()
                  .splitlines() if ":" in line)
    return (int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024)


def _status(data: bytes) -> str:
    """The status code of an HTTP answer's first line ('' when none came)."""
    line = data.split(b"\r\n", 1)[0].split()
    return line[1].decode("ascii", "replace") if len(line) >= 2 else ""


def _complete(data: bytes) -> bool:
    """Whether ``data`` holds a whole HTTP answer with a Content-Length."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip() or 0)
    return False


def _raise_fd_limit(n: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, n + 256))
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


class _Prober:
    """A client beside the flood: ``request()`` every ``every_s`` seconds, each on a new
    connection; records (status, seconds)."""

    def __init__(self, request: Callable[[], int], every_s: float) -> None:
        self.request, self.every_s = request, every_s
        self.results: list[tuple[int, float]] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._done.is_set():
            start = time.perf_counter()
            try:
                status = self.request()
            except httpx.HTTPError:
                status = 0
            self.results.append((status, time.perf_counter() - start))
            self._done.wait(self.every_s)

    def __enter__(self) -> _Prober:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join(70)

    def summary(self) -> dict[str, Any]:
        codes: dict[str, int] = {}
        for status, _ in self.results:
            codes[str(status)] = codes.get(str(status), 0) + 1
        times = [t for _, t in self.results]
        ok = [t for s, t in self.results if s == 200]
        return {"answers": codes, "count": len(times),
                "median_ms": round(statistics.median(times) * 1000) if times else None,
                "max_ms": round(max(times) * 1000) if times else None,
                "ok_max_ms": round(max(ok) * 1000) if ok else None}


def _health_once(url: str) -> int:
    with httpx.Client(timeout=30) as client:  # a new connection each time, as a probe
        return client.get(f"{url}/health").status_code


def header_drip(url: str, pid: int, n: int, header_timeout: float,
                window_s: float) -> dict[str, Any]:
    """``n`` connections dripping a header a byte a second for ``window_s``."""
    _raise_fd_limit(n)
    host, port = _addr(url)
    fds_before = _fds(pid)
    sel = selectors.DefaultSelector()
    socks: dict[socket.socket, bytes] = {}
    socks_by_fd: dict[int, socket.socket] = {}
    answers: dict[str, int] = {}
    refused_at_connect = 0
    open_at: dict[float, int] = {}
    fds_peak = fds_before
    with _Prober(lambda: _health_once(url), 0.5) as prober:
        started = time.perf_counter()
        for _ in range(n):
            s = socket.create_connection((host, port), timeout=10)
            s.setblocking(False)
            try:
                s.send(f"GET /health HTTP/1.1\r\nHost: {host}\r\nX-Drip: ".encode())
            except OSError:
                refused_at_connect += 1
                s.close()
                continue
            socks[s] = b""
            socks_by_fd[s.fileno()] = s
            sel.register(s, selectors.EVENT_READ)
        checkpoints = sorted({header_timeout + 5, window_s})
        next_drip = time.perf_counter()
        while time.perf_counter() - started < window_s:
            now = time.perf_counter()
            if now >= next_drip:
                for s in list(socks):
                    try:
                        s.send(b"a")
                    except OSError:
                        pass
                next_drip = now + 1.0
                fds_peak = max(fds_peak, _fds(pid))
            for key, _ in sel.select(timeout=0.2):
                s = socks_by_fd[key.fd]
                try:
                    chunk = s.recv(65536)
                except OSError:
                    chunk = b""
                if chunk:
                    socks[s] += chunk
                    continue
                code = _status(socks.pop(s)) or "closed without an answer"
                answers[code] = answers.get(code, 0) + 1
                sel.unregister(s)
                s.close()
            elapsed = time.perf_counter() - started
            for mark in checkpoints:
                if mark not in open_at and elapsed >= mark:
                    open_at[mark] = len(socks)
        wall = time.perf_counter() - started
    still_open = len(socks)
    for s in socks:
        sel.unregister(s)
        s.close()
    time.sleep(1)
    opened = {f"{k:g}": v for k, v in sorted(open_at.items())}
    p = prober.summary()
    row: dict[str, Any] = {
           "flood": f"header-drip-{n}-connections", "connections": n, "window_s": window_s,
           "open_after_s": opened,
           "open_at_end": still_open, "answers": answers,
           "refused_at_connect": refused_at_connect,
           "transformer_fds": {"before": fds_before, "peak": fds_peak, "after": _fds(pid)},
           "new_client_health": p, "wall_s": round(wall, 1)}
    print(f"  header drip, {n} connections: open after "
          f"{', '.join(f'{k} s: {v}' for k, v in opened.items())}; answers "
          f"{answers}; transformer fds {fds_before} -> peak {fds_peak}; a new client's "
          f"/health every 0.5 s: {p['answers']}, median {p['median_ms']} ms, max "
          f"{p['max_ms']} ms", flush=True)
    return row


def _one_head(url: str, pid: int, name: str, head: bytes) -> dict[str, Any]:
    """Send ``head`` on one connection; the answer, its time, CPU and memory it cost."""
    host, port = _addr(url)
    rss0, _ = memory(pid)
    cpu0 = _cpu_s(pid)
    s = socket.create_connection((host, port), timeout=60)
    start = time.perf_counter()
    sent = [0]

    def send() -> None:
        view = memoryview(head)
        try:
            while sent[0] < len(head):
                sent[0] += s.send(view[sent[0]:sent[0] + (1 << 20)])
        except OSError:
            pass  # the server answered and closed: the rest is not needed

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    data = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            if _complete(data):
                break
    except OSError:
        pass
    seconds = time.perf_counter() - start
    s.close()
    sender.join(10)
    time.sleep(0.5)
    cpu = _cpu_s(pid) - cpu0
    peak = memory(pid)[1]
    status = _status(data) or "closed without an answer"
    body = data.split(b"\r\n\r\n", 1)[-1][:140].decode("utf-8", "replace")
    row = {"flood": name, "head_bytes": len(head), "sent_bytes": sent[0], "status": status,
           "seconds": round(seconds, 2), "transformer_cpu_s": round(cpu, 2),
           "peak_minus_baseline_MB": round((peak - rss0) / 1e6), "answer": body}
    print(f"  {name:34s} {len(head):>11,d} B head ({sent[0]:,d} sent): {status} in "
          f"{seconds:.2f} s, transformer CPU {cpu:.2f} s, peak RSS "
          f"+{(peak - rss0) / 1e6:,.0f} MB   {body[:90]}", flush=True)
    return row


def many_headers(url: str, pid: int) -> list[dict[str, Any]]:
    """1,000,000 headers; four header values of 16.8 MB."""
    line = b"GET /health HTTP/1.1\r\nHost: a\r\n"
    count = line + b"".join(b"x%06d: yy\r\n" % i for i in range(1_000_000)) + b"\r\n"
    values = line + b"".join(b"x-big-%d: " % i + b"v" * 16_800_000 + b"\r\n"
                             for i in range(4)) + b"\r\n"
    return [_one_head(url, pid, "1,000,000 headers", count),
            _one_head(url, pid, "4 header values of 16.8 MB", values)]


def slow_uploads(url: str, pid: int, n: int, window_s: float,
                 valid_body: bytes) -> dict[str, Any]:
    """``n`` uploads of 10 bytes a second beside a valid request every second."""
    _raise_fd_limit(n)
    host, port = _addr(url)
    socks: list[socket.socket] = []
    head = (f"POST /similarity HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json"
            "\r\nContent-Length: 1000000\r\n\r\n").encode()

    def valid() -> int:
        with httpx.Client(timeout=60) as client:
            return client.post(f"{url}/similarity", content=valid_body,
                               headers={"Content-Type": "application/json"}).status_code

    for _ in range(n):
        s = socket.create_connection((host, port), timeout=10)
        s.sendall(head + b'{"pairs": [')
        s.setblocking(False)
        socks.append(s)
    answers: dict[str, int] = {}
    with _Prober(valid, 1.0) as prober:
        started = time.perf_counter()
        while time.perf_counter() - started < window_s:
            for s in socks:
                try:
                    s.send(b" " * 10)
                except OSError:
                    pass
            time.sleep(1.0)
    for s in socks:
        data = b""
        try:
            data = s.recv(65536)
        except OSError:
            pass
        code = _status(data) or "no answer yet"
        answers[code] = answers.get(code, 0) + 1
        s.close()
    p = prober.summary()
    row = {"flood": f"slow-uploads-{n}", "uploads": n, "window_s": window_s,
           "upload_answers": answers, "valid_request_every_1s": p}
    print(f"  {n} slow uploads (10 B/s of a 1 MB body) for {window_s:g} s: uploads got "
          f"{answers}; a valid request every 1 s: {p['answers']}, median {p['median_ms']} "
          f"ms, max {p['max_ms']} ms", flush=True)
    return row

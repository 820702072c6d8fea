"""Fuzzing of request heads against a real transformer at its default head limits (issue
19, item 1): generated heads of many sizes and header counts, cut into random pieces on
the wire, must get 431 exactly when they break ``MAX_HEADER_BYTES`` or
``MAX_HEADER_COUNT``, and be served otherwise; a head that never ends must not be held
past its bound; the service stays healthy throughout.

What the guard does is in ``transformer/http_guard.py``; the hand-written cases (drips,
deadlines, connection bound) are in ``tests/transformer/test_http_guard.py``.
"""

from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from transformer.settings import TransformerSettings

pytestmark = pytest.mark.slow

LIMITS = TransformerSettings()
NAME_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789-"
VALUE_CHARS = "".join(chr(c) for c in range(0x21, 0x7F)) + " \t"


@st.composite
def heads(draw: st.DrawFn) -> tuple[bytes, int, list[int]]:
    """A GET /health head: (bytes, header count, cut points)."""
    count = draw(st.one_of(st.integers(0, 20),
                           st.integers(LIMITS.max_header_count - 3,
                                       LIMITS.max_header_count + 3),
                           st.integers(0, 3 * LIMITS.max_header_count)))
    big = draw(st.sampled_from([0, 0, LIMITS.max_header_bytes // 3,
                                LIMITS.max_header_bytes // 2, LIMITS.max_header_bytes]))
    lines = [b"GET /health HTTP/1.1", b"Host: fuzz"]
    for i in range(count - 1):
        name = "x-" + draw(st.text(NAME_CHARS, min_size=1, max_size=12)) + f"-{i}"
        value = draw(st.text(VALUE_CHARS, max_size=40)).strip()
        lines.append(f"{name}: {value}".encode("ascii"))
    if big:
        lines.append(b"x-big: " + b"v" * big)
    head = b"\r\n".join(lines) + b"\r\n\r\n"
    cuts = sorted(draw(st.lists(st.integers(1, max(1, len(head) - 1)), max_size=6)))
    return head, count + (1 if big else 0), cuts


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80


def _send_pieces(url: str, head: bytes, cuts: list[int]) -> bytes:
    """Send ``head`` cut at ``cuts``; the answer's status line and headers (or b'')."""
    with socket.create_connection(_address(url), timeout=20) as s:
        start = 0
        try:
            for cut in [*cuts, len(head)]:
                if cut > start:
                    s.sendall(head[start:cut])
                    start = cut
        except OSError:
            pass  # refused and closed before the rest: the answer is what counts
        data = b""
        while b"\r\n\r\n" not in data:
            try:
                chunk = s.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            data += chunk
    return data


@given(case=heads())
@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
def test_heads_are_refused_exactly_past_the_limits(service_url: str,
                                                   case: tuple[bytes, int, list[int]]) -> None:
    head, count, cuts = case
    answer = _send_pieces(service_url, head, cuts)
    status = answer.split(b" ", 2)[1] if answer.count(b" ") >= 2 else b""
    over = len(head) > LIMITS.max_header_bytes or count > LIMITS.max_header_count
    assert status == (b"431" if over else b"200"), (
        f"head of {len(head)} bytes, {count} headers, cut at {cuts}: "
        f"{answer[:200]!r}")


@given(size=st.integers(LIMITS.max_header_bytes + 1, 4 * LIMITS.max_header_bytes),
       piece=st.sampled_from([1000, 8192, 65536, 1 << 20]))
@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_head_that_never_ends_is_refused_at_its_bound(service_url: str, size: int,
                                                        piece: int) -> None:
    """No end of head at all: refused as soon as the bound is crossed, not at the
    deadline, whatever the pieces."""
    head = b"GET /health HTTP/1.1\r\nHost: fuzz\r\nx-long: " + b"v" * size
    start = time.perf_counter()
    answer = _send_pieces(service_url, head, list(range(piece, len(head), piece)))
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert time.perf_counter() - start < LIMITS.header_timeout, "held until the deadline"


def test_still_healthy_after_the_fuzzing(service_url: str) -> None:
    assert httpx.get(f"{service_url}/health", timeout=30).json()["status"] == "healthy"

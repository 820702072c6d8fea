"""Request heads bounded in time and size, open connections bounded (issue 19, item 1).

A real transformer process (KServe's uvicorn with httptools, as it runs in the pod) with
small limits, and raw sockets playing the hostile clients. No predictor is needed: every
request here is answered (or refused) before any call to it. On the old code a dripping
head stayed open indefinitely, a head of any size was answered 200, and every connection
held a file descriptor.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from testing.procs import free_port, run_transformer

pytestmark = pytest.mark.slow

MAX_CONNECTIONS = 30
ENV = {"HEADER_TIMEOUT": "2", "MAX_HEADER_BYTES": "16384", "MAX_HEADER_COUNT": "50",
       "MAX_CONNECTIONS": str(MAX_CONNECTIONS)}
LIVE = b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n"


class Server:
    def __init__(self, url: str, port: int, pid: int) -> None:
        self.url, self.port, self.pid = url, port, pid

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("logs") / "guarded-transformer.log"
    with run_transformer(f"127.0.0.1:{free_port()}", ENV, log, wait_path="/v2/health/live",
                         timeout_s=60) as t:  # no predictor: the guard answers before it
        yield Server(t.url, int(t.url.rsplit(":", 1)[1]), t.pid)


def read_all(sock: socket.socket, timeout: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes (or ``timeout``), and when it closed."""
    sock.settimeout(timeout)
    start = time.monotonic()
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except TimeoutError:
        return out, float("inf")
    except ConnectionResetError:
        pass
    return out, time.monotonic() - start


def status(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/1.1 ") else 0


def test_a_head_dripped_a_byte_a_second_is_cut_at_the_deadline(server: Server) -> None:
    socks = [server.connect() for _ in range(5)]
    try:
        started = time.monotonic()
        for sock in socks:
            sock.sendall(LIVE)
        while time.monotonic() - started < 6:  # one header byte a second
            for sock in socks:
                try:
                    sock.sendall(b"X")
                except OSError:
                    pass
            time.sleep(1)
            # Closed at the 2 s deadline from the first byte, not left open.
        for sock in socks:
            raw, _ = read_all(sock, timeout=5)
            assert status(raw) == 408, raw[:200]
            assert b"HEADER_TIMEOUT" in raw
    finally:
        for sock in socks:
            sock.close()


def test_a_silent_connection_is_closed_at_the_deadline(server: Server) -> None:
    with server.connect() as sock:
        raw, closed_after = read_all(sock, timeout=10)
    assert raw == b"" and closed_after < 6


@pytest.mark.parametrize("head", [
    b"".join(b"X-H%d: v\r\n" % i for i in range(60)),  # over the count
    b"X-Big: " + b"v" * 5_000_000 + b"\r\n",  # over the bytes, in one value
    b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 1000) for i in range(40)),  # over the bytes
], ids=["count", "one-huge-value", "total-size"])
def test_a_head_past_the_limits_is_431_at_once(server: Server, head: bytes) -> None:
    with server.connect() as sock:
        started = time.monotonic()
        try:
            sock.sendall(LIVE + head + b"\r\n")
        except OSError:  # the server may close before taking it all
            pass
        raw, _ = read_all(sock, timeout=10)
        took = time.monotonic() - started
    assert status(raw) == 431, raw[:300]
    assert b"MAX_HEADER_" in raw
    assert took < 5  # not after the deadline: at once (a generous bound for a loaded host)


def test_ordinary_heads_keep_alive_and_pipelining_still_work(server: Server) -> None:
    headers = {f"x-h{i}": "v" * 100 for i in range(40)}  # 40 headers, about 4.5 kB
    with httpx.Client(base_url=server.url, timeout=10) as http:
        for _ in range(3):  # one connection, kept alive
            assert http.get("/v2/health/live", headers=headers).status_code == 200
    with server.connect() as sock:  # two pipelined requests, the second closing
        sock.sendall(LIVE + b"\r\n" + LIVE + b"Connection: close\r\n\r\n")
        raw, _ = read_all(sock, timeout=10)
    assert raw.count(b"HTTP/1.1 200 ") == 2, raw[:500]


def test_open_connections_are_bounded(server: Server) -> None:
    before = server.fds()
    socks = [server.connect() for _ in range(3 * MAX_CONNECTIONS)]
    try:
        time.sleep(0.5)
        held = server.fds() - before
        refused = 0
        for sock in socks:
            sock.settimeout(0.05)
            try:
                data = sock.recv(4096)
            except TimeoutError:
                continue
            if data.startswith(b"HTTP/1.1 503 "):
                refused += 1
        print(f"{len(socks)} connections: {held} descriptors held, {refused} refused")
        assert held <= MAX_CONNECTIONS + 5, held
        assert refused >= len(socks) - MAX_CONNECTIONS - 2
    finally:
        for sock in socks:
            sock.close()
    # The silent ones are cut at the head deadline; then the service answers again.
    time.sleep(3)
    assert httpx.get(f"{server.url}/v2/health/live", timeout=10).status_code == 200


def test_idle_keep_alive_connections_make_room_for_new_ones(server: Server) -> None:
    clients = [httpx.Client(base_url=server.url, timeout=10) for _ in range(MAX_CONNECTIONS)]
    try:
        for client in clients:  # every connection served once and kept alive, idle
            assert client.get("/v2/health/live").status_code == 200
        # At the bound: a new client is served, an idle connection is closed for it.
        assert httpx.get(f"{server.url}/v2/health/live", timeout=10).status_code == 200
        for client in clients:  # and the clients whose connection went reconnect
            assert client.get("/v2/health/live").status_code == 200
    finally:
        for client in clients:
            client.close()

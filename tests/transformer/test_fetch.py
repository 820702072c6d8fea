"""`transformer.fetch` against a real HTTP server on 127.0.0.2 (stdlib, one thread per client).

Loopback is blocked by the address policy, so the clients here allow 127.0.0.2/32 explicitly
(as ``URL_ALLOWED_NETWORKS`` would); tests/transformer/test_ssrf.py covers the policy itself.
"""

from __future__ import annotations

import asyncio
import gzip
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import httpx
import pytest

from testing.http_host import Handler as QuietHandler
from testing.http_host import serving
from transformer.fetch import (
    MAX_REDIRECTS,
    USER_AGENT,
    FetchError,
    GuardedTransport,
    fetch_image_bytes,
    make_client,
)
from transformer.netguard import parse_networks

T = TypeVar("T")
IMAGE = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40  # 10 KB; the fetcher does not decode
MAX_BYTES = 20_000_000
DRIP_LIMIT_S = 20.0  # the drip routes stop on their own after this, whatever the client does
HOST = "127.0.0.2"
ALLOWED = parse_networks(f"{HOST}/32")


# 10 MB of zeros, gzipped twice: a few hundred bytes on the wire ("Content-Encoding: gzip,
# gzip"); a client that decodes codings would hold the 10 MB (or far more with a bigger one).
BOMB_PLAIN_BYTES = 10_000_000
GZIP_BOMB = gzip.compress(gzip.compress(bytes(BOMB_PLAIN_BYTES), 9), 9)


class Handler(QuietHandler):
    protocol_version = "HTTP/1.1"
    seen_user_agents: list[str] = []
    seen_headers: list[dict[str, str]] = []

    def _headers(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()

    def do_GET(self) -> None:
        Handler.seen_user_agents.append(self.headers.get("User-Agent", ""))
        Handler.seen_headers.append({k.lower(): v for k, v in self.headers.items()})
        path = self.path
        try:
            if path == "/image.png":
                self._headers(200, {"Content-Type": "image/png", "Content-Length": str(len(IMAGE))})
                self.wfile.write(IMAGE)
            elif path in ("/404", "/500"):
                body = b"nope"
                self._headers(int(path[1:]), {"Content-Length": str(len(body))})
                self.wfile.write(body)
            elif path.startswith("/gzip"):  # /gzip-bomb: gzip, gzip; /gzip-small: one gzip
                body = GZIP_BOMB if path == "/gzip-bomb" else gzip.compress(IMAGE)
                coding = "gzip, gzip" if path == "/gzip-bomb" else "gzip"
                self._headers(200, {"Content-Encoding": coding,
                                    "Content-Length": str(len(body))})
                self.wfile.write(body)
            elif path == "/set-cookie":  # a cookie the next fetch must not carry
                self._headers(200, {"Set-Cookie": "session=user-a; Path=/",
                                    "Content-Length": str(len(IMAGE))})
                self.wfile.write(IMAGE)
            elif path.startswith("/redirect/"):
                hops = int(path.rsplit("/", 1)[1])
                target = f"/redirect/{hops - 1}" if hops > 1 else "/image.png"
                self._headers(302, {"Location": target, "Content-Length": "0"})
            elif path == "/drip":  # headers at once, then one byte every 0.2 s
                self._headers(200, {"Content-Length": "1000000"})
                self._drip()
            elif path == "/hang":  # never sends headers
                time.sleep(DRIP_LIMIT_S)
            elif path == "/huge-content-length":
                self._headers(200, {"Content-Length": str(10**12)})
                self.wfile.write(IMAGE)
                self.wfile.flush()
                time.sleep(5)  # a fetcher that waited for the body would wait this long
            elif path == "/chunked-large":  # no Content-Length: 1 MB in 8 KB chunks
                self._headers(200, {"Transfer-Encoding": "chunked"})
                chunk = b"x" * 8192
                for _ in range(128):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.write(b"0\r\n\r\n")
            elif path == "/chunked-small":
                self._headers(200, {"Transfer-Encoding": "chunked"})
                for i in range(0, len(IMAGE), 1000):
                    part = IMAGE[i : i + 1000]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                self.wfile.write(b"0\r\n\r\n")
            else:
                self._headers(404, {"Content-Length": "0"})
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up, as it should

    def _drip(self) -> None:
        deadline = time.monotonic() + DRIP_LIMIT_S
        while time.monotonic() < deadline:
            self.wfile.write(b"x")
            self.wfile.flush()
            time.sleep(0.2)


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with serving(Handler, host=HOST) as url:
        yield url


def closed_port_url() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port = sock.getsockname()[1]
    return f"http://{HOST}:{port}/image.png"  # nothing listens there any more


def run(
    make: Callable[[httpx.AsyncClient], Awaitable[T]], client: httpx.AsyncClient | None = None
) -> T:
    """Run `make(client)` in a fresh event loop with a client closed afterwards."""

    async def main() -> T:
        async with client if client is not None else make_client(allowed_networks=ALLOWED) as c:
            return await make(c)

    return asyncio.run(main())


def fetch(url: str, *, timeout_s: float = 5.0, max_bytes: int = MAX_BYTES) -> bytes:
    return run(lambda c: fetch_image_bytes(c, url, timeout_s=timeout_s, max_bytes=max_bytes))


def fetch_error(url: str, *, timeout_s: float = 5.0, max_bytes: int = MAX_BYTES) -> FetchError:
    with pytest.raises(FetchError) as excinfo:
        fetch(url, timeout_s=timeout_s, max_bytes=max_bytes)
    reason = excinfo.value.reason
    assert "Traceback" not in reason and "\n" not in reason and len(reason) < 300
    return excinfo.value


def fetch_error_with(url: str, *, max_redirects: int) -> FetchError:
    with pytest.raises(FetchError) as excinfo:
        run(lambda c: fetch_image_bytes(c, url, timeout_s=5.0, max_bytes=MAX_BYTES,
                                        max_redirects=max_redirects))
    return excinfo.value


def test_fetches_image(base_url: str) -> None:
    Handler.seen_user_agents.clear()
    assert fetch(f"{base_url}/image.png") == IMAGE
    assert Handler.seen_user_agents == [USER_AGENT]


def test_chunked_body_without_content_length(base_url: str) -> None:
    assert fetch(f"{base_url}/chunked-small") == IMAGE


def test_body_exactly_at_the_limit(base_url: str) -> None:
    assert fetch(f"{base_url}/image.png", max_bytes=len(IMAGE)) == IMAGE


@pytest.mark.parametrize("status", [404, 500])
def test_non_2xx(base_url: str, status: int) -> None:
    err = fetch_error(f"{base_url}/{status}")
    assert err.reason == f"URL answered HTTP {status}"
    assert err.status_code == status


def test_slow_drip_is_cut_by_the_overall_deadline(base_url: str) -> None:
    start = time.perf_counter()
    err = fetch_error(f"{base_url}/drip", timeout_s=1.0)
    elapsed = time.perf_counter() - start
    assert err.reason == "timed out after 1 s fetching the URL"
    assert err.status_code is None
    assert 0.9 < elapsed < 2.0


def test_headers_that_never_come_are_cut_by_the_deadline(base_url: str) -> None:
    start = time.perf_counter()
    err = fetch_error(f"{base_url}/hang", timeout_s=0.5)
    assert err.reason == "timed out after 0.5 s fetching the URL"
    assert time.perf_counter() - start < 1.5


def test_huge_content_length_rejected_before_the_body(base_url: str) -> None:
    start = time.perf_counter()
    err = fetch_error(f"{base_url}/huge-content-length")
    assert err.reason == "image is larger than the 20 MB limit (Content-Length 1000000000000)"
    assert time.perf_counter() - start < 2.5  # did not wait for the body the server stalls 5 s


def test_chunked_body_over_the_limit(base_url: str) -> None:
    err = fetch_error(f"{base_url}/chunked-large", max_bytes=100_000)
    assert err.reason == "image is larger than the 0.1 MB limit"


def test_redirects_followed_up_to_the_limit(base_url: str) -> None:
    assert fetch(f"{base_url}/redirect/2") == IMAGE
    assert fetch(f"{base_url}/redirect/{MAX_REDIRECTS}") == IMAGE


@pytest.mark.parametrize("hops", [MAX_REDIRECTS + 1, 10])
def test_too_many_redirects(base_url: str, hops: int) -> None:
    err = fetch_error(f"{base_url}/redirect/{hops}")
    assert err.reason == f"too many redirects (more than {MAX_REDIRECTS})"


def test_too_many_redirects_with_a_client_built_elsewhere(base_url: str) -> None:
    # httpx's default is 20 redirects; the fetcher's own check on response.history applies.
    client = httpx.AsyncClient(trust_env=False)
    with pytest.raises(FetchError) as excinfo:
        run(
            lambda c: fetch_image_bytes(
                c, f"{base_url}/redirect/10", timeout_s=5.0, max_bytes=MAX_BYTES
            ),
            client,
        )
    assert excinfo.value.reason == f"too many redirects (more than {MAX_REDIRECTS})"


def test_connection_refused() -> None:
    err = fetch_error(closed_port_url())
    assert err.reason.startswith("could not connect: ")
    assert err.status_code is None


def test_redirect_limit_is_an_argument(base_url: str) -> None:
    assert fetch_error_with(f"{base_url}/redirect/1", max_redirects=0).reason == (
        "too many redirects (more than 0)")
    got = run(lambda c: fetch_image_bytes(c, f"{base_url}/redirect/8", timeout_s=5.0,
                                          max_bytes=MAX_BYTES, max_redirects=8))
    assert got == IMAGE


def test_make_client_settings() -> None:
    client = make_client(max_connections=3, allowed_networks=ALLOWED)
    try:
        assert client.headers["User-Agent"] == USER_AGENT
        assert client.trust_env is False
        transport = client._transport  # what every request, redirect hops included, uses
        assert isinstance(transport, GuardedTransport)
        assert transport.policy.allowed == ALLOWED
    finally:
        asyncio.run(client.aclose())


# --- content codings (issue 10, finding 1) ---------------------------------------------------

def test_asks_for_uncompressed_answers(base_url: str) -> None:
    Handler.seen_headers.clear()
    assert fetch(f"{base_url}/image.png") == IMAGE
    assert Handler.seen_headers[-1]["accept-encoding"] == "identity"


@pytest.mark.parametrize(("path", "coding"), [("/gzip-bomb", "gzip, gzip"),
                                              ("/gzip-small", "gzip")])
def test_compressed_answers_are_refused_undecoded(base_url: str, path: str,
                                                  coding: str) -> None:
    # The bomb is 10 MB decoded against a 1 MB cap; before the fix httpx decoded both
    # layers chunk by chunk with no output cap (a 475-byte body took 776 MB).
    assert len(GZIP_BOMB) < 20_000
    err = fetch_error(f"{base_url}{path}", max_bytes=1_000_000)
    assert err.reason == (f"the URL answered with Content-Encoding {coding!r}; only "
                          "uncompressed answers (identity) are accepted")


# --- cookies (finding 6) -----------------------------------------------------------------------

def test_no_cookie_is_kept_between_fetches(base_url: str) -> None:
    # One shared client serves every user: a cookie set for one fetch must not be sent on
    # the next (before the fix, httpx's jar sent "session=user-a" back).
    Handler.seen_headers.clear()

    async def two(c: httpx.AsyncClient) -> None:
        await fetch_image_bytes(c, f"{base_url}/set-cookie", timeout_s=5, max_bytes=MAX_BYTES)
        await fetch_image_bytes(c, f"{base_url}/image.png", timeout_s=5, max_bytes=MAX_BYTES)
        assert len(c.cookies) == 0

    run(two)
    assert [h.get("cookie") for h in Handler.seen_headers] == [None, None]

"""Fetch image bytes from http(s) URLs: address policy, one deadline, a size cap.

The whole fetch (DNS, connection-pool wait, connect, TLS, redirects, headers and body) runs
under a single deadline, so a server that drips a byte at a time cannot hold a request open
past ``timeout_s``. The body is streamed and counted; it is abandoned as soon as it exceeds
``max_bytes`` (or up front when ``Content-Length`` already says so).

SSRF (NOTES.md section 6): the client from :func:`make_client` connects through
:class:`GuardedTransport`, whose network backend (:class:`transformer.netguard.GuardedBackend`)
resolves each host once, checks every address against the policy and connects to the checked
address. Every hop of a redirect chain is a new request through the same transport, so it is
checked the same way. The transport also refuses schemes other than http/https, ports
outside 1-65535, and URLs with credentials (``user:pass@host``: a public image needs none,
and they would be sent on to whatever host a redirect names). Proxies from the environment
are ignored (``trust_env``): a proxy would make the connection, and the policy would judge
the proxy, not the target.

Redirects are followed here, one hop at a time, at most ``max_redirects`` of them
(``URL_MAX_REDIRECTS``), whatever the client's own setting.

Content codings: the client asks for ``Accept-Encoding: identity`` and refuses any answer
with another ``Content-Encoding``; the body is read raw (``aiter_raw``), so the size cap
holds on the bytes the decoder will see and a few hundred compressed bytes can never
expand to gigabytes in memory (a gzip bomb, or ``gzip, gzip`` chains).

No cookies: the client is shared by every request of every user, so its jar refuses to
store anything; a ``Set-Cookie`` from one fetch is never sent on another.
"""

from __future__ import annotations

import asyncio
import http.cookiejar
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

import httpcore
import httpx

from .netguard import (
    AddressPolicy,
    BlockedAddress,
    GuardedBackend,
    IPNetwork,
    Resolver,
    ip_literal,
    numeric_host,
)

MAX_REDIRECTS = 5
USER_AGENT = "image-similarity-service/0.1"
_MB = 1_000_000
_MAX_REASON_CHARS = 200


class FetchError(Exception):
    """Fetching an image URL failed; `reason` is a short human sentence for the client."""

    def __init__(self, reason: str, *, status_code: int | None = None,
                 detail: str | None = None) -> None:
        """Store the reason and the upstream status.

        Args:
            reason: Short human-readable sentence, safe to return to the client.
            status_code: The HTTP status the URL answered with, when it answered non-2xx.
            detail: More for the server log only (internal addresses), or None.
        """
        super().__init__(reason)
        self.reason = reason
        self.status_code = status_code
        self.detail = detail


class _NoCookies(http.cookiejar.CookiePolicy):
    """A cookie policy that stores and returns nothing: the client is shared by all users."""

    netscape = True
    rfc2965 = False
    hide_cookie2 = True

    def set_ok(self, cookie: http.cookiejar.Cookie, request: object) -> bool:
        return False

    def return_ok(self, cookie: http.cookiejar.Cookie, request: object) -> bool:
        return False

    def domain_return_ok(self, domain: str, request: object) -> bool:
        return False

    def path_return_ok(self, path: str, request: object) -> bool:
        return False


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx transport that connects only where the address policy allows.

    Args:
        policy: The address policy (blocked ranges, the operator's allow-list).
        limits: Connection-pool limits.
    """

    def __init__(self, *, policy: AddressPolicy, limits: httpx.Limits) -> None:
        ssl_context = httpx.create_ssl_context(trust_env=False)
        super().__init__(verify=ssl_context, limits=limits, trust_env=False)
        # httpx has no argument for httpcore's network backend, so the pool it built is
        # replaced by the same pool with the guarded backend. Fail loudly, not open, if a
        # future httpx stops keeping its pool here.
        assert isinstance(self._pool, httpcore.AsyncConnectionPool), "httpx internals changed"
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedBackend(policy),
        )
        self.policy = policy

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Refuse what the policy forbids in the URL itself, then send (every hop)."""
        if request.url.scheme not in ("http", "https"):
            raise FetchError(
                f"only http and https URLs are accepted, not {request.url.scheme!r}")
        if request.url.userinfo:
            raise FetchError("URLs with credentials (user:password@host) are not accepted")
        port = request.url.port
        if port is not None and not 1 <= port <= 65535:  # httpx parses any integer
            raise FetchError(f"URL port {port} is out of range (1-65535)")
        return await super().handle_async_request(request)


def make_client(
    *, max_connections: int = 32, allowed_networks: Sequence[IPNetwork] = (),
    resolver: Resolver | None = None,
) -> httpx.AsyncClient:
    """Build the shared client for image fetches.

    Per-phase httpx timeouts are off: :func:`fetch_image_bytes` enforces one overall
    deadline instead. Proxies and netrc from the environment are ignored (``trust_env``).
    Only uncompressed answers are asked for, and no cookie is ever kept.

    Args:
        max_connections: Most simultaneous connections across all hosts.
        allowed_networks: Networks reachable even inside a blocked range
            (``URL_ALLOWED_NETWORKS``); by default only global addresses are.
        resolver: DNS lookups (``DNS_WORKERS``, ``DNS_TIMEOUT``); a shared default if None.

    Returns:
        An ``httpx.AsyncClient``; close it with ``await client.aclose()``.
    """
    limits = httpx.Limits(max_connections=max_connections,
                          max_keepalive_connections=max_connections)
    return httpx.AsyncClient(
        headers={"User-Agent": USER_AGENT, "Accept": "image/*,*/*;q=0.5",
                 "Accept-Encoding": "identity"},
        cookies=http.cookiejar.CookieJar(policy=_NoCookies()),
        transport=GuardedTransport(policy=AddressPolicy(allowed=tuple(allowed_networks),
                                                        resolver=resolver),
                                   limits=limits),
        timeout=httpx.Timeout(None),
        follow_redirects=False,
        max_redirects=MAX_REDIRECTS,
        trust_env=False,
    )


async def fetch_image_bytes(
    client: httpx.AsyncClient, url: str, *, timeout_s: float, max_bytes: int,
    max_redirects: int = MAX_REDIRECTS, on_bytes: Callable[[int], None] | None = None,
) -> bytes:
    """GET `url` and return its body, within `timeout_s` overall and at most `max_bytes`.

    Args:
        client: Client to use, normally from :func:`make_client` (which applies the address
            policy; a client built elsewhere gets no SSRF protection).
        url: An http(s) URL.
        timeout_s: Deadline for the whole fetch, DNS, redirects and body included.
        max_bytes: Largest accepted body (after any Content-Encoding is undone).
        max_redirects: Most redirects followed (``URL_MAX_REDIRECTS``).
        on_bytes: Called with the size of every chunk received, before it is kept (the
            request's byte budget); what it raises ends the fetch and propagates.

    Returns:
        The response body.

    Raises:
        FetchError: Blocked or unresolvable host, timeout, non-2xx answer, body too large,
            too many redirects, connection or protocol failure. The reason never contains a
            traceback.
    """
    try:
        return await asyncio.wait_for(_fetch(client, url, max_bytes, max_redirects, on_bytes),
                                      timeout=timeout_s)
    except BlockedAddress as exc:
        raise FetchError(exc.reason, detail=exc.detail) from None
    except asyncio.TimeoutError:
        raise FetchError(f"timed out after {timeout_s:g} s fetching the URL") from None
    except httpx.TooManyRedirects:
        raise FetchError(f"too many redirects (more than {max_redirects})") from None
    except httpx.TimeoutException as exc:  # a per-phase timeout set on a caller's client
        raise FetchError(f"timed out fetching the URL ({_short(exc)})") from None
    except httpx.ConnectError as exc:
        raise FetchError(f"could not connect: {_short(exc)}") from None
    except httpx.UnsupportedProtocol as exc:  # e.g. a redirect to ftp://
        raise FetchError(f"unsupported URL: {_short(exc)}") from None
    except httpx.RemoteProtocolError as exc:
        raise FetchError(f"the server broke the HTTP protocol: {_short(exc)}") from None
    except httpx.TransportError as exc:
        raise FetchError(f"connection failed: {_short(exc)}") from None
    except httpx.InvalidURL as exc:
        raise FetchError(_invalid_url_reason(url, exc)) from None
    except httpx.HTTPError as exc:
        raise FetchError(f"could not fetch the URL: {_short(exc)}") from None
    except ValueError as exc:  # httpx on hosts it cannot encode: surrogates, bad IDNA labels
        raise FetchError(f"invalid URL: {_short(exc)}") from None


def _invalid_url_reason(url: str, exc: httpx.InvalidURL) -> str:
    """Why httpx refused `url`; names the address a numeric host like 0177.0.0.1 means."""
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        host = ""
    ip = numeric_host(host) if host and ip_literal(host) is None else None
    if ip is not None:  # httpx refuses leading-zero dotted quads, which C reads as octal
        return (f"URL host {host!r} is an ambiguous numeric form of {ip} (leading zeros "
                f"are octal to some parsers): not accepted")
    return f"could not fetch the URL: {_short(exc)}"


async def _fetch(client: httpx.AsyncClient, url: str, max_bytes: int,
                 max_redirects: int, on_bytes: Callable[[int], None] | None) -> bytes:
    """Follow redirects hop by hop, then stream the body, enforcing status and size."""
    request = client.build_request("GET", url)
    for _ in range(max_redirects + 1):
        response = await client.send(request, stream=True, follow_redirects=False)
        try:
            if response.next_request is not None:  # a redirect; httpx built the next hop
                request = response.next_request
                continue
            return await _read_body(response, max_bytes, on_bytes)
        finally:
            await response.aclose()
    raise FetchError(f"too many redirects (more than {max_redirects})")


async def _read_body(response: httpx.Response, max_bytes: int,
                     on_bytes: Callable[[int], None] | None) -> bytes:
    """The body of a final answer: 2xx only, at most `max_bytes`."""
    if not response.is_success:
        raise FetchError(
            f"URL answered HTTP {response.status_code}", status_code=response.status_code
        )
    encoding = ",".join(response.headers.get_list("Content-Encoding")).strip().lower()
    if encoding not in ("", "identity"):
        raise FetchError(f"the URL answered with Content-Encoding {encoding[:50]!r}; only "
                         "uncompressed answers (identity) are accepted")
    too_large = f"image is larger than the {max_bytes / _MB:g} MB limit"
    length = response.headers.get("Content-Length", "")
    if length.strip().isdigit() and int(length) > max_bytes:
        raise FetchError(f"{too_large} (Content-Length {int(length)})")
    body = bytearray()
    async for chunk in response.aiter_raw():  # never decompressed: the bytes counted are kept
        if on_bytes is not None:
            on_bytes(len(chunk))
        body += chunk
        if len(body) > max_bytes:
            raise FetchError(too_large)
    return bytes(body)


def _short(exc: BaseException) -> str:
    """One line describing `exc`, without traceback, bounded in length."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if len(text) > _MAX_REASON_CHARS:
        text = text[: _MAX_REASON_CHARS - 3] + "..."
    return text

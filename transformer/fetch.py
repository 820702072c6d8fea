"""Fetch image bytes from http(s) URLs with one deadline and a size cap.

The whole fetch (connection-pool wait, connect, TLS, redirects, headers and body) runs under a
single deadline, so a server that drips a byte at a time cannot hold a request open past
``timeout_s``. The body is streamed and counted; it is abandoned as soon as it exceeds
``max_bytes`` (or up front when ``Content-Length`` already says so).

Redirects: :func:`make_client` sets ``max_redirects=MAX_REDIRECTS`` on the client, so httpx
stops at the first hop over the limit; :func:`fetch_image_bytes` also checks
``response.history`` so a client built elsewhere cannot follow more.

SSRF protection (NOTES.md section 6: check every resolved address of every hop, connect to
the checked address) is not done yet. It belongs in the transport: give :func:`make_client`
an ``httpx.AsyncHTTPTransport`` subclass (or a custom network backend) that resolves and
checks the host before connecting. Every redirect hop goes through the transport, so
:func:`fetch_image_bytes` needs no change.
"""

from __future__ import annotations

import asyncio

import httpx

MAX_REDIRECTS = 5
USER_AGENT = "image-similarity-service/0.1"
_MB = 1_000_000
_MAX_REASON_CHARS = 200


class FetchError(Exception):
    """Fetching an image URL failed; `reason` is a short human sentence for the client."""

    def __init__(self, reason: str, *, status_code: int | None = None) -> None:
        """Store the reason and the upstream status.

        Args:
            reason: Short human-readable sentence, safe to return to the client.
            status_code: The HTTP status the URL answered with, when it answered non-2xx.
        """
        super().__init__(reason)
        self.reason = reason
        self.status_code = status_code


def make_client(*, max_connections: int = 32) -> httpx.AsyncClient:
    """Build the shared client for image fetches.

    Per-phase httpx timeouts are off: :func:`fetch_image_bytes` enforces one overall
    deadline instead. Proxies and netrc from the environment are ignored (``trust_env``).

    Args:
        max_connections: Most simultaneous connections across all hosts.

    Returns:
        An ``httpx.AsyncClient``; close it with ``await client.aclose()``.
    """
    return httpx.AsyncClient(
        headers={"User-Agent": USER_AGENT, "Accept": "image/*,*/*;q=0.5"},
        limits=httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
        ),
        timeout=httpx.Timeout(None),
        follow_redirects=True,
        max_redirects=MAX_REDIRECTS,
        trust_env=False,
    )


async def fetch_image_bytes(
    client: httpx.AsyncClient, url: str, *, timeout_s: float, max_bytes: int
) -> bytes:
    """GET `url` and return its body, within `timeout_s` overall and at most `max_bytes`.

    Args:
        client: Client to use, normally from :func:`make_client`.
        url: An http(s) URL.
        timeout_s: Deadline for the whole fetch, redirects and body included.
        max_bytes: Largest accepted body (after any Content-Encoding is undone).

    Returns:
        The response body.

    Raises:
        FetchError: Timeout, non-2xx answer, body too large, too many redirects, connection
            or protocol failure. The reason never contains a traceback.
    """
    try:
        return await asyncio.wait_for(_fetch(client, url, max_bytes), timeout=timeout_s)
    except asyncio.TimeoutError:
        raise FetchError(f"timed out after {timeout_s:g} s fetching the URL") from None
    except httpx.TooManyRedirects:
        raise FetchError(f"too many redirects (more than {MAX_REDIRECTS})") from None
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
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise FetchError(f"could not fetch the URL: {_short(exc)}") from None


async def _fetch(client: httpx.AsyncClient, url: str, max_bytes: int) -> bytes:
    """Stream the body of `url`, enforcing status, redirect count and size."""
    async with client.stream("GET", url, follow_redirects=True) as response:
        if len(response.history) > MAX_REDIRECTS:
            raise FetchError(f"too many redirects (more than {MAX_REDIRECTS})")
        if not response.is_success:
            raise FetchError(
                f"URL answered HTTP {response.status_code}", status_code=response.status_code
            )
        too_large = f"image is larger than the {max_bytes / _MB:g} MB limit"
        length = response.headers.get("Content-Length", "")
        if length.strip().isdigit() and int(length) > max_bytes:
            raise FetchError(f"{too_large} (Content-Length {int(length)})")
        body = bytearray()
        async for chunk in response.aiter_bytes():
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

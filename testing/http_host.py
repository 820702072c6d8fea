"""The one loopback HTTP server that the tests' and benchmarks' stand-ins are built on.

``serving(handler)`` runs a stdlib ``ThreadingHTTPServer`` in a daemon thread for a
with-block and yields its base URL; ``Handler`` is a quiet request handler with the replies
every stand-in writes (a body with its length, JSON, a trickle). ``image_host`` is the
image host for URL inputs: files by path, and ``/slow/...`` paths that trickle a PNG's
first byte for as long as asked.

Real HTTP, on purpose: the code under test opens real connections to it.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

# Where the image host listens: the transformer's URL policy blocks loopback, so tests
# allow just this address (URL_ALLOWED_NETWORKS).
IMAGE_HOST_ADDRESS = "127.0.0.2"
IMAGE_HOST_NETWORK = f"{IMAGE_HOST_ADDRESS}/32"


class Handler(http.server.BaseHTTPRequestHandler):
    """A request handler that logs nothing and shrugs off clients that hang up.

    HTTP/1.0 (one request per connection) unless a subclass says otherwise: a trickle with
    no length then ends where the handler returns."""

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (stdlib's name)
        pass

    def reply(self, status: int, body: bytes = b"", headers: Mapping[str, str] | None = None
              ) -> None:
        """``body`` with its ``Content-Length`` and ``headers``."""
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(body)

    def reply_json(self, status: int, obj: Any, headers: Mapping[str, str] | None = None
                   ) -> None:
        """``obj`` as JSON."""
        self.reply(status, json.dumps(obj).encode(),
                   {"Content-Type": "application/json", **(headers or {})})

    def trickle(self, chunk: bytes, *, every_s: float, for_s: float,
                headers: Mapping[str, str] | None = None) -> None:
        """A 200 with ``headers`` at once, then ``chunk`` every ``every_s`` for ``for_s``
        seconds, or until the client hangs up."""
        self.send_response(200)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        ends = time.monotonic() + for_s
        try:
            while time.monotonic() < ends:
                self.wfile.write(chunk)
                self.wfile.flush()
                time.sleep(every_s)
        except OSError:
            pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # hang-ups, refused TLS handshakes
            super().handle_error(request, client_address)  # type: ignore[arg-type]


@contextlib.contextmanager
def serving(handler: Callable[..., http.server.BaseHTTPRequestHandler], *,
            host: str = "127.0.0.1", port: int = 0, tls: ssl.SSLContext | None = None
            ) -> Iterator[str]:
    """Serve ``handler`` (a handler class, or a ``partial`` of one) on ``host:port`` (a
    free port by default), over TLS with the server context ``tls`` when given, for the
    with-block; yields ``http://host:port`` (``https://`` with ``tls``)."""
    server = _Server((host, port), handler)  # type: ignore[arg-type]
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"{'https' if tls else 'http'}://{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class ImageHost:
    """A running image host: its base URL and the files it serves (by path)."""

    base: str
    files: dict[str, bytes] = field(default_factory=dict)

    def add(self, name: str, data: bytes) -> str:
        """Serve ``data`` at ``/name``; returns its URL."""
        self.files[f"/{name}"] = data
        return f"{self.base}/{name}"


@contextlib.contextmanager
def image_host(*, default: bytes | None = None, drip_every_s: float = 0.2,
               drip_s: float = 20.0) -> Iterator[ImageHost]:
    """An image host on ``IMAGE_HOST_ADDRESS``: the files added to it, ``default`` (or a
    404) for any other path, and ``/slow...`` paths that send a PNG's first byte every
    ``drip_every_s`` for ``drip_s`` seconds (a slow URL that never completes)."""
    files: dict[str, bytes] = {}

    class ImageHandler(Handler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path.startswith("/slow"):
                self.trickle(b"\x89", every_s=drip_every_s, for_s=drip_s,
                             headers={"Content-Type": "image/png"})
                return
            body = files.get(self.path, default)
            if body is None:
                self.reply(404)
            else:
                self.reply(200, body, {"Content-Type": "application/octet-stream"})

    with serving(ImageHandler, host=IMAGE_HOST_ADDRESS) as base:
        yield ImageHost(base=base, files=files)

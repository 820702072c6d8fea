"""One log line per request, and a request id that follows it to the predictor and back.

The id is the client's ``X-Request-ID`` when it sends a usable one (what ingress-nginx and
Envoy set), else a new one; it is returned in the ``X-Request-ID`` response header, sent to
the predictor as the gRPC request id, and added to every record logged while the request is
served (``service_common.logs.request_id``). The line (logger ``transformer.access``) names
the id, method, path, status, time and what the route noted (``note``: pairs, images). It is
INFO for the public routes and for refused ones (someone called them), DEBUG for the probe
and scrape routes (``routes_guard.is_probe``): a kubelet probing every few seconds would
otherwise write most of the log.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from contextvars import ContextVar
from typing import Any

from service_common.logs import request_id

from .routes_guard import ASGIApp, Receive, Scope, Send, is_probe

log = logging.getLogger("transformer.access")

_USABLE_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")
_fields: ContextVar[dict[str, Any] | None] = ContextVar("access_fields", default=None)


def note(**fields: Any) -> None:
    """Add fields (``pairs=3``) to the current request's log line."""
    current = _fields.get()
    if current is not None:
        current.update(fields)


def incoming_id(headers: list[tuple[bytes, bytes]]) -> str:
    """The client's ``X-Request-ID`` when usable (printable, at most 128 characters of
    ``[A-Za-z0-9._:/+=-]``: nothing that could forge a log line), else a new one."""
    for name, value in headers:
        if name.lower() == b"x-request-id":
            text = value.decode("latin-1").strip()
            if _USABLE_ID.fullmatch(text):
                return text
    return uuid.uuid4().hex


class AccessLog:
    """ASGI middleware: request id in and out, one line per HTTP request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = incoming_id(scope.get("headers", []))
        fields: dict[str, Any] = {}
        id_token, fields_token = request_id.set(rid), _fields.set(fields)
        status = 500  # if the app fails before it answers
        started = time.perf_counter()

        async def send_with_id(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []),
                                      (b"x-request-id", rid.encode("ascii"))]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)  # type: ignore[arg-type]
        finally:
            ms = round((time.perf_counter() - started) * 1000, 1)
            # raw_path is still percent-encoded: no newline or control character gets in.
            path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")[:200]
            extra = " ".join(f"{k}={v}" for k, v in fields.items())
            log.log(logging.DEBUG if is_probe(scope["path"]) else logging.INFO,
                    "%s %s %d %.1f ms id=%s%s", scope["method"], path, status, ms, rid,
                    f" {extra}" if extra else "",
                    extra={"method": scope["method"], "path": path, "status": status,
                           "duration_ms": ms, **fields})
            request_id.reset(id_token)
            _fields.reset(fields_token)

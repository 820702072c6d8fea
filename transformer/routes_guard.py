"""Only the transformer's own routes are served: KServe's generic routes are refused.

KServe's model server adds routes of its own to the transformer's app: v1 ``:predict`` and
``:explain``, v2 ``/infer``, model repository ``load``/``unload``, server metadata, ``/docs``.
The inference ones would run ``preprocess`` (fetching URLs, decoding images) outside the
admission control, the body limit and the budgets of ``POST /similarity``; ``unload`` would
take the model out of service. None of them is part of the public API (README, "API"), so
rather than repeat every limit on each of them, an allow-list refuses everything else with a
404 and a JSON body saying what is served, before the body is read.

The OpenAI-compatible routes (``POST /v1/embeddings``, ``GET /v1/models``,
``transformer.openai_api``) share the ``/v1`` prefix with KServe's v1 protocol: exactly
those two paths are let through (the transformer's own routes, registered before KServe's,
answer them), and KServe's ``/v1/models/{name}``, ``:predict`` and ``:explain`` stay refused.

Allowed: the public routes, what the probes and Prometheus need (``/v2/health/live``,
``/v2/health/ready``, ``/v2/models/{name}/ready``, ``/metrics``) and ``/openapi.json``,
which documents the public routes only (``public_openapi``).
"""

from __future__ import annotations

import importlib.metadata
import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.routing import BaseRoute, Route

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PUBLIC_PATHS = ("/similarity", "/embed", "/health", "/v1/embeddings", "/v1/models")
"""The public API (README, "API"); the Ingress/HTTPRoute expose these and nothing else."""

PROBE_PATHS = ("/v2/health/live", "/v2/health/ready", "/metrics")
"""For the kubelet's probes and Prometheus, inside the cluster."""

_MODEL_READY = re.compile(r"^/v2/models/[^/]+/ready$")
_OTHER_ALLOWED = ("/openapi.json",)


def is_probe(path: str) -> bool:
    """Whether ``path`` is a probe or scrape route (logged at DEBUG, not once per call)."""
    return path in PROBE_PATHS or path == "/health" or bool(_MODEL_READY.match(path))


def is_allowed(path: str) -> bool:
    """Whether the transformer serves ``path`` at all (methods are the routes' business)."""
    return (path in PUBLIC_PATHS or path in PROBE_PATHS or path in _OTHER_ALLOWED
            or bool(_MODEL_READY.match(path)))


def refusal(method: str, path: str) -> dict[str, str]:
    """The body of the 404 for a path that is not served."""
    return {"detail": f"{method} {path[:200]} is not served here: the API is POST "
                      "/similarity, POST /embed, GET /health, POST /v1/embeddings and GET "
                      "/v1/models (KServe's generic inference and model-repository routes "
                      "are turned off on the transformer)"}


class RoutesGuard:
    """ASGI middleware: 404 for every HTTP path ``is_allowed`` refuses, body unread."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_allowed(scope["path"]):
            await self.app(scope, receive, send)
            return
        body = json.dumps(refusal(scope["method"], scope["path"]),
                          ensure_ascii=True).encode("ascii")
        await send({"type": "http.response.start", "status": 404,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode("ascii"))]})
        await send({"type": "http.response.body", "body": body})


def _public(route: BaseRoute) -> bool:
    return isinstance(route, Route) and route.path in PUBLIC_PATHS


def _version() -> str:
    """This service's version (not KServe's, which FastAPI's app carries)."""
    try:
        return importlib.metadata.version("image-similarity-service")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "unknown"


def install(app: FastAPI) -> None:
    """Refuse every route but the allowed ones, and document only the public ones."""
    app.add_middleware(RoutesGuard)  # type: ignore[arg-type]

    def public_openapi() -> dict[str, Any]:
        """The OpenAPI document of the public routes (KServe's are not served)."""
        if app.openapi_schema is None:
            app.openapi_schema = get_openapi(
                title="image-similarity-service", version=_version(),
                description="DreamSim perceptual distances between image pairs "
                            "(POST /similarity) and embeddings of images (POST /embed); "
                            "readiness at GET /health. The contract, with examples: the "
                            "project README, section 'API'.",
                routes=[r for r in app.routes if _public(r)])
        return app.openapi_schema

    app.openapi = public_openapi  # type: ignore[method-assign]

"""The public HTTP routes and their responses, bound to one service.

``create_app(service)`` makes KServe's FastAPI app the public API: KServe's generic routes
refused (``routes_guard.py``), the access log outside that guard, and ``POST /similarity``,
``POST /embed``, ``POST /v1/embeddings``, ``GET /v1/models`` and ``GET /health`` bound to
``service`` by closure (no module state). KServe 0.21 has no router hook: the routes are
added to ``kserve.model_server.app`` before the model server starts (``server.main``),
so they come before KServe's own.

Every POST route is one code path (``serve``, ``admit``): admission, body limits, the one
parse into a request of the route's kind (``transformer.requests``), the model pipeline,
errors in the route's shape, metrics; only the kind and the metrics differ.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from kserve import model_server as kserve_model_server

from service_common import logs

from . import access_log, metrics, openai_api, routes_guard
from .body import load_json, request_body
from .budget import RequestBudget, spending
from .embeddings import RenderedList
from .errors import ClientGone, ModelChanged, RequestTimeout, ServiceError
from .requests import IMAGES, OPENAI_EMBEDDINGS, PAIRS, Parsed, RequestKind
from .schemas import (
    EmbedRequest,
    EmbedResponse,
    ErrorResponse,
    HealthResponse,
    SimilarityRequest,
    SimilarityResponse,
)

if TYPE_CHECKING:
    from .server import SimilarityTransformer

T = TypeVar("T")
log = logging.getLogger("transformer")

CACHE_CLIENT = "cache-client"  # key of the client identity in the headers given to preprocess


class SafeJSONResponse(JSONResponse):
    """JSON with non-ASCII escaped: a lone surrogate echoed from a request (a URL in an
    error reason, say) can never make encoding the answer fail."""

    def render(self, content: Any) -> bytes:
        rendered = ({k: v for k, v in content.items() if isinstance(v, RenderedList)}
                    if isinstance(content, dict) else {})
        if not rendered:
            return _dumps(content).encode("ascii")
        # Fields already rendered (``embeddings.RenderedList``) are spliced in as text.
        rest = _dumps({k: v for k, v in content.items() if k not in rendered})
        head = ",".join(f"{_dumps(k)}:{v.text}" for k, v in rendered.items())
        return ("{" + head + ("," + rest[1:] if rest != "{}" else "}")).encode("ascii")


def _dumps(content: Any) -> str:
    return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":"))


def _inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON schema with its ``$defs`` inlined, for ``openapi_extra`` (which
    does not register them as components)."""
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)  # type: ignore[no-any-return]


def _request_body(model: type[Any]) -> dict[str, Any]:
    """``openapi_extra`` documenting a route's JSON body (the routes read it themselves)."""
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": _inline_refs(model.model_json_schema())}}}}


def error_response(e: ServiceError, kind: RequestKind[Any] | None = None) -> JSONResponse:
    """A service error as its route answers it (``kind``'s shape, else ``/similarity``'s)."""
    body = kind.error_body(e) if kind is not None else e.body()
    return SafeJSONResponse(body, status_code=e.status_code, headers=e.headers())


_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (408, 413, 422, 429, 502, 503, 504)
}
_OPENAI_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": openai_api.OpenAIErrorResponse}
    for code in (404, 408, 413, 422, 429, 502, 503, 504)
}


@dataclass(frozen=True)
class Route:
    """A public POST route: its path, the kind of request it takes, its metrics."""

    path: str
    kind: RequestKind[Any]
    requests: Any  # metrics: answers by code
    seconds: Any  # metrics: wall time
    items: Any  # metrics: items per answered request


SIMILARITY = Route("/similarity", PAIRS, metrics.REQUESTS, metrics.REQUEST_SECONDS,
                   metrics.PAIRS)
EMBED = Route("/embed", IMAGES, metrics.EMBED_REQUESTS, metrics.EMBED_REQUEST_SECONDS,
              metrics.EMBED_IMAGES)
OPENAI = Route(openai_api.EMBEDDINGS_PATH, OPENAI_EMBEDDINGS, metrics.OPENAI_REQUESTS,
               metrics.OPENAI_REQUEST_SECONDS, metrics.OPENAI_IMAGES)


async def admit(service: SimilarityTransformer, request: Request, parse: Callable[[Any], T],
                process: Callable[[T], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    """Serve one request with a body under every request-level limit; for every route.

    In order: a quick 429 when every ticket is taken, the body (``request_body``: size,
    read deadline, pod-wide byte budget; no ticket or slot is held meanwhile, see
    ``admission.py``), a ticket (429 when too many are in), a processing slot (503 after
    the queue timeout), ``parse`` of the JSON on a thread (the request's one parse), then
    ``process`` of the parsed request. The request's deadline (``REQUEST_TIMEOUT``, 504)
    runs from its arrival over all of it; its URL byte budget is current for ``process``
    and whatever it starts (:mod:`transformer.budget`).
    """
    s = service.settings
    spent = RequestBudget(timeout_s=s.request_timeout, fetch_bytes=s.max_request_fetch_bytes)
    service.admission.check()
    async with request_body(
            request, limit=s.max_body_bytes, budget=service.body_budget,
            timeout_s=min(s.body_read_timeout, spent.remaining())) as raw, \
            service.admission.ticket():
        async with service.admission.slot(timeout_s=spent.remaining()):
            timeout = asyncio.timeout(spent.remaining())
            try:
                async with timeout:
                    # Parsing on a thread of its own pool: never queued behind the
                    # decoding of other requests' images.
                    parsed = await asyncio.to_thread(lambda: parse(load_json(raw)))
                    del raw[:]  # the parsed request holds the same data
                    with spending(spent):
                        return await process(parsed)
            except TimeoutError:
                if timeout.expired():
                    raise RequestTimeout(
                        f"the request was not done within {s.request_timeout:g} s "
                        "(REQUEST_TIMEOUT): send fewer images or faster URLs",
                        retry_after_s=5) from None
                raise


async def serve(service: SimilarityTransformer, request: Request, route: Route) -> JSONResponse:
    """Admission, body limit, JSON, the one parse, the model pipeline, errors, metrics."""
    started = time.perf_counter()
    kind = route.kind
    try:
        headers = {"x-request-id": logs.request_id.get() or uuid.uuid4().hex}
        client = request.headers.get(service.settings.embedding_cache_client_header)
        if client:
            headers[CACHE_CLIENT] = client

        async def process(parsed: Parsed[Any]) -> dict[str, Any]:
            try:
                result, _ = await service(parsed, headers=headers)
            except ModelChanged as e:  # the model's answers now empty the cache: once more
                log.info("%s (%s): answering the request again", e.detail, e.log_detail)
                metrics.MODEL_CHANGED_RETRIES.inc()
                result, _ = await service(parsed, headers=headers)
            return result  # type: ignore[no-any-return]

        result = await admit(service, request,
                             lambda body: kind.parse(body, service.settings), process)
    except ClientGone as e:  # a normal event: a line and a count, no traceback
        log.info("%s", e.detail)
        metrics.CLIENT_DISCONNECTS.inc()
        return _observed(error_response(e, kind), started, route)
    except ServiceError as e:
        if e.status_code >= 500:
            log.warning("answering %d: %s%s", e.status_code, e.detail,
                        f" ({e.log_detail})" if e.log_detail else "")
        return _observed(error_response(e, kind), started, route)
    except Exception:  # a bug: log it in full, answer without a traceback
        log.exception("unexpected error in %s", route.path)
        return _observed(error_response(
            ServiceError("internal error; see the server log"), kind), started, route)
    elapsed = time.perf_counter() - started
    if kind.timed:
        result["processing_time_ms"] = round(elapsed * 1000, 3)
    route.items.observe(len(result[kind.items_key]))
    return _observed(SafeJSONResponse(result), started, route)


def _observed(response: JSONResponse, started: float, route: Route) -> JSONResponse:
    route.requests.labels(str(response.status_code)).inc()
    route.seconds.observe(time.perf_counter() - started)
    return response


def register_routes(app: FastAPI, service: SimilarityTransformer) -> None:
    """Add the public routes to ``app``, each serving with ``service``."""

    @app.post("/similarity", response_model=SimilarityResponse, responses=_ERROR_RESPONSES,
              openapi_extra=_request_body(SimilarityRequest))
    async def similarity(request: Request) -> JSONResponse:
        """DreamSim distance and similarity for each image pair, in request order."""
        return await serve(service, request, SIMILARITY)

    @app.post("/embed", response_model=EmbedResponse, responses=_ERROR_RESPONSES,
              openapi_extra=_request_body(EmbedRequest))
    async def embed(request: Request) -> JSONResponse:
        """The normalised DreamSim embedding of each image, in request order."""
        return await serve(service, request, EMBED)

    @app.post(openai_api.EMBEDDINGS_PATH, response_model=openai_api.OpenAIEmbeddingResponse,
              responses=_OPENAI_ERRORS,
              openapi_extra=_request_body(openai_api.OpenAIEmbeddingRequest))
    async def openai_embeddings(request: Request) -> JSONResponse:
        """OpenAI-compatible embeddings of images: POST /embed in OpenAI's shape."""
        return await serve(service, request, OPENAI)

    @app.get(openai_api.MODELS_PATH, response_model=openai_api.OpenAIModelList,
             responses={code: {"model": openai_api.OpenAIErrorResponse}
                        for code in (502, 503, 504)})
    async def openai_models() -> JSONResponse:
        """OpenAI's model list: the DreamSim variant served, with its embedding size."""
        try:
            info = await service._model_info()
            body = openai_api.model_list(model_type=info["model_type"],
                                         dim=info["embedding_dim"],
                                         max_images=service.settings.max_images_per_request)
        except ServiceError as e:
            return error_response(e, OPENAI_EMBEDDINGS)
        return SafeJSONResponse(body)

    @app.get("/health", response_model=HealthResponse,
             responses={503: {"model": HealthResponse}})
    async def health() -> JSONResponse:
        """Whether a request would be served now, and by what model on what device."""
        ready, body = await service.health()
        return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


def create_app(service: SimilarityTransformer) -> FastAPI:
    """KServe's app as the public API of ``service`` (call it once, before the server
    starts: the app is KServe's module-level one)."""
    app = kserve_model_server.app
    routes_guard.install(app)  # KServe's generic routes are refused: routes_guard.py says why
    app.add_middleware(access_log.AccessLog)  # type: ignore[arg-type]  # outside the guard
    register_routes(app, service)
    return app

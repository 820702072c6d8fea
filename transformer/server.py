"""The transformer as a KServe model server, plus the public routes.

``SimilarityTransformer`` is a ``kserve.Model``: ``preprocess`` turns a similarity (or
embedding) request into one uint8 batch of its distinct images, ``predict`` sends it to
the predictor over gRPC v2 (raw contents), ``postprocess`` turns embeddings into scores
(or returns them, for ``/embed``). Both routes go through the same admission, body
limits, parsing, deduplication, cache and errors. ``POST /similarity``, ``POST /embed``
and ``GET /health`` are added to KServe's FastAPI app (KServe 0.21 has no router hook:
routes are added to ``kserve.model_server.app`` before the server starts).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse
from kserve import Model, ModelServer
from kserve import model_server as kserve_model_server
from pydantic import BaseModel, ValidationError

from service_common import logs, wire

from . import access_log, metrics, openai_api, routes_guard
from .admission import Admission, ByteBudget
from .body import load_json, request_body
from .budget import RequestBudget, spending
from .cache import EmbeddingCache, partition_of
from .decoders import warm_up as warm_up_decoders
from .embeddings import ImagePlan, RenderedList, plan_images, render_embeddings
from .errors import (
    BadRequest,
    ClientGone,
    PredictorFailed,
    PredictorUnavailable,
    RequestTimeout,
    ServiceError,
    TooManyImages,
    TooManyPairs,
)
from .fetch import make_client
from .http_guard import HeadLimits, guarded_protocol
from .inputs import ImageLoader, LoadedImages
from .netguard import Resolver
from .pipeline import ChunkSender
from .predictor_client import Embeddings, PredictorClient
from .resize import warm_up as warm_up_resize
from .schemas import (
    MAX_PAIR_ID_LENGTH,
    EmbedImage,
    EmbedRequest,
    EmbedResponse,
    ErrorItem,
    ErrorResponse,
    HealthResponse,
    ImagePair,
    RequestLimit,
    SimilarityRequest,
    SimilarityResponse,
)
from .scoring import PairPlan, plan_pairs, score_pairs
from .settings import TransformerSettings
from .unknown_fields import unknown_fields

T = TypeVar("T")
log = logging.getLogger("transformer")

MODEL_NAME = wire.MODEL_NAME  # re-exported: the name the KServe model is served under
CACHE_CLIENT = "cache-client"  # key of the client identity in the headers given to preprocess
app = kserve_model_server.app
routes_guard.install(app)  # KServe's generic routes are refused: routes_guard.py says why
app.add_middleware(access_log.AccessLog)  # type: ignore[arg-type]  # outside the guard


@dataclass
class Batch:
    """A request on its way through the pipeline."""

    request: SimilarityRequest | EmbedRequest
    plan: PairPlan | ImagePlan
    images: LoadedImages
    model_identity: str | None  # the cache keys' model identity
    embeddings: np.ndarray | None = None


class SimilarityTransformer(Model):
    """kserve transformer: image pairs in, DreamSim scores out (or images in, embeddings
    out, when called with an ``EmbedRequest``).

    Args:
        name: model name, the same as the predictor's.
        settings: limits and timeouts.
        predictor_host: the predictor's gRPC ``host:port``.
        use_ssl: TLS to the predictor.
    """

    def __init__(self, name: str, settings: TransformerSettings, *, predictor_host: str,
                 use_ssl: bool = False) -> None:
        super().__init__(name)
        self.settings = settings
        self.predictor = PredictorClient(predictor_host, model_name=name, use_ssl=use_ssl,
                                         timeout_s=settings.predictor_timeout,
                                         connections=settings.predictor_connections,
                                         lb_policy=settings.predictor_lb_policy)
        self.executor = ThreadPoolExecutor(max_workers=settings.decode_workers,
                                           thread_name_prefix="decode")
        self.cache = EmbeddingCache(settings.embedding_cache_size
                                    if settings.embedding_cache_scope != "off" else 0)
        self.body_budget = ByteBudget(settings.max_bodies_in_flight_bytes)
        self._loader: ImageLoader | None = None
        self._admission: Admission | None = None
        self.predictor_info: dict[str, Any] = {}

    def load(self) -> bool:
        # Nothing to load; whether requests can be served is the predictor's readiness,
        # which /health reports. The native decoders' compiled kernels are compiled (or
        # read from numba's disk cache) in the background so that start-up is not delayed;
        # a request arriving meanwhile waits for them.
        if self.settings.decode_impl == "native":
            threading.Thread(target=_warm_up_native, name="warm-up", daemon=True).start()
        self.ready = True
        return self.ready

    @property
    def loader(self) -> ImageLoader:
        if self._loader is None:  # the HTTP client must be made inside the event loop
            self._loader = ImageLoader(self.settings, executor=self.executor, cache=self.cache,
                                       client=make_client(
                                           max_connections=self.settings.url_fetch_concurrency,
                                           allowed_networks=self.settings.allowed_networks,
                                           resolver=Resolver(
                                               workers=self.settings.dns_workers,
                                               timeout_s=self.settings.dns_timeout)))
        return self._loader

    @property
    def admission(self) -> Admission:
        if self._admission is None:  # asyncio primitives belong to the running loop
            s = self.settings
            self._admission = Admission(concurrent=s.max_concurrent_requests,
                                        queued=s.max_queued_requests,
                                        queue_timeout_s=s.queue_timeout)
        return self._admission

    async def admit(self, request: Request, parse: Callable[[Any], T],
                    process: Callable[[T], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
        """Serve one request with a body under every request-level limit; for every route.

        In order: a quick 429 when every ticket is taken, the body (``request_body``:
        size, read deadline, pod-wide byte budget; no ticket or slot is held meanwhile, see
        ``admission.py``), a ticket (429 when too many are in), a processing slot (503
        after the queue timeout), ``parse`` of the JSON on a thread, then
        ``process`` of the parsed request. The request's deadline (``REQUEST_TIMEOUT``,
        504) runs from its arrival over all of it; its URL byte budget is current for
        ``process`` and whatever it starts (:mod:`transformer.budget`).
        """
        s = self.settings
        spent = RequestBudget(timeout_s=s.request_timeout, fetch_bytes=s.max_request_fetch_bytes)
        self.admission.check()
        async with request_body(
                request, limit=s.max_body_bytes, budget=self.body_budget,
                timeout_s=min(s.body_read_timeout, spent.remaining())) as raw, \
                self.admission.ticket():
            async with self.admission.slot(timeout_s=spent.remaining()):
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

    def parse(self, body: Any) -> SimilarityRequest:
        """Validate a request body; nothing is decoded or fetched before this passes.

        The pairs are counted before anything is validated: a small body of many empty
        pairs must not buy one error item (and its memory and CPU) per pair.
        """
        return _validated(body, SimilarityRequest, "pairs", "pair_id",
                          self.settings.max_pairs_per_request, "MAX_PAIRS_PER_REQUEST",
                          TooManyPairs)

    def parse_embed(self, body: Any) -> EmbedRequest:
        """Validate an ``/embed`` body; nothing is decoded or fetched before this passes
        (the images are counted first, as the pairs are)."""
        return _validated(body, EmbedRequest, "images", "id",
                          self.settings.max_images_per_request, "MAX_IMAGES_PER_REQUEST",
                          TooManyImages)

    async def preprocess(self, payload: Any, headers: dict[str, str] | None = None) -> Batch:
        """Validate, deduplicate, fetch and decode: the batch for the predictor."""
        request: SimilarityRequest | EmbedRequest
        plan: PairPlan | ImagePlan
        if isinstance(payload, EmbedRequest):
            request = self.parse_embed(payload)
            plan = plan_images(request.images)
            ids = [image.id for image in request.images]
        else:
            request = self.parse(payload)
            plan = plan_pairs(request.pairs)
            ids = [p.pair_id for p in request.pairs]
            access_log.note(pairs=len(request.pairs))
        access_log.note(images=len(plan.inputs))  # distinct images
        identity = None
        partition = partition_of(self.settings.embedding_cache_scope,
                                 (headers or {}).get(CACHE_CLIENT))
        if self.cache.enabled and plan.inputs and partition is not None:
            # Ask which model answers now (an empty batch, no model run): a predictor
            # restarted with other weights or settings must never be served old embeddings.
            self._update_info(await self.predictor.describe(
                timeout_s=min(5.0, self.settings.predictor_timeout)))
            identity = self.predictor_info.get("model_id")
        # Distinct images go to the predictor in chunks while the rest still decode.
        sender = ChunkSender(self._embed_chunk, chunk_images=self.settings.pipeline_chunk_images)
        try:
            images = await self.loader.load(
                plan, ids, model_identity=identity, sender=sender,
                cache_partition=partition or b"",
                id_field="id" if isinstance(request, EmbedRequest) else "pair_id")
        except BaseException:
            sender.cancel()
            raise
        return Batch(request=request, plan=plan, images=images, model_identity=identity)

    async def _embed_chunk(self, pixels: np.ndarray) -> Embeddings:
        with metrics.PREDICTOR_SECONDS.time():
            return await self.predictor.embed(pixels)

    async def predict(self, payload: Batch, headers: dict[str, str] | None = None,
                      response_headers: dict[str, str] | None = None) -> Batch:
        """Embeddings of the batch's distinct images, from the predictor over gRPC v2."""
        loaded = payload.images
        parts = []
        if loaded.sender.rows:
            results = await loaded.sender.results()
            for result in results:
                self._update_info(result.info)
            vectors = results[0].vectors if len(results) == 1 else np.concatenate(
                [r.vectors for r in results])
            if payload.model_identity and all(
                    r.info.get("model_id") == payload.model_identity for r in results):
                for key, vector in zip(loaded.keys, vectors, strict=True):
                    if key is not None:
                        self.cache.put(key, vector.copy())
            parts.append(vectors)
        if len(loaded.cached):
            parts.append(loaded.cached)
        payload.embeddings = (np.concatenate(parts) if parts
                              else np.zeros((0, 1), dtype=np.float32))
        return payload

    async def postprocess(self, result: Batch, headers: dict[str, str] | None = None,
                          response_headers: dict[str, str] | None = None) -> dict[str, Any]:
        """Scores (or embeddings) in request order (``processing_time_ms`` is added by the
        route)."""
        assert result.embeddings is not None
        request, plan = result.request, result.plan
        if isinstance(request, EmbedRequest):
            assert isinstance(plan, ImagePlan)
            info = await self._model_info()
            # Rendered to JSON text on a thread, each distinct embedding once: 256 vectors
            # through pydantic and json.dumps held the event loop for seconds.
            rendered = await asyncio.to_thread(
                render_embeddings, result.embeddings, plan, result.images.rows,
                [image.id for image in request.images], request.encoding)
            answer: dict[str, Any] = {"embeddings": rendered, "model_type": info["model_type"],
                                      "dim": info["embedding_dim"]}
        else:
            assert isinstance(plan, PairPlan)
            ids = [p.pair_id for p in request.pairs]
            answer = {"scores": [s.model_dump() for s in score_pairs(
                result.embeddings, plan, result.images.rows, ids)]}
        if request._warnings:
            answer["warnings"] = request._warnings
        return answer

    async def _model_info(self) -> dict[str, Any]:
        """Variant and embedding size of the predictor; asked with an empty batch (no
        model run) when no answer has told them yet (an empty request, say)."""
        if not {"model_type", "embedding_dim"} <= self.predictor_info.keys():
            self._update_info(await self.predictor.describe(
                timeout_s=min(5.0, self.settings.predictor_timeout)))
        if not {"model_type", "embedding_dim"} <= self.predictor_info.keys():
            raise PredictorFailed("the predictor does not report its model_type and "
                                  "embedding_dim")
        return self.predictor_info

    def _update_info(self, info: dict[str, Any]) -> None:
        """Record what the predictor reports; another model identity empties the cache."""
        if info.get("model_id") != self.predictor_info.get("model_id"):
            self.cache.clear()
        self.predictor_info.update(info)

    async def health(self) -> tuple[bool, HealthResponse]:
        """Predictor readiness and what it runs.

        Device and model type come with every inference answer; until the first one, an
        empty batch (no model run) asks for them.
        """
        ready = await self.predictor.is_ready()
        if ready and not self.predictor_info:
            # A busy predictor may take seconds to answer even an empty batch; within the
            # probes' 5 s, so that a healthy answer names its device whenever it can.
            with contextlib.suppress(ServiceError):
                self._update_info(await self.predictor.describe(timeout_s=4.0))
        return ready, HealthResponse(
            status="healthy" if ready else "unavailable",
            model_loaded=ready,
            device=self.predictor_info.get("device"),
            model_type=self.predictor_info.get("model_type"),
            **{k: self.predictor_info.get(k) for k in _PREDICTOR_HEALTH_FIELDS},
        )

    def stop(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


# What the predictor reports that /health passes through (additions to the contract).
_PREDICTOR_HEALTH_FIELDS = ("precision", "device_index", "gpu_name", "attention_backend")


def _warm_up_native() -> None:
    try:
        warm_up_decoders()
        warm_up_resize()
    except Exception:  # never fatal: the first request compiles instead, or fails loudly
        log.exception("warming up the native decoders failed")


def _too_many(count: int, limit: int, what: str, setting: str,
              error: type[ServiceError]) -> ServiceError:
    return error(f"{count} {what} in one request; the limit is {limit} "
                 f"({setting}): split the request",
                 [ErrorItem(field=what, reason=f"{count} > {limit}")],
                 limit=RequestLimit(setting=setting, value=limit))


_Request = TypeVar("_Request", SimilarityRequest, EmbedRequest)


def _validated(body: Any, model: type[_Request], key: str, id_field: str, limit: int,
               setting: str, error: type[ServiceError]) -> _Request:
    """``body`` as ``model``: ``body[key]`` counted against ``limit`` first, then validated
    (error items name ``id_field``), then counted again (an already-built model). The
    fields it carried that the API does not know become the answer's ``warnings``."""
    if isinstance(body, model):
        request = body
    else:
        _count_first(body, key, limit, setting, error)
        try:
            request = model.model_validate(body)
        except ValidationError as e:
            raise BadRequest("the request body does not match the API",
                             _validation_items(e, body, key, id_field)) from None
        request._warnings = unknown_fields(body, model, key, _ITEM_MODELS[model])
    count = len(getattr(request, key))
    if count > limit:
        raise _too_many(count, limit, key, setting, error)
    return request


_ITEM_MODELS: dict[type[BaseModel], type[BaseModel]] = {
    SimilarityRequest: ImagePair, EmbedRequest: EmbedImage}
# What a body and each of its items must look like, for the answer when one is not an
# object at all (pydantic would name the internal class: "instance of EmbedImage").
_SHAPES = {
    "body": {"pairs": 'a JSON object: {"pairs": [{"reference_image": ..., '
                      '"generated_image": ..., "pair_id": optional}, ...]}',
             "images": 'a JSON object: {"images": [{"image": ..., "id": optional}, ...], '
                       '"encoding": optional}'},
    "item": {"pairs": 'each pair must be an object: {"reference_image": "<base64, data URI '
                      'or URL>", "generated_image": "<...>", "pair_id": optional}',
             "images": 'each image must be an object: {"image": "<base64, data URI or '
                       'URL>", "id": optional}'},
}
_NOT_AN_OBJECT = frozenset(("model_type", "model_attributes_type", "dict_type"))


def _count_first(body: Any, key: str, limit: int, setting: str,
                 error: type[ServiceError]) -> None:
    """Refuse a body whose ``body[key]`` list is over ``limit`` before validating it."""
    entries = body.get(key) if isinstance(body, dict) else None
    if isinstance(entries, list) and len(entries) > limit:
        raise _too_many(len(entries), limit, key, setting, error)


def _validation_items(error: ValidationError, body: Any, list_key: str,
                      id_key: str) -> list[ErrorItem]:
    """Error items of a body that failed validation: per item of ``body[list_key]`` (pairs
    or images), its index and (when it is echoable) its ``id_key``."""
    items = []
    entries = body.get(list_key) if isinstance(body, dict) else None
    for err in error.errors(include_url=False):
        loc = list(err["loc"])
        index = (loc[1] if len(loc) >= 2 and loc[0] == list_key and isinstance(loc[1], int)
                 else None)
        item_id = None
        if index is not None and isinstance(entries, list) and isinstance(entries[index], dict):
            item_id = _echoable_id(entries[index].get(id_key))
        field = ".".join(str(p) for p in (loc[2:] if index is not None else loc)) or "body"
        reason = err["msg"]
        if err["type"] in _NOT_AN_OBJECT and (not loc or (index is not None and len(loc) == 2)):
            # the body, or a whole item, is not an object: say what it must look like
            field = "body" if not loc else list_key
            reason = (f"the body must be {_SHAPES['body'][list_key]}" if not loc
                      else _SHAPES["item"][list_key])
        items.append(ErrorItem(index=index, field=field, reason=reason,
                               **{id_key: item_id}))
    return items


def _echoable_id(raw: Any) -> str | int | None:
    """A pair_id safe to repeat in an error: a valid one, else None (never a bool, a huge
    string or text that is not valid Unicode)."""
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        return None
    if isinstance(raw, str):
        if len(raw) > MAX_PAIR_ID_LENGTH:
            return None
        try:
            raw.encode("utf-8")
        except UnicodeEncodeError:
            return None
    return raw


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


_service: SimilarityTransformer | None = None


def set_service(service: SimilarityTransformer | None) -> None:
    """Install the transformer the routes use (``main`` does it; tests may too)."""
    global _service
    _service = service


def _error_response(e: ServiceError, route: _Route | None = None) -> JSONResponse:
    body = route.error_body(e) if route is not None else e.body()
    return SafeJSONResponse(body, status_code=e.status_code, headers=e.headers())


_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (408, 413, 422, 429, 502, 503, 504)
}


async def _run_service(service: SimilarityTransformer, parsed: Any,
                       headers: dict[str, str]) -> dict[str, Any]:
    result, _ = await service(parsed, headers=headers)
    return result  # type: ignore[no-any-return]


def _error_body(e: ServiceError) -> dict[str, Any]:
    return e.body()


@dataclass(frozen=True)
class _Route:
    """What differs between the public POST routes: the rest is one code path."""

    path: str
    parse: Callable[[SimilarityTransformer, Any], Any]  # validated request for the service
    items_key: str  # the answer's list, counted into ``items`` below
    requests: Any  # metrics: answers by code
    seconds: Any  # metrics: wall time
    items: Any  # metrics: items per answered request
    # The parsed request through the model pipeline to the answer's body.
    run: Callable[[SimilarityTransformer, Any, dict[str, str]],
                  Awaitable[dict[str, Any]]] = _run_service
    error_body: Callable[[ServiceError], dict[str, Any]] = _error_body  # an error's body
    timed: bool = True  # add processing_time_ms to the answer


_SIMILARITY = _Route("/similarity", SimilarityTransformer.parse, "scores", metrics.REQUESTS,
                     metrics.REQUEST_SECONDS, metrics.PAIRS)
_EMBED = _Route("/embed", SimilarityTransformer.parse_embed, "embeddings",
                metrics.EMBED_REQUESTS, metrics.EMBED_REQUEST_SECONDS, metrics.EMBED_IMAGES)


async def _run_openai(service: SimilarityTransformer, parsed: openai_api.ParsedEmbeddings,
                      headers: dict[str, str]) -> dict[str, Any]:
    """``/v1/embeddings``: the model name checked (before any image is touched), then
    exactly ``/embed``'s pipeline, its result in OpenAI's shape."""
    info = await service._model_info()
    openai_api.check_model(parsed, model_type=info["model_type"], dim=info["embedding_dim"])
    result = await _run_service(service, parsed.embed, headers)
    return openai_api.answer(result, inputs=len(parsed.embed.images))


_OPENAI = _Route(openai_api.EMBEDDINGS_PATH,
                 lambda service, body: openai_api.parse(
                     body, limit=service.settings.max_images_per_request),
                 "data", metrics.OPENAI_REQUESTS, metrics.OPENAI_REQUEST_SECONDS,
                 metrics.OPENAI_IMAGES, run=_run_openai, error_body=openai_api.error_body,
                 timed=False)


async def _serve(request: Request, route: _Route) -> JSONResponse:
    """Admission, body limit, JSON, validation, the model pipeline, errors, metrics."""
    started = time.perf_counter()
    try:
        if _service is None:
            raise PredictorUnavailable("the service is starting", retry_after_s=5)
        service = _service
        headers = {"x-request-id": logs.request_id.get() or uuid.uuid4().hex}
        client = request.headers.get(service.settings.embedding_cache_client_header)
        if client:
            headers[CACHE_CLIENT] = client

        async def process(parsed: Any) -> dict[str, Any]:
            return await route.run(service, parsed, headers)

        result = await service.admit(request, lambda body: route.parse(service, body),
                                     process)
    except ClientGone as e:  # a normal event: a line and a count, no traceback
        log.info("%s", e.detail)
        metrics.CLIENT_DISCONNECTS.inc()
        return _observed(_error_response(e, route), started, route)
    except ServiceError as e:
        if e.status_code >= 500:
            log.warning("answering %d: %s%s", e.status_code, e.detail,
                        f" ({e.log_detail})" if e.log_detail else "")
        return _observed(_error_response(e, route), started, route)
    except Exception:  # a bug: log it in full, answer without a traceback
        log.exception("unexpected error in %s", route.path)
        return _observed(_error_response(
            ServiceError("internal error; see the server log"), route), started, route)
    elapsed = time.perf_counter() - started
    if route.timed:
        result["processing_time_ms"] = round(elapsed * 1000, 3)
    route.items.observe(len(result[route.items_key]))
    return _observed(SafeJSONResponse(result), started, route)


def _observed(response: JSONResponse, started: float, route: _Route) -> JSONResponse:
    route.requests.labels(str(response.status_code)).inc()
    route.seconds.observe(time.perf_counter() - started)
    return response


@app.post("/similarity", response_model=SimilarityResponse, responses=_ERROR_RESPONSES,
          openapi_extra={"requestBody": {"required": True, "content": {
              "application/json": {"schema": _inline_refs(
                  SimilarityRequest.model_json_schema())}}}})
async def similarity(request: Request) -> JSONResponse:
    """DreamSim distance and similarity for each image pair, in request order."""
    return await _serve(request, _SIMILARITY)


@app.post("/embed", response_model=EmbedResponse, responses=_ERROR_RESPONSES,
          openapi_extra={"requestBody": {"required": True, "content": {
              "application/json": {"schema": _inline_refs(
                  EmbedRequest.model_json_schema())}}}})
async def embed(request: Request) -> JSONResponse:
    """The normalised DreamSim embedding of each image, in request order."""
    return await _serve(request, _EMBED)


_OPENAI_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": openai_api.OpenAIErrorResponse}
    for code in (404, 408, 413, 422, 429, 502, 503, 504)
}


@app.post(openai_api.EMBEDDINGS_PATH, response_model=openai_api.OpenAIEmbeddingResponse,
          responses=_OPENAI_ERRORS,
          openapi_extra={"requestBody": {"required": True, "content": {
              "application/json": {"schema": _inline_refs(
                  openai_api.OpenAIEmbeddingRequest.model_json_schema())}}}})
async def openai_embeddings(request: Request) -> JSONResponse:
    """OpenAI-compatible embeddings of images: POST /embed in OpenAI's shape."""
    return await _serve(request, _OPENAI)


@app.get(openai_api.MODELS_PATH, response_model=openai_api.OpenAIModelList,
         responses={code: {"model": openai_api.OpenAIErrorResponse} for code in (502, 503, 504)})
async def openai_models() -> JSONResponse:
    """OpenAI's model list: the DreamSim variant served, with its embedding size."""
    try:
        if _service is None:
            raise PredictorUnavailable("the service is starting", retry_after_s=5)
        info = await _service._model_info()
        body = openai_api.model_list(model_type=info["model_type"], dim=info["embedding_dim"],
                                     max_images=_service.settings.max_images_per_request)
    except ServiceError as e:
        return _error_response(e, _OPENAI)
    return SafeJSONResponse(body)


@app.get("/health", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
async def health() -> JSONResponse:
    """Whether a request would be served now, and by what model on what device."""
    if _service is None:
        body = HealthResponse(status="unavailable", model_loaded=False, device=None,
                              model_type=None)
        return JSONResponse(body.model_dump(), status_code=503)
    ready, body = await _service.health()
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


class TransformerModelServer(ModelServer):
    """KServe's ``ModelServer`` whose HTTP connections are bounded (``http_guard.py``):
    uvicorn's httptools protocol replaced by the guarded one in KServe's uvicorn config."""

    def __init__(self, *, settings: TransformerSettings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._limits = HeadLimits(timeout_s=settings.header_timeout,
                                  max_bytes=settings.max_header_bytes,
                                  max_count=settings.max_header_count,
                                  max_connections=settings.max_connections)

    async def _serve(self) -> None:
        # ModelServer.start made the REST server (its uvicorn config not loaded yet) and
        # queued its start; the protocol class is read when uvicorn loads the config.
        assert self._rest_server is not None, "the transformer runs one worker"
        self._rest_server.config.http = guarded_protocol(self._limits)
        await super()._serve()


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m transformer --predictor_host HOST:PORT [kserve flags]``."""
    parser = argparse.ArgumentParser(parents=[kserve_model_server.parser],
                                     description="DreamSim transformer (public API)")
    parser.set_defaults(model_name=MODEL_NAME, predictor_protocol="grpc-v2", enable_grpc=False)
    args, _ = parser.parse_known_args(argv)
    try:
        settings = TransformerSettings()
    except ValidationError as e:
        logging.basicConfig(format=logs.TEXT_FORMAT)
        log.error("invalid configuration: %s", e)
        return 2
    logs.configure(settings)
    if not args.predictor_host:
        log.error("--predictor_host HOST:PORT (the predictor's gRPC address) is required")
        return 2
    if args.predictor_protocol != "grpc-v2":
        log.error("only --predictor_protocol grpc-v2 is supported, got %r", args.predictor_protocol)
        return 2
    if args.workers != 1:
        # KServe sets the predictor config before forking workers; they would not see it.
        log.error("the transformer runs exactly one worker; got --workers %d", args.workers)
        return 2
    service = SimilarityTransformer(args.model_name, settings, predictor_host=args.predictor_host,
                                    use_ssl=args.predictor_use_ssl)
    service.load()
    set_service(service)
    log.info("transformer for model %r on :%d, predictor at %s (grpc-v2)",
             args.model_name, args.http_port, args.predictor_host)
    TransformerModelServer(settings=settings, http_port=args.http_port,
                           grpc_port=args.grpc_port, workers=1, enable_grpc=args.enable_grpc,
                           grace_period=settings.shutdown_grace_period).start([service])
    return 0


if __name__ == "__main__":
    sys.exit(main())

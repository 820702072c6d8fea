"""The transformer as a KServe model server.

``SimilarityTransformer`` is a ``kserve.Model`` whose pipeline takes a request already
parsed, with its kind (``transformer.requests``: ``/similarity`` pairs, ``/embed`` images,
OpenAI's ``/v1/embeddings``). ``preprocess`` plans the distinct images, takes what it can
from the embedding cache, fetches and decodes the rest and *starts the inference*: the
decoded images go to the predictor over gRPC v2 (raw contents) in chunks while the others
still decode (``pipeline.ChunkSender``). ``predict`` waits for those answers (and caches
them), ``postprocess`` renders the answer of the request's kind. ``routes.admit`` holds a
request under every request-level limit around all of it. The public routes are in
``transformer.routes`` (``create_app``, ``admit``); ``main`` starts the server.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from kserve import Model, ModelServer
from kserve import model_server as kserve_model_server
from pydantic import ValidationError

from service_common import logs, wire

from . import access_log, metrics
from .admission import Admission, ByteBudget
from .cache import EmbeddingCache, partition_of
from .decoders import warm_up as warm_up_decoders
from .errors import ModelChanged, PredictorFailed, ServiceError
from .fetch import make_client
from .http_guard import HeadLimits, guarded_protocol
from .inputs import ImageLoader, LoadedImages
from .netguard import Resolver
from .pipeline import ChunkSender
from .predictor_client import Embeddings, PredictorClient
from .requests import Parsed, Plan
from .resize import warm_up as warm_up_resize
from .routes import CACHE_CLIENT, create_app
from .schemas import HealthResponse
from .settings import TransformerSettings

log = logging.getLogger("transformer")

MODEL_NAME = wire.MODEL_NAME  # re-exported: the name the KServe model is served under


@dataclass
class Batch:
    """A request on its way through the pipeline."""

    parsed: Parsed[Any]  # the request and its kind
    plan: Plan
    images: LoadedImages
    model_identity: str | None  # the cache keys' model identity
    embeddings: np.ndarray | None = None


class SimilarityTransformer(Model):
    """kserve transformer: a parsed request in (image pairs, or images), its answer out
    (DreamSim scores, or embeddings).

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
        self._info_at = -INFO_MAX_AGE_S  # monotonic time of the last report

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

    async def preprocess(self, payload: Parsed[Any],
                         headers: dict[str, str] | None = None) -> Batch:
        """Plan, fetch, decode, and start the inference: the batch, its embeddings coming.

        ``payload`` was parsed (validated, with its kind) once, by ``routes.admit``. In
        order: the kind's check (``/v1/embeddings``: the model name, before any image is
        touched), the plan of distinct images, the cache's embeddings, and the fetching
        and decoding of the rest, each decoded image handed to a ``ChunkSender`` that sends
        the predictor a chunk whenever one is full, while the rest still decode: inference
        starts here. ``predict`` collects the answers.
        """
        await payload.check(self._model_info)
        plan = payload.plan()
        access_log.note(**payload.log_fields(), images=len(plan.inputs))  # distinct images
        identity = None
        partition = partition_of(self.settings.embedding_cache_scope,
                                 (headers or {}).get(CACHE_CLIENT))
        if self.cache.enabled and plan.inputs and partition is not None:
            # The cache is read under the model identity the predictor last reported (every
            # answer carries it), when that report is at most MODEL_IDENTITY_MAX_AGE_S old;
            # else an empty batch (no model run) asks which model answers now. Nothing
            # reliably says that a predictor was replaced between two answers (a reconnect
            # goes unseen by the channel pool until it picks the channel; under round_robin
            # a channel stays READY while a subchannel reconnects to a new pod; behind a
            # sidecar the connection outlives the pods), so ``predict`` checks every
            # answer: one from another model than the cache was read under is not mixed
            # with the cached rows (ModelChanged: the route answers the request again).
            # What the window leaves: a request whose images are all cached, within that
            # many seconds of the old model's last answer, gets the old model's embeddings,
            # as it would have had it come that much earlier.
            if (time.monotonic() - self._info_at >= self.settings.model_identity_max_age_s
                    or "model_id" not in self.predictor_info):
                self._update_info(await self.predictor.describe(
                    timeout_s=min(5.0, self.settings.predictor_timeout)))
            identity = self.predictor_info.get("model_id")
        # Distinct images go to the predictor in chunks while the rest still decode.
        sender = ChunkSender(self._embed_chunk, chunk_images=self.settings.pipeline_chunk_images)
        try:
            images = await self.loader.load(
                plan, payload.ids(), model_identity=identity, sender=sender,
                cache_partition=partition or b"", id_field=payload.id_field)
        except BaseException:
            sender.cancel()
            raise
        return Batch(parsed=payload, plan=plan, images=images, model_identity=identity)

    async def _embed_chunk(self, pixels: np.ndarray) -> Embeddings:
        with metrics.PREDICTOR_SECONDS.time():
            return await self.predictor.embed(pixels)

    async def predict(self, payload: Batch, headers: dict[str, str] | None = None,
                      response_headers: dict[str, str] | None = None) -> Batch:
        """The embeddings of the batch's distinct images: the predictor's answers to the
        chunks ``preprocess`` sent (the last rows are sent now), put back in row order and
        cached when every answer came from the model identity the cache was read under,
        followed by the embeddings taken from the cache. No image is decoded here."""
        loaded = payload.images
        parts = []
        if loaded.sender.rows:
            results = await loaded.sender.results()
            for result in results:
                self._update_info(result.info)
            answered_by = {r.info.get("model_id") for r in results}
            if len(answered_by) > 1 or (len(loaded.cached)
                                        and answered_by != {payload.model_identity}):
                raise ModelChanged(
                    "the predictor's model changed while the request ran (a rollout?); "
                    "send it again", retry_after_s=1,
                    log_detail=f"cache read under {payload.model_identity!r}, answers from "
                               f"{sorted(map(str, answered_by))}")
            vectors = results[0].vectors if len(results) == 1 else np.concatenate(
                [r.vectors for r in results])
            if payload.model_identity and answered_by == {payload.model_identity}:
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
        """The answer's body, rendered by the request's kind: scores (or embeddings, or
        OpenAI's list) in request order, with the warnings about unknown fields
        (``processing_time_ms`` is added by the route)."""
        assert result.embeddings is not None
        return await result.parsed.render(result.plan, result.embeddings, result.images.rows,
                                          self._model_info)

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
        self._info_at = time.monotonic()

    async def health(self) -> tuple[bool, HealthResponse]:
        """Predictor readiness and what it runs.

        Device and model type come with every inference answer; when none came for
        ``INFO_MAX_AGE_S`` (an idle service, or none yet), an empty batch (no model run)
        asks for them: a predictor replaced by one of another variant (helm upgrade of the
        model type) must not be reported as the old one (seen on the cluster lab: /health
        said dino_vitb16 after the upgrade to clip_vitb32, until a request came).
        """
        ready = await self.predictor.is_ready()
        if ready and time.monotonic() - self._info_at >= INFO_MAX_AGE_S:
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


# Seconds a predictor's report (device, model type) is trusted by /health without another
# answer; the readiness probe (every 10 s) then asks again with an empty batch.
INFO_MAX_AGE_S = 5.0

# What the predictor reports that /health passes through (additions to the contract).
_PREDICTOR_HEALTH_FIELDS = ("precision", "device_index", "gpu_name", "attention_backend")


def _warm_up_native() -> None:
    try:
        warm_up_decoders()
        warm_up_resize()
    except Exception:  # never fatal: the first request compiles instead, or fails loudly
        log.exception("warming up the native decoders failed")


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
    create_app(service)
    log.info("transformer for model %r on :%d, predictor at %s (grpc-v2)",
             args.model_name, args.http_port, args.predictor_host)
    TransformerModelServer(settings=settings, http_port=args.http_port,
                           grpc_port=args.grpc_port, workers=1, enable_grpc=args.enable_grpc,
                           grace_period=settings.shutdown_grace_period).start([service])
    return 0


if __name__ == "__main__":
    sys.exit(main())

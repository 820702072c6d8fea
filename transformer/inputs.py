"""From request strings to what the predictor must embed: parse, fetch, decode, concurrently.

Base64 parsing and decoding run in a thread pool (Pillow releases the GIL while it
decodes and resizes), URLs are fetched concurrently with a global bound; both are shared
fairly between requests (``fairness.py``: a per-request bound on fetches, round-robin
between requests for the decode threads); every failure is collected so that the client
learns about all of them in one answer. Inputs are identified by a hash of their bytes, not
by the string that carried them: the same image as base64 with or without line breaks or
padding, as a data URI or from a URL is decoded once, and while it is being decoded every
other request for the same bytes waits for that one decode instead of starting its own
(per cache partition). Images whose embedding is in the cache are not decoded; images that
decode to the same pixels are embedded once. Decoding holds memory from the request's and
the pod's budgets (:mod:`.decodebudget`). Each distinct image is handed to a
``ChunkSender`` as soon as it is decoded, so that the predictor can start on the first
chunk while the rest decode.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal, Protocol

import httpx
import numpy as np

from . import budget, fairness, metrics
from .cache import EmbeddingCache, cache_key
from .decodebudget import MemoryBudget, reserved
from .errors import ImageErrors
from .fetch import FetchError, fetch_image_bytes
from .images import ImageInputError, decode_image, parse_image_input
from .pipeline import ChunkSender
from .schemas import ErrorItem, PairId
from .settings import TransformerSettings

log = logging.getLogger("transformer.inputs")

URL_FETCH_DISABLED = "URL inputs are disabled on this service (URL_FETCH_ENABLED=false)"


class InputPlan(Protocol):
    """A request's distinct image strings and who uses them (pairs or single images)."""

    @property
    def inputs(self) -> list[str]: ...

    @property
    def uses(self) -> list[list[tuple[int, str]]]: ...


@dataclass(frozen=True)
class _Source:
    """One distinct input: its cache key, and its pixels (with their digest) or its cached
    embedding."""

    key: bytes | None
    pixels: np.ndarray | None = None
    digest: bytes = b""
    embedding: np.ndarray | None = None


@dataclass(frozen=True)
class LoadedImages:
    """What a request needs from the predictor, and how to read the answer.

    Attributes:
        sender: the distinct decoded images (``sender.rows`` of them), sent or to be sent
            to the predictor in row order.
        keys: per row of ``sender``, its cache key (None: not cached).
        cached: ``[C, D]`` embeddings found in the cache (``[0, 0]`` when none).
        rows: per input of the plan, its row in ``concat(embeddings of sender, cached)``.
    """

    sender: ChunkSender[Any]
    keys: list[bytes | None]
    cached: np.ndarray
    rows: list[int]


class _Rows:
    """Assigns rows as images finish decoding: pixel-identical images share a row."""

    def __init__(self, sender: ChunkSender[Any]) -> None:
        self.sender = sender
        self.by_digest: dict[bytes, int] = {}
        self.keys: list[bytes | None] = []

    def add(self, source: _Source) -> int:
        assert source.pixels is not None
        row = self.by_digest.get(source.digest)
        if row is None:
            row = self.by_digest[source.digest] = self.sender.add(source.pixels)
            self.keys.append(source.key)
        return row


_HASH_ON_LOOP = 1 << 20
"""Inputs up to this size are hashed on the event loop (about 1 ms); larger on a thread."""


def content_hash(data: bytes) -> bytes:
    """What identifies an input: BLAKE2b-128 of its bytes."""
    return hashlib.blake2b(data, digest_size=16).digest()


class _Flight:
    """A decode in progress and how many loads wait for it (the last one to give up
    cancels it, so a timed-out request's queued decode still does not run)."""

    def __init__(self, task: asyncio.Future[tuple[np.ndarray, bytes]]) -> None:
        self.task = task
        self.waiters = 0


class ImageLoader:
    """Loads the distinct images of a request.

    Args:
        settings: size, pixel and time limits.
        executor: where parsing and decoding run.
        client: the shared HTTP client for URL inputs.
        cache: embeddings already computed (may be disabled).
    """

    def __init__(self, settings: TransformerSettings, *, executor: Executor,
                 client: httpx.AsyncClient, cache: EmbeddingCache | None = None) -> None:
        self.settings = settings
        self.executor = executor
        self.client = client
        self.cache = cache if cache is not None else EmbeddingCache(0)
        self._url_slots = asyncio.Semaphore(settings.url_fetch_concurrency)
        self._threads = fairness.FairExecutor(executor, workers=settings.decode_workers)
        self._decode_memory = MemoryBudget(settings.max_decodes_in_flight_bytes,
                                           what="the service", setting="MAX_DECODES_IN_FLIGHT_MB")
        self._decoding: dict[tuple[bytes, bytes], _Flight] = {}  # (partition, content hash)

    async def _fetch(self, url: str) -> bytes:
        # The request's budget (when there is one) counts every byte received; waiting for
        # a fetch slot counts against its deadline, which the route enforces.
        spent = budget.current()
        share = fairness.current()
        async with (share.fetch_slots if share is not None else contextlib.nullcontext()), \
                self._url_slots:
            started = time.perf_counter()
            try:
                return await fetch_image_bytes(
                    self.client, url, timeout_s=self.settings.url_fetch_timeout,
                    max_bytes=self.settings.max_image_bytes,
                    max_redirects=self.settings.url_max_redirects,
                    on_bytes=spent.spend_fetched if spent is not None else None)
            finally:
                metrics.FETCH_SECONDS.observe(time.perf_counter() - started)

    def _decode(self, data: bytes, memory: Sequence[MemoryBudget],
                deadline: float) -> tuple[np.ndarray, bytes]:
        """Pixels, and a digest of them (for deduplication), in a pool thread, holding the
        image's decoding memory from ``memory`` (waiting for it until ``deadline``)."""
        started = time.perf_counter()
        try:
            pixels = decode_image(data, max_pixels=self.settings.max_image_pixels,
                                  fast=self.settings.decode_mode == "fast",
                                  impl=self.settings.decode_impl,
                                  reserve=lambda n: reserved(n, memory, deadline))
            return pixels, hashlib.blake2b(pixels.data, digest_size=16).digest()
        finally:
            metrics.DECODE_SECONDS.observe(time.perf_counter() - started)

    def _landed(self, key: tuple[bytes, bytes], task: asyncio.Future[Any]) -> None:
        """Forget a finished decode (unless a newer one for the same key took its place)."""
        flight = self._decoding.get(key)
        if flight is not None and flight.task is task:
            del self._decoding[key]

    async def _decode_once(self, data: bytes, content: bytes, partition: bytes,
                           memory: Sequence[MemoryBudget]) -> tuple[np.ndarray, bytes]:
        """``_decode(data)``, shared with every load of the same bytes (and partition)
        that starts while it runs."""
        key = (partition, content)
        flight = self._decoding.get(key)
        if flight is None or flight.task.cancelled():  # none, or given up by all its waiters
            spent = budget.current()
            deadline = (spent.deadline if spent is not None
                        else time.monotonic() + self.settings.request_timeout)
            # the decode threads in its request's turn (fairness.py); shared with every
            # waiter of the same bytes
            task = asyncio.ensure_future(self._threads.run(self._decode, data, memory,
                                                           deadline))
            flight = self._decoding[key] = _Flight(task)
            task.add_done_callback(partial(self._landed, key))
        flight.waiters += 1
        try:
            return await asyncio.shield(flight.task)
        finally:
            flight.waiters -= 1
            if flight.waiters == 0 and not flight.task.done():
                flight.task.cancel()

    async def _load_one(self, value: str, model_identity: str | None,
                        partition: bytes, memory: Sequence[MemoryBudget]) -> _Source:
        s = self.settings
        try:
            ref = await self._threads.run(
                partial(parse_image_input, value, max_bytes=s.max_image_bytes))
            if ref.url is not None:
                if not s.url_fetch_enabled:
                    raise ImageInputError(URL_FETCH_DISABLED)
                try:
                    data = await self._fetch(ref.url)
                except FetchError as e:
                    if e.detail:  # internal names and addresses: the log, not the client
                        log.info("URL refused: %s (URL %s)", e.detail[:300], ref.url[:200])
                    raise ImageInputError(f"{e.reason} (URL {ref.url[:200]})") from None
            else:
                assert ref.data is not None
                data = ref.data
        except (ValueError, UnicodeError) as e:  # a hostile string no check foresaw
            if isinstance(e, ImageInputError):
                raise
            raise ImageInputError(f"unusable image reference: {str(e)[:200]}") from None
        content = (content_hash(data) if len(data) <= _HASH_ON_LOOP
                   else await asyncio.to_thread(content_hash, data))
        key = None
        if self.cache.enabled and model_identity:
            key = cache_key(model_identity, content, partition)
            cached = self.cache.get(key)
            (metrics.CACHE_HITS if cached is not None else metrics.CACHE_MISSES).inc()
            if cached is not None:
                return _Source(key=key, embedding=cached)
        pixels, digest = await self._decode_once(data, content, partition, memory)
        return _Source(key=key, pixels=pixels, digest=digest)

    async def load(self, plan: InputPlan, pair_ids: Sequence[PairId], *,
                   model_identity: str | None = None, cache_partition: bytes = b"",
                   sender: ChunkSender[Any] | None = None,
                   id_field: Literal["pair_id", "id"] = "pair_id") -> LoadedImages:
        """Fetch and decode every input of ``plan``, or take it from the cache.

        Args:
            plan: the request's distinct inputs and who uses them.
            pair_ids: the ids of the pairs (or images), for the error items.
            model_identity: the predictor's model identity; None disables the cache.
            cache_partition: the client's cache partition (``cache.partition_of``).
            sender: receives each distinct decoded image as soon as it is ready (it may
                start embedding); by default one that only collects them.
            id_field: the error items' field that carries the id (``id`` for /embed).

        Raises:
            ImageErrors: listing each failing (pair or image, field), when any input fails.
        """
        rows = _Rows(sender if sender is not None else ChunkSender(None, chunk_images=0))
        memory = (MemoryBudget(self.settings.max_request_decode_bytes, what="one request",
                               setting="MAX_REQUEST_DECODE_MB"), self._decode_memory)

        async def load_one(value: str) -> tuple[str, int, np.ndarray | None]:
            source = await self._load_one(value, model_identity, cache_partition, memory)
            if source.pixels is not None:  # on the event loop: no race between digests
                return "pixels", rows.add(source), None
            return "cached", 0, source.embedding

        # One share per request: its fetches are bounded, its decodes take turns with
        # other requests' (the tasks gather starts inherit the share).
        with fairness.sharing(fairness.Share(fetches=self.settings.url_fetch_per_request)):
            results = await asyncio.gather(*(load_one(value) for value in plan.inputs),
                                           return_exceptions=True)
        errors: list[ErrorItem] = []
        for result, uses in zip(results, plan.uses, strict=True):
            if isinstance(result, ImageInputError):
                metrics.IMAGES.labels("rejected").inc()
                errors.extend(ErrorItem(index=i, field=field, reason=result.reason,
                                        **{id_field: pair_ids[i]}) for i, field in uses)
            elif isinstance(result, BaseException):
                raise result
        if errors:
            errors.sort(key=lambda e: (e.index or 0, e.field != "reference_image"))
            if id_field == "id":
                raise ImageErrors(f"{len(errors)} image(s) could not be used", errors)
            pairs = len({e.index for e in errors})
            raise ImageErrors(f"{len(errors)} image(s) in {pairs} pair(s) could not be used",
                              errors)
        slots = [r for r in results if isinstance(r, tuple)]
        cached = [embedding for kind, _, embedding in slots
                  if kind == "cached" and embedding is not None]
        decoded = rows.sender.rows
        metrics.IMAGES.labels("decoded").inc(decoded)
        metrics.IMAGES.labels("cached").inc(len(cached))
        order = iter(range(decoded, decoded + len(cached)))
        return LoadedImages(
            sender=rows.sender, keys=rows.keys,
            cached=np.stack(cached) if cached else np.empty((0, 0), np.float32),
            rows=[row if kind == "pixels" else next(order) for kind, row, _ in slots])

"""From request strings to what the predictor must embed: parse, fetch, decode, concurrently.

Base64 parsing and decoding run in a thread pool (Pillow releases the GIL while it
decodes and resizes), URLs are fetched concurrently with a global bound; every failure is
collected so that the client learns about all of them in one answer. Images whose
embedding is in the cache are not decoded; images that decode to the same pixels are
embedded once.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from functools import partial

import httpx
import numpy as np

from . import metrics
from .cache import EmbeddingCache, cache_key
from .errors import ImageErrors
from .fetch import FetchError, fetch_image_bytes
from .images import IMAGE_SIZE, ImageInputError, decode_image, parse_image_input
from .schemas import ErrorItem, PairId
from .scoring import PairPlan
from .settings import TransformerSettings

URL_FETCH_DISABLED = "URL inputs are disabled on this service (URL_FETCH_ENABLED=false)"


@dataclass(frozen=True)
class _Source:
    """One distinct input: its cache key, and its pixels or its cached embedding."""

    key: bytes | None
    pixels: np.ndarray | None = None
    embedding: np.ndarray | None = None


@dataclass(frozen=True)
class LoadedImages:
    """What a request needs from the predictor, and how to read the answer.

    Attributes:
        pixels: ``[U, 3, 224, 224]`` uint8, the distinct images to embed.
        keys: per row of ``pixels``, its cache key (None: not cached).
        cached: ``[C, D]`` embeddings found in the cache (``[0, 0]`` when none).
        rows: per input of the plan, its row in ``concat(embed(pixels), cached)``.
    """

    pixels: np.ndarray
    keys: list[bytes | None]
    cached: np.ndarray
    rows: list[int]


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

    async def _fetch(self, url: str) -> bytes:
        async with self._url_slots:
            started = time.perf_counter()
            try:
                return await fetch_image_bytes(self.client, url,
                                               timeout_s=self.settings.url_fetch_timeout,
                                               max_bytes=self.settings.max_image_bytes,
                                               max_redirects=self.settings.url_max_redirects)
            finally:
                metrics.FETCH_SECONDS.observe(time.perf_counter() - started)

    def _decode(self, data: bytes) -> np.ndarray:
        started = time.perf_counter()
        try:
            return decode_image(data, max_pixels=self.settings.max_image_pixels,
                                fast=self.settings.decode_mode == "fast")
        finally:
            metrics.DECODE_SECONDS.observe(time.perf_counter() - started)

    async def _load_one(self, value: str, model_identity: str | None) -> _Source:
        loop = asyncio.get_running_loop()
        s = self.settings
        try:
            ref = await loop.run_in_executor(
                self.executor, partial(parse_image_input, value, max_bytes=s.max_image_bytes))
            if ref.url is not None:
                if not s.url_fetch_enabled:
                    raise ImageInputError(URL_FETCH_DISABLED)
                try:
                    data = await self._fetch(ref.url)
                except FetchError as e:
                    raise ImageInputError(f"{e.reason} (URL {ref.url[:200]})") from None
            else:
                assert ref.data is not None
                data = ref.data
        except (ValueError, UnicodeError) as e:  # a hostile string no check foresaw
            if isinstance(e, ImageInputError):
                raise
            raise ImageInputError(f"unusable image reference: {str(e)[:200]}") from None
        key = None
        if self.cache.enabled and model_identity:
            key = cache_key(model_identity, data)
            cached = self.cache.get(key)
            (metrics.CACHE_HITS if cached is not None else metrics.CACHE_MISSES).inc()
            if cached is not None:
                return _Source(key=key, embedding=cached)
        pixels = await loop.run_in_executor(self.executor, self._decode, data)
        return _Source(key=key, pixels=pixels)

    async def load(self, plan: PairPlan, pair_ids: Sequence[PairId], *,
                   model_identity: str | None = None) -> LoadedImages:
        """Fetch and decode every input of ``plan``, or take it from the cache.

        Args:
            plan: the request's distinct inputs and who uses them.
            pair_ids: for the error items.
            model_identity: the predictor's model identity; None disables the cache.

        Raises:
            ImageErrors: listing each failing (pair, field), when any input fails.
        """
        results = await asyncio.gather(
            *(self._load_one(value, model_identity) for value in plan.inputs),
            return_exceptions=True)
        errors: list[ErrorItem] = []
        for result, uses in zip(results, plan.uses, strict=True):
            if isinstance(result, ImageInputError):
                metrics.IMAGES.labels("rejected").inc()
                errors.extend(ErrorItem(index=i, pair_id=pair_ids[i], field=field,
                                        reason=result.reason) for i, field in uses)
            elif isinstance(result, BaseException):
                raise result
        if errors:
            errors.sort(key=lambda e: (e.index or 0, e.field != "reference_image"))
            pairs = len({e.index for e in errors})
            raise ImageErrors(f"{len(errors)} image(s) in {pairs} pair(s) could not be used",
                              errors)
        sources = [r for r in results if isinstance(r, _Source)]
        return _assemble(sources)


def _assemble(sources: list[_Source]) -> LoadedImages:
    """Rows for decoded images first (pixel-identical ones share a row), cached after."""
    by_pixels: dict[bytes, int] = {}
    pixels: list[np.ndarray] = []
    keys: list[bytes | None] = []
    cached: list[np.ndarray] = []
    slot: list[tuple[str, int]] = []
    for src in sources:
        if src.pixels is not None:
            digest = hashlib.blake2b(src.pixels.tobytes(), digest_size=16).digest()
            if digest not in by_pixels:
                by_pixels[digest] = len(pixels)
                pixels.append(src.pixels)
                keys.append(src.key)
            slot.append(("pixels", by_pixels[digest]))
        else:
            assert src.embedding is not None
            slot.append(("cached", len(cached)))
            cached.append(src.embedding)
    metrics.IMAGES.labels("decoded").inc(len(pixels))
    metrics.IMAGES.labels("cached").inc(len(cached))
    rows = [i if kind == "pixels" else len(pixels) + i for kind, i in slot]
    batch = (np.stack(pixels) if pixels
             else np.empty((0, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8))
    return LoadedImages(pixels=batch, keys=keys,
                        cached=np.stack(cached) if cached else np.empty((0, 0), np.float32),
                        rows=rows)

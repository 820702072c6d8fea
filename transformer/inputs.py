"""From request strings to one uint8 batch: parse, fetch and decode, concurrently.

Base64 parsing and decoding run in a thread pool (Pillow releases the GIL while it
decodes and resizes), URLs are fetched concurrently with a global bound; every failure is
collected so that the client learns about all of them in one answer.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from concurrent.futures import Executor
from functools import partial

import httpx
import numpy as np

from .errors import ImageErrors
from .fetch import FetchError, fetch_image_bytes
from .images import IMAGE_SIZE, ImageInputError, decode_image, parse_image_input
from .schemas import ErrorItem, PairId
from .scoring import PairPlan
from .settings import TransformerSettings


class ImageLoader:
    """Loads the distinct images of a request into a ``[U, 3, 224, 224]`` uint8 array.

    Args:
        settings: size, pixel and time limits.
        executor: where parsing and decoding run.
        client: the shared HTTP client for URL inputs.
    """

    def __init__(self, settings: TransformerSettings, *, executor: Executor,
                 client: httpx.AsyncClient) -> None:
        self.settings = settings
        self.executor = executor
        self.client = client
        self._url_slots = asyncio.Semaphore(settings.url_fetch_concurrency)

    async def _fetch(self, url: str) -> bytes:
        async with self._url_slots:
            return await fetch_image_bytes(self.client, url,
                                           timeout_s=self.settings.url_fetch_timeout,
                                           max_bytes=self.settings.max_image_bytes)

    async def _load_one(self, value: str, out: np.ndarray) -> None:
        loop = asyncio.get_running_loop()
        s = self.settings
        ref = await loop.run_in_executor(
            self.executor, partial(parse_image_input, value, max_bytes=s.max_image_bytes))
        if ref.url is not None:
            try:
                data = await self._fetch(ref.url)
            except FetchError as e:
                raise ImageInputError(f"{e.reason} (URL {ref.url[:200]})") from None
        else:
            assert ref.data is not None
            data = ref.data
        out[...] = await loop.run_in_executor(
            self.executor, partial(decode_image, data, max_pixels=s.max_image_pixels))

    async def load(self, plan: PairPlan,
                   pair_ids: Sequence[PairId]) -> tuple[np.ndarray, list[int]]:
        """Decode every input of ``plan``; raise ImageErrors listing each failing pair side.

        Returns:
            The distinct decoded images ``[U, 3, 224, 224]`` and, per input of ``plan``, its
            row there: inputs that decode to the same pixels (the same image as base64 and as
            a URL, say) share one row, so they are embedded once and score exactly 0.
        """
        batch = np.empty((len(plan.inputs), 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
        results = await asyncio.gather(
            *(self._load_one(value, batch[i]) for i, value in enumerate(plan.inputs)),
            return_exceptions=True)
        errors: list[ErrorItem] = []
        for result, uses in zip(results, plan.uses, strict=True):
            if isinstance(result, ImageInputError):
                errors.extend(ErrorItem(index=i, pair_id=pair_ids[i], field=field,
                                        reason=result.reason) for i, field in uses)
            elif isinstance(result, BaseException):
                raise result
        if errors:
            errors.sort(key=lambda e: (e.index or 0, e.field != "reference_image"))
            pairs = len({e.index for e in errors})
            raise ImageErrors(f"{len(errors)} image(s) in {pairs} pair(s) could not be used",
                              errors)
        rows: dict[bytes, int] = {}
        row_of = [rows.setdefault(hashlib.blake2b(img.tobytes(), digest_size=16).digest(),
                                  len(rows)) for img in batch]
        if len(rows) == len(batch):
            return batch, row_of
        keep = [row_of.index(r) for r in range(len(rows))]
        return batch[keep], row_of

"""The client: pairs (or images) in, results out as they complete, whatever the service
answers. ``score`` follows ``POST /similarity``; ``embed`` follows ``POST /embed`` the same
way (images instead of pairs, ``MAX_IMAGES_PER_REQUEST`` instead of the pair limit).

Pairs are cut into chunks (at most ``chunk_size``, and never more than the service's
limit once a 413 has told it), ``concurrency`` chunks are in flight at once, and each
chunk is followed through to one result per pair. With ``target_request_s`` set, the
chunk adapts to the service's speed: it starts at ``initial_chunk_size`` pairs and, after
each scored request, becomes what the measured time per pair says fits in
``target_request_s`` (at most double the last one, never above the maximum), so that a
slow (CPU) service still returns results every few seconds instead of one large chunk
computing for a minute (work that is lost on Ctrl-C). Answers:

- 200: one score per pair, in request order;
- 413 (too many pairs or too large a body): split and sent again; the answer's ``limit``
  field (``{"setting": "MAX_PAIRS_PER_REQUEST", "value": N}``) sets the chunk size for the
  rest of the run; a 413 without it (a body too large) halves the chunk;
- 422 listing failing pairs (``index``, ``pair_id``, ``field``, ``reason``, as
  ``transformer/errors.py`` answers): those pairs become errors, the rest of the chunk is
  sent again without them;
- 429/502/503/504 and connection errors: retried (see :mod:`similarity_client.retry`);
  while one request waits out a ``Retry-After``, the others wait too instead of piling on;
- any other answer (401, 404, ...) means the URL or the service is wrong: the run stops
  with :class:`ServiceError`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import queue
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from . import inputs
from .models import ClientStats, EmbedResult, ImageId, ImageInput, Pair, PairId, PairResult
from .retry import RETRY_STATUSES, RetryPolicy, parse_retry_after

PairLike = Pair | tuple[ImageInput, ImageInput] | tuple[ImageInput, ImageInput, PairId] | dict

DEFAULT_CHUNK_SIZE = 32  # 64 images: one GPU batch at the service's BATCH_SIZE_LIMIT
INITIAL_CHUNK_SIZE = 4  # adaptive chunks start here: results within seconds even on a CPU
PROBE_EVERY_S = 10.0  # after a 429/503, one more request in flight at most this often


class ServiceError(Exception):
    """The service answered in a way no retry or split can fix (wrong URL, auth, ...)."""


@dataclass
class _Item:
    pair_id: PairId
    reference: ImageInput
    generated: ImageInput
    ref_label: str
    gen_label: str
    body: dict[str, Any] | None = None  # the encoded pair, kept for re-sends

    def result(self, **kw: Any) -> PairResult:
        return PairResult(pair_id=self.pair_id, reference=self.ref_label,
                          generated=self.gen_label, **kw)


@dataclass
class _EmbedItem:
    image_id: ImageId
    image: ImageInput
    label: str
    body: dict[str, Any] | None = None  # the encoded image, kept for re-sends

    def result(self, **kw: Any) -> EmbedResult:
        return EmbedResult(image_id=self.image_id, image=self.label, **kw)


_T = TypeVar("_T")
_R = TypeVar("_R")
_X = TypeVar("_X", _Item, _EmbedItem)


async def _aiter(values: Iterable[_T] | AsyncIterable[_T]) -> AsyncIterator[_T]:
    if isinstance(values, AsyncIterable):
        async for v in values:
            yield v
    else:
        for v in values:
            yield v


class _GiveUp(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _as_pair(value: PairLike, index: int) -> Pair:
    if isinstance(value, Pair):
        pair = value
    elif isinstance(value, dict):
        pair = Pair(value["reference"], value["generated"], value.get("pair_id"))
    elif isinstance(value, tuple | list) and len(value) in (2, 3):
        pair = Pair(*value)
    else:
        raise TypeError(f"pair {index}: expected (reference, generated[, pair_id]), a Pair "
                        f"or a dict, got {type(value).__name__}")
    if pair.pair_id is None:  # results must be identifiable: default to the position
        pair = Pair(pair.reference, pair.generated, index)
    elif isinstance(pair.pair_id, bool) or not isinstance(pair.pair_id, str | int):
        raise TypeError(f"pair {index}: pair_id must be a string or an integer (the API "
                        f"echoes nothing else), not {pair.pair_id!r}")
    return pair


def _limit(response: httpx.Response, setting: str) -> int | None:
    """The limit a 413 names in its structured ``limit`` field, if it names ``setting``
    (``MAX_PAIRS_PER_REQUEST`` or ``MAX_IMAGES_PER_REQUEST``)."""
    try:
        body = response.json()
    except ValueError:
        return None
    limit = body.get("limit") if isinstance(body, dict) else None
    if (isinstance(limit, dict) and limit.get("setting") == setting
            and type(limit.get("value")) is int):
        return int(limit["value"])
    return None


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300].strip() or response.reason_phrase
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        return str(body["detail"])
    return json.dumps(body)[:300]


class AsyncSimilarityClient:
    """Scores pairs against a running service (``POST {url}/similarity``), asynchronously.

    Args:
        url: the service's base URL, e.g. ``http://localhost:8080``.
        concurrency: requests in flight at once.
        chunk_size: pairs per request at most (lowered to the service's limit on a 413).
        timeout_s: seconds one request may take (a chunk on a CPU service takes a while).
        retry: backoff for 429/502/503/504 and connection errors.
        headers: sent with every request (e.g. an ``Authorization`` for a gateway).
        transport: an httpx transport (tests, proxies); default: a plain connection pool.
        target_request_s: adapt the chunk so that one request takes about this long
            (None: always ``chunk_size`` pairs).
        initial_chunk_size: the first adaptive chunk (only with ``target_request_s``).
    """

    def __init__(self, url: str, *, concurrency: int = 4, chunk_size: int = DEFAULT_CHUNK_SIZE,
                 timeout_s: float = 300.0, retry: RetryPolicy | None = None,
                 headers: dict[str, str] | None = None,
                 transport: httpx.AsyncBaseTransport | None = None,
                 target_request_s: float | None = None,
                 initial_chunk_size: int = INITIAL_CHUNK_SIZE) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")
        self.url = url.rstrip("/")
        self.concurrency = concurrency
        self.chunk_size = chunk_size
        if target_request_s is not None and target_request_s <= 0:
            raise ValueError("target_request_s must be > 0")
        self.target_request_s = target_request_s
        # The adaptive chunk size (pairs); None: fixed chunks of chunk_size.
        self._adaptive: float | None = (
            float(max(1, min(initial_chunk_size, chunk_size)))
            if target_request_s is not None else None)
        self.retry = retry or RetryPolicy()
        self.stats = ClientStats(lowest_concurrency=concurrency)
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=10.0), headers=headers,
            transport=transport,
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency))
        self._pause_until = 0.0  # monotonic time before which no request is sent
        # Requests allowed in flight now: halved on 429/503 (the service is saturated, and
        # more retries in parallel would only lose the race for its slots again), grown
        # back by one per window of successes (AIMD, as TCP does), but only up to a ceiling
        # that rises by one every PROBE_EVERY_S without a 429/503: probing above what the
        # service takes costs a retry each time, so it is done rarely.
        self._window = float(concurrency)
        self._ceiling = float(concurrency)
        self._ceiling_checked = 0.0
        self._in_flight = 0
        self._flow = asyncio.Condition()

    async def __aenter__(self) -> AsyncSimilarityClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    @property
    def effective_chunk_size(self) -> int:
        limit = self.stats.pair_limit
        return min(self.chunk_size, limit) if limit else self.chunk_size

    @property
    def effective_embed_chunk_size(self) -> int:
        limit = self.stats.image_limit
        return min(2 * self.chunk_size, limit) if limit else 2 * self.chunk_size

    @property
    def next_chunk_size(self) -> int:
        """Pairs in the next request: the effective maximum, or less while adapting."""
        size = self.effective_chunk_size
        if self._adaptive is not None:
            size = max(1, min(size, int(self._adaptive)))
        return size

    def _learn_speed(self, pairs: int, seconds: float) -> None:
        """After a scored request of ``pairs`` that took ``seconds``: the chunk that the
        measured time per pair fits in the target, growing at most twofold at a time."""
        if self._adaptive is None or self.target_request_s is None or pairs < 1:
            return
        per_pair = max(seconds, 1e-6) / pairs
        ideal = self.target_request_s / per_pair
        self._adaptive = max(1.0, min(ideal, 2.0 * pairs, float(self.effective_chunk_size)))

    async def score(self, pairs: Iterable[PairLike] | AsyncIterable[PairLike]
                    ) -> AsyncIterator[PairResult]:
        """Score ``pairs``; yields one :class:`PairResult` per pair as chunks complete.

        Each pair is ``(reference, generated[, pair_id])``, a :class:`Pair` or a dict with
        those keys; a side is a path, bytes, a PIL image, or an http(s) URL/data URI (passed
        to the service as is). Without a ``pair_id`` a pair is identified by its position.

        Raises:
            ServiceError: the service answered with an error no retry can fix.
        """
        async def items() -> AsyncIterator[_Item]:
            index = 0
            async for raw in _aiter(pairs):
                pair = _as_pair(raw, index)
                index += 1
                yield _Item(pair.pair_id, pair.reference, pair.generated,
                            inputs.label(pair.reference), inputs.label(pair.generated))

        async for result in self._pipeline(items(), lambda: self.next_chunk_size,
                                           self._score_chunk):
            yield result

    async def embed(self, images: Iterable[tuple[ImageId, ImageInput]]
                    | AsyncIterable[tuple[ImageId, ImageInput]]
                    ) -> AsyncIterator[EmbedResult]:
        """Embed ``images`` (``POST /embed``); yields one :class:`EmbedResult` per image as
        chunks complete (in completion order), with the same chunking, concurrency,
        retries and per-image errors as :meth:`score`.

        Each image is ``(image_id, image)``: the id names the result, the image is a path,
        bytes, a PIL image or a URL/data URI (passed through). Chunks hold up to twice
        ``chunk_size`` images (a pair is two images), lowered to the service's
        ``MAX_IMAGES_PER_REQUEST`` when a 413 names it.

        Raises:
            ServiceError: the service answered with an error no retry can fix.
        """
        async def items() -> AsyncIterator[_EmbedItem]:
            async for image_id, image in _aiter(images):
                yield _EmbedItem(image_id, image, inputs.label(image))

        async for result in self._pipeline(items(), lambda: self.effective_embed_chunk_size,
                                           self._embed_chunk):
            yield result

    async def _pipeline(self, items: AsyncIterator[_T], chunk_size: Callable[[], int],
                        process: Callable[[list[_T]], AsyncIterator[_R]]) -> AsyncIterator[_R]:
        """Items processed by ``process`` in chunks, ``concurrency`` chunks at once; its
        results are yielded as they come.

        Items, not chunks, are queued: a worker cuts its chunk when it is ready to send it,
        at ``chunk_size()`` as learned from the requests answered so far (adaptive chunks,
        a limit from a 413), taking what is queued now without waiting for more.
        """
        work: asyncio.Queue[_T | None] = asyncio.Queue(
            maxsize=2 * self.chunk_size * (self.concurrency + 1))
        results: asyncio.Queue[_R | BaseException | None] = asyncio.Queue()

        async def produce() -> None:
            async for item in items:
                await work.put(item)
            for _ in range(self.concurrency):
                await work.put(None)

        async def worker() -> None:
            last = False
            while not last and (first := await work.get()) is not None:
                chunk = [first]
                while len(chunk) < chunk_size():
                    try:
                        item = work.get_nowait()
                    except asyncio.QueueEmpty:
                        break
                    if item is None:  # this worker's end: send what it has, then stop
                        last = True
                        break
                    chunk.append(item)
                async for result in process(chunk):
                    results.put_nowait(result)

        async def run() -> None:
            # The producer and the workers side by side: the first failure stops them all
            # (a producer blocked on a full queue must not outlive the workers).
            tasks = [asyncio.create_task(produce())]
            tasks += [asyncio.create_task(worker()) for _ in range(self.concurrency)]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                for task in done:
                    if (error := task.exception()) is not None:
                        raise error
                results.put_nowait(None)
            except Exception as e:  # handed to the consumer, raised there
                results.put_nowait(e)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

        runner = asyncio.create_task(run())
        try:
            while (item := await results.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)

    async def _encode(self, chunk: list[_Item]) -> tuple[list[_Item], list[PairResult]]:
        """Encode each side not yet encoded (file reads off the event loop); pairs whose
        input cannot be sent become errors here, without a request."""
        def encode_all() -> tuple[list[_Item], list[PairResult]]:
            ready, failed = [], []
            for item in chunk:
                if item.body is not None:
                    ready.append(item)
                    continue
                body: dict[str, Any] = {"pair_id": item.pair_id}
                for field, value in (("reference_image", item.reference),
                                     ("generated_image", item.generated)):
                    try:
                        body[field] = inputs.encode(value)
                    except inputs.InputError as e:
                        failed.append(item.result(error=e.reason, field=field))
                        break
                else:
                    item.body = body
                    ready.append(item)
            return ready, failed

        return await asyncio.to_thread(encode_all)

    async def _score_chunk(self, chunk: list[_Item]) -> AsyncIterator[PairResult]:
        ready, failed = await self._encode(chunk)
        for result in failed:
            yield result
        pending = [ready] if ready else []
        while pending:
            part = pending.pop(0)
            limit = self.next_chunk_size
            if len(part) > limit:  # a limit learned (or a smaller chunk) while this waited
                pending[:0] = [part[i:i + limit] for i in range(0, len(part), limit)]
                continue
            body = json.dumps({"pairs": [item.body for item in part]}).encode()
            try:
                response = await self._post("/similarity", body, len(part))
            except _GiveUp as e:
                for item in part:
                    yield item.result(error=e.reason, field=None, retryable=True)
                continue
            if response.status_code == 200:
                for result in self._scores(part, response):
                    yield result
            elif response.status_code == 413:
                parts, too_large = self._split(part, response, "MAX_PAIRS_PER_REQUEST")
                for result in too_large:
                    yield result
                pending[:0] = parts
            elif response.status_code == 422:
                named, rest = self._pair_errors(part, response)
                for result in named:
                    yield result
                if rest:
                    self.stats.resent += 1
                    pending.insert(0, rest)
            else:
                raise ServiceError(f"POST {self.url}/similarity answered HTTP "
                                   f"{response.status_code}: {_detail(response)}")

    async def _embed_chunk(self, chunk: list[_EmbedItem]) -> AsyncIterator[EmbedResult]:
        """One chunk of images through ``POST /embed``, followed to one result each
        (413: split; 422: the images it names fail, the rest is sent again)."""
        def encode_all() -> tuple[list[_EmbedItem], list[EmbedResult]]:
            ready, failed = [], []
            for item in chunk:
                try:
                    item.body = {"image": inputs.encode(item.image)}
                except inputs.InputError as e:
                    failed.append(item.result(error=e.reason, field="image"))
                else:
                    ready.append(item)
            return ready, failed

        ready, failed = await asyncio.to_thread(encode_all)
        for result in failed:
            yield result
        pending = [ready] if ready else []
        while pending:
            part = pending.pop(0)
            limit = self.effective_embed_chunk_size
            if len(part) > limit:
                pending[:0] = [part[i:i + limit] for i in range(0, len(part), limit)]
                continue
            # ids are positions in this request: the answer is checked against them
            images = [{**item.body, "id": i} for i, item in enumerate(part)
                      if item.body is not None]
            body = json.dumps({"images": images, "encoding": "base64"}).encode()
            try:
                response = await self._post("/embed", body, len(part), images=True)
            except _GiveUp as e:
                for item in part:
                    yield item.result(error=e.reason, field=None, retryable=True)
                continue
            if response.status_code == 200:
                for result in self._embeddings(part, response):
                    yield result
            elif response.status_code == 413:
                parts, too_large = self._split(part, response, "MAX_IMAGES_PER_REQUEST")
                for result in too_large:
                    yield result
                pending[:0] = parts
            elif response.status_code == 422:
                named, rest = self._pair_errors(part, response)
                for result in named:
                    yield result
                if rest:
                    self.stats.resent += 1
                    pending.insert(0, rest)
            else:
                raise ServiceError(f"POST {self.url}/embed answered HTTP "
                                   f"{response.status_code}: {_detail(response)}")

    def _embeddings(self, part: list[_EmbedItem], response: httpx.Response
                    ) -> list[EmbedResult]:
        try:
            answer = response.json()
            embeddings = answer["embeddings"]
            model_type, dim = str(answer["model_type"]), int(answer["dim"])
            assert len(embeddings) == len(part), f"{len(embeddings)} embeddings for {len(part)}"
            out = []
            for i, (item, e) in enumerate(zip(part, embeddings, strict=True)):
                assert e.get("id") == i, "id not echoed in order"
                vector = base64.b64decode(e["embedding"], validate=True)
                assert len(vector) == 4 * dim, f"{len(vector)} bytes for dim {dim}"
                out.append(item.result(embedding=vector, model_type=model_type))
            return out
        except (ValueError, KeyError, TypeError, AssertionError, binascii.Error) as e:
            raise ServiceError(f"/embed answered 200 with an unexpected body: {e}") from None

    async def _post(self, path: str, body: bytes, count: int, *, images: bool = False
                    ) -> httpx.Response:
        """One request of ``count`` pairs (or images), retried on 429/502/503/504 and
        connection errors."""
        retry = 0
        while True:
            wait = self._pause_until - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self.stats.requests += 1
            if images:
                self.stats.images_sent += count
            else:
                self.stats.pairs_sent += count
            self.stats.largest_request = max(self.stats.largest_request, count)
            retry_after: float | None = None
            try:
                response = await self._send(path, body, 0 if images else count)
            except httpx.TransportError as e:
                cause = type(e).__name__
                reason = f"{cause}: {e}" if str(e) else cause
            else:
                if response.status_code not in RETRY_STATUSES:
                    self._grow_window()
                    return response
                if response.status_code in (429, 503):
                    self._shrink_window()
                cause = f"HTTP {response.status_code}"
                reason = f"{cause}: {_detail(response)}"
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
            retry += 1
            if retry > self.retry.max_retries:
                raise _GiveUp(f"gave up after {self.retry.max_retries} retries; last: {reason}")
            self.stats.retries[cause] += 1
            delay = self.retry.delay(retry, retry_after)
            if retry_after is not None:  # the service asked everyone to wait
                self._pause_until = max(self._pause_until, time.monotonic() + delay)
            await asyncio.sleep(delay)

    def _shrink_window(self) -> None:
        self._window = max(1.0, self._window / 2)
        self._ceiling = self._window
        self._ceiling_checked = time.monotonic()
        self.stats.lowest_concurrency = min(self.stats.lowest_concurrency, int(self._window))

    def _grow_window(self) -> None:
        now = time.monotonic()
        if self._ceiling < self.concurrency and now - self._ceiling_checked > PROBE_EVERY_S:
            self._ceiling += 1
            self._ceiling_checked = now
        self._window = min(self._ceiling, self._window + 1 / self._window)

    async def _send(self, path: str, body: bytes, pairs: int = 0) -> httpx.Response:
        """POST once, when fewer than the current window of requests are in flight; a
        200's time (from sending to the answer) of ``pairs`` pairs teaches the adaptive
        chunk size."""
        async with self._flow:
            await self._flow.wait_for(lambda: self._in_flight < max(1, int(self._window)))
            self._in_flight += 1
        try:
            started = time.monotonic()
            response = await self._http.post(f"{self.url}{path}", content=body,
                                             headers={"Content-Type": "application/json"})
            if response.status_code == 200 and pairs:
                self._learn_speed(pairs, time.monotonic() - started)
            return response
        finally:
            async with self._flow:
                self._in_flight -= 1
                self._flow.notify_all()

    def _scores(self, part: list[_Item], response: httpx.Response) -> list[PairResult]:
        try:
            scores = response.json()["scores"]
            assert len(scores) == len(part), f"{len(scores)} scores for {len(part)} pairs"
            out = []
            for item, score in zip(part, scores, strict=True):
                assert score.get("pair_id") == item.pair_id, "pair_id not echoed in order"
                out.append(item.result(distance=float(score["distance"]),
                                       similarity=float(score["similarity"])))
            return out
        except (ValueError, KeyError, TypeError, AssertionError) as e:
            raise ServiceError(f"the service answered 200 with an unexpected body: {e}") from None

    def _split(self, part: list[_X], response: httpx.Response, setting: str
               ) -> tuple[list[list[_X]], list[Any]]:
        """Smaller parts after a 413: the service's limit (``setting``: pairs or images)
        if it names one, else halves. A single item refused as too large is its error."""
        detail = _detail(response)
        limit = _limit(response, setting)
        size = len(part) // 2
        if limit is not None:
            if limit < 1:
                raise ServiceError(f"the service accepts nothing at all: {detail}")
            attr = "pair_limit" if setting == "MAX_PAIRS_PER_REQUEST" else "image_limit"
            learned = min(limit, getattr(self.stats, attr) or limit)
            setattr(self.stats, attr, learned)
            if learned < len(part):
                size = learned
        if size < 1:
            field = "pair" if isinstance(part[0], _Item) else "image"
            return [], [part[0].result(error=f"refused as too large (HTTP 413): {detail}",
                                       field=field)]
        self.stats.splits += 1
        return [part[i:i + size] for i in range(0, len(part), size)], []

    def _pair_errors(self, part: list[_X], response: httpx.Response
                     ) -> tuple[list[Any], list[_X]]:
        """The pairs (or images) a 422 names become errors; the others are returned to be
        sent again."""
        detail = _detail(response)
        try:
            errors = response.json().get("errors") or []
        except (ValueError, AttributeError):
            errors = []
        by_index: dict[int, tuple[str | None, str]] = {}
        for err in errors:
            index = err.get("index") if isinstance(err, dict) else None
            if isinstance(index, int) and 0 <= index < len(part) and index not in by_index:
                by_index[index] = (err.get("field"), str(err.get("reason", detail)))
            elif isinstance(index, int) and 0 <= index < len(part):
                field, reason = by_index[index]  # both sides failed: name both
                by_index[index] = (f"{field},{err.get('field')}",
                                   f"{reason}; {err.get('field')}: {err.get('reason')}")
        if not by_index:  # nothing names a pair: the request as a whole was refused
            raise ServiceError(f"the service refused a request (HTTP 422): {detail}; "
                               f"errors: {json.dumps(errors)[:500]}")
        named = [part[i].result(error=reason, field=field)
                 for i, (field, reason) in sorted(by_index.items())]
        rest = [item for i, item in enumerate(part) if i not in by_index]
        return named, rest


class SimilarityClient:
    """The synchronous twin of :class:`AsyncSimilarityClient` (same arguments).

    ``score`` runs the asynchronous client on its own event loop in a background thread
    and yields results as they arrive; stopping the iteration early cancels what is in
    flight.
    """

    def __init__(self, url: str, **kwargs: Any) -> None:
        self.url = url
        self._kwargs = kwargs
        self.stats = ClientStats()

    def score(self, pairs: Iterable[PairLike]) -> Iterator[PairResult]:
        """Score ``pairs`` (see :meth:`AsyncSimilarityClient.score`); yields as they complete."""
        out: queue.Queue[PairResult | BaseException | None] = queue.Queue()

        async def consume() -> None:
            async with AsyncSimilarityClient(self.url, **self._kwargs) as client:
                self.stats = client.stats
                async for result in client.score(pairs):
                    out.put(result)

        loop = asyncio.new_event_loop()
        task = loop.create_task(consume())

        def run() -> None:
            try:
                loop.run_until_complete(task)
                out.put(None)
            except asyncio.CancelledError:
                out.put(None)
            except BaseException as e:
                out.put(e)
            finally:
                loop.close()

        thread = threading.Thread(target=run, name="similarity-client", daemon=True)
        thread.start()
        try:
            while (item := out.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            if thread.is_alive():
                try:
                    loop.call_soon_threadsafe(task.cancel)
                except RuntimeError:  # the loop closed meanwhile: nothing left to cancel
                    pass
            thread.join()

"""Score (or embed) a Ray Dataset against the service, into Parquet: data sets past one machine.

::

    import ray
    from similarity_client import ray as sc_ray

    ds = ray.data.read_parquet("s3://bucket/pairs/")   # reference, generated[, pair_id]
    report = sc_ray.score_pairs(ds, "http://similarity.example.com", "s3://bucket/scores/")
    print(report)                                       # written, errors, not scored

Each block of the data set is scored by a Ray task (``Dataset.map_batches``) that runs the
CLI's client (:class:`~similarity_client.SimilarityClient`): chunks of ``chunk_size``
pairs, ``concurrency`` requests in flight per task, retries honouring ``Retry-After``,
per-pair errors; ``workers`` tasks run at once. Results go to a Parquet directory with
``Dataset.write_parquet``, one row per pair: ``pair_id``, ``reference``, ``generated``,
``distance``, ``similarity``, ``error``, ``field`` (the CLI's output columns).
``embed_images`` does the same for images and ``POST /embed``.

No pair is lost or written twice when a worker dies:

- Every pair has a deterministic id: its ``pair_id`` column, or, without one, a hash of its
  two inputs (so two identical rows are one pair). Results are keyed by it.
- A task whose worker dies is run again by Ray (Ray Data retries its tasks on system
  failures without limit), on the same block, and its output file is named from the
  write's id and the task's index alone (Ray's ``FilenameProvider`` contract): the retry
  overwrites the file of the failed attempt, it never adds a second one. The pairs of the
  batch in flight are *sent* again (the embedding cache answers them at once), never
  *written* twice.
- A run that stops (the driver killed, the service down past every retry) leaves the
  directory valid: running the same call again reads the ``pair_id``s already there and
  scores only the others, as the CLI resumes. A file left half-written by a crash is
  removed first. Pairs the service never answered (retryable errors) are left out, so the
  next run tries them again; errors that belong to the pair (a bad image) are written.
- :func:`read_results` reads the directory and drops any repeated ``pair_id`` (none is
  expected: it is the last safety net, not the mechanism).

Needs the ``[ray]`` extra: ``pip install 'similarity-client[ray]'`` (ray, pyarrow).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from . import inputs
from .client import DEFAULT_CHUNK_SIZE, ServiceError, SimilarityClient
from .models import Pair
from .retry import RETRY_STATUSES, RetryPolicy, parse_retry_after

if TYPE_CHECKING:
    import pyarrow as pa
    import ray.data

log = logging.getLogger("similarity_client.ray")

EXTRA = "ray"
SCORE_COLUMNS = ("pair_id", "reference", "generated", "distance", "similarity", "error",
                 "field")
EMBED_COLUMNS = ("id", "image", "embedding", "model_type", "error", "field")


class MissingExtra(ImportError):
    """ray or pyarrow is not installed: the message names the extra that brings them."""


def _require() -> tuple[Any, Any]:
    """``(ray, pyarrow)``, or a clear message naming the ``[ray]`` extra."""
    try:
        import pyarrow
        import ray
        import ray.data  # noqa: F401  (Ray Data: the part of ray this module uses)
    except ImportError as e:
        raise MissingExtra(
            f"similarity_client.ray needs the [{EXTRA}] extra ({e.name or e} is missing): "
            f"pip install 'similarity-client[{EXTRA}]'") from None
    return ray, pyarrow


@dataclass(frozen=True)
class RunReport:
    """What one call did.

    Attributes:
        total: rows in the data set.
        already_done: ids found in ``out`` before the run (skipped).
        written: result rows written by this run (scores and per-item errors).
        errors: of those, rows with an ``error`` (the item's fault, e.g. a bad image).
        not_scored: ids still missing from ``out`` (the service stayed unavailable past
            every retry): run the same call again to retry them.
        out: the Parquet directory.
    """

    total: int
    already_done: int
    written: int
    errors: int
    not_scored: int
    out: str

    def __str__(self) -> str:
        return (f"{self.total} rows: {self.already_done} already in {self.out}, "
                f"{self.written} written ({self.errors} with errors), "
                f"{self.not_scored} not scored")


def pair_id_of(reference: str, generated: str) -> str:
    """The id of a pair without a ``pair_id``: a hash of its two inputs (deterministic, so
    that a retried or resumed run keys it the same)."""
    digest = hashlib.blake2b(f"{reference}\0{generated}".encode("utf-8", "surrogatepass"),
                             digest_size=12)
    return digest.hexdigest()


def _resolved(value: Any, base: str) -> Any:
    """A relative path against the driver's working directory (a worker's may differ)."""
    if isinstance(value, str) and not inputs.is_passthrough(value) and not os.path.isabs(value):
        return os.path.join(base, value)
    return value


def _table(columns: dict[str, list[Any]], types: dict[str, Any]) -> pa.Table:
    _, pa = _require()
    return pa.table({name: pa.array(values, type=types.get(name))
                     for name, values in columns.items()})


# --- the tasks -------------------------------------------------------------------------------

def _score_batch(batch: pa.Table, *, url: str, reference: str, generated: str,
                 id_column: str | None, done: frozenset[str], base: str, client_args: dict[str, Any]
                 ) -> pa.Table:
    """One block: its pairs not yet in the output, scored with the CLI's client."""
    _, pa = _require()
    refs = batch.column(reference).to_pylist()
    gens = batch.column(generated).to_pylist()
    ids = (batch.column(id_column).to_pylist() if id_column
           else [pair_id_of(str(r), str(g)) for r, g in zip(refs, gens, strict=True)])
    pairs, seen = [], set()
    for r, g, i in zip(refs, gens, ids, strict=True):
        if i is None:
            raise ValueError(f"a row has no {id_column} (ids must be unique and non-null)")
        if str(i) not in done and i not in seen:  # a repeated id is one pair
            seen.add(i)
            pairs.append(Pair(_resolved(r, base), _resolved(g, base), i))
    by_id = {}
    if pairs:
        for result in SimilarityClient(url, **client_args).score(pairs):
            if not result.retryable:  # unavailable says nothing of the pair: retried next run
                by_id[result.pair_id] = result
    rows = [by_id[p.pair_id].record() for p in pairs if p.pair_id in by_id]
    id_type = batch.schema.field(id_column).type if id_column else pa.string()
    return _table({name: [row.get(name) for row in rows] for name in SCORE_COLUMNS},
                  {"pair_id": id_type, "reference": pa.string(), "generated": pa.string(),
                   "distance": pa.float64(), "similarity": pa.float64(),
                   "error": pa.string(), "field": pa.string()})


async def _embed_all(items: list[tuple[Any, str, Any]], *, url: str, concurrency: int,
                     chunk_size: int, timeout_s: float, retry: RetryPolicy,
                     headers: dict[str, str] | None) -> list[dict[str, Any]]:
    """``POST /embed`` for ``(id, label, image)`` items: chunks, ``concurrency`` requests
    at once, retries on 429/502/503/504 and connection errors (``Retry-After`` honoured),
    a 413 splits (to the service's ``MAX_IMAGES_PER_REQUEST`` when it names it), a 422
    makes the images it names errors and sends the rest again. Items the service never
    answered are left out (retryable)."""
    rows: list[dict[str, Any]] = []
    slots = asyncio.Semaphore(concurrency)
    limit = [chunk_size]

    def row(item: tuple[Any, str, Any], **kw: Any) -> dict[str, Any]:
        return {"id": item[0], "image": item[1], "embedding": None, "model_type": None,
                "error": None, "field": None, **kw}

    encoded: list[tuple[tuple[Any, str, Any], str]] = []
    for item in items:
        try:
            encoded.append((item, inputs.encode(item[2])))
        except inputs.InputError as e:
            rows.append(row(item, error=e.reason, field="image"))

    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=10.0),
                                 headers=headers) as http:
        async def post(part: list[tuple[tuple[Any, str, Any], str]]) -> httpx.Response | None:
            body = {"images": [{"image": s, "id": i} for (i, _, _), s in part],
                    "encoding": "base64"}
            for attempt in range(retry.max_retries + 1):
                retry_after = None
                try:
                    async with slots:
                        r = await http.post(f"{url.rstrip('/')}/embed", json=body)
                    if r.status_code not in RETRY_STATUSES:
                        return r
                    retry_after = parse_retry_after(r.headers.get("Retry-After"))
                except httpx.TransportError:
                    pass
                if attempt < retry.max_retries:
                    await asyncio.sleep(retry.delay(attempt + 1, retry_after))
            return None

        async def run(part: list[tuple[tuple[Any, str, Any], str]]) -> None:
            while part:
                if len(part) > limit[0]:
                    await asyncio.gather(*(run(part[i:i + limit[0]])
                                           for i in range(0, len(part), limit[0])))
                    return
                r = await post(part)
                if r is None:
                    return  # retryable: left out
                if r.status_code == 200:
                    answer = r.json()
                    for (item, _), e in zip(part, answer["embeddings"], strict=True):
                        vector = list(memoryview(base64.b64decode(e["embedding"])).cast("f"))
                        rows.append(row(item, embedding=vector,
                                        model_type=answer["model_type"]))
                    return
                detail = _detail(r)
                if r.status_code == 413:
                    if len(part) == 1:
                        rows.append(row(part[0][0], error=f"refused as too large (HTTP 413): "
                                                          f"{detail}", field="image"))
                        return
                    named = _named_limit(detail)
                    limit[0] = max(1, min(limit[0], named or len(part) // 2))
                    continue
                if r.status_code == 422:
                    named_errors = {e["index"]: e for e in r.json().get("errors", [])
                                    if isinstance(e.get("index"), int)}
                    if not named_errors:
                        raise ServiceError(f"POST {url}/embed refused a request (HTTP 422): "
                                           f"{detail}")
                    for index, e in sorted(named_errors.items()):
                        rows.append(row(part[index][0], error=str(e.get("reason", detail)),
                                        field="image"))
                    part = [p for i, p in enumerate(part) if i not in named_errors]
                    continue
                raise ServiceError(f"POST {url}/embed answered HTTP {r.status_code}: {detail}")

        await asyncio.gather(*(run(encoded[i:i + chunk_size])
                               for i in range(0, len(encoded), chunk_size)))
    return rows


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    return str(body.get("detail")) if isinstance(body, dict) else json.dumps(body)[:300]


def _named_limit(detail: str) -> int | None:
    if "MAX_IMAGES_PER_REQUEST" not in detail or "the limit is " not in detail:
        return None
    digits = detail.split("the limit is ", 1)[1].split(" ", 1)[0]
    return int(digits) if digits.isdigit() else None


def _embed_batch(batch: pa.Table, *, url: str, image: str, id_column: str | None,
                 done: frozenset[str], base: str, client_args: dict[str, Any]) -> pa.Table:
    """One block: its images not yet in the output, embedded with ``POST /embed``."""
    _, pa = _require()
    images = batch.column(image).to_pylist()
    ids = (batch.column(id_column).to_pylist() if id_column
           else [hashlib.blake2b(str(x).encode("utf-8", "surrogatepass"),
                                 digest_size=12).hexdigest() for x in images])
    items, seen = [], set()
    for i, x in zip(ids, images, strict=True):
        if i is None:
            raise ValueError(f"a row has no {id_column} (ids must be unique and non-null)")
        if str(i) not in done and i not in seen:
            seen.add(i)
            items.append((i, inputs.label(x), _resolved(x, base)))
    args = dict(client_args)
    rows = asyncio.run(_embed_all(
        items, url=url, concurrency=args["concurrency"], chunk_size=args["chunk_size"],
        timeout_s=args["timeout_s"], retry=args["retry"] or RetryPolicy(),
        headers=args["headers"])) if items else []
    order = {i: n for n, (i, _, _) in enumerate(items)}
    rows.sort(key=lambda r: order[r["id"]])
    id_type = batch.schema.field(id_column).type if id_column else pa.string()
    return _table({name: [r[name] for r in rows] for name in EMBED_COLUMNS},
                  {"id": id_type, "image": pa.string(), "embedding": pa.list_(pa.float32()),
                   "model_type": pa.string(), "error": pa.string(), "field": pa.string()})


# --- the driver ------------------------------------------------------------------------------

def done_ids(out: str | os.PathLike[str], id_column: str = "pair_id") -> frozenset[str]:
    """The ids already in the Parquet directory ``out`` (as strings); files a crash left
    unreadable are removed (they are re-created by the run)."""
    _, pa = _require()
    import pyarrow.parquet as pq

    folder = Path(out)
    if not folder.is_dir():
        return frozenset()
    found: set[str] = set()
    for path in sorted(folder.glob("*.parquet")):
        try:
            column = pq.read_table(path, columns=[id_column]).column(id_column)
        except (pa.ArrowException, OSError) as e:
            log.warning("removing %s, unreadable (a run stopped while writing it): %s",
                        path, e)
            path.unlink()
            continue
        found.update(str(v) for v in column.to_pylist())
    return frozenset(found)


def read_results(out: str | os.PathLike[str], id_column: str = "pair_id") -> pa.Table:
    """Every result row in ``out``, one per id (a repeated id keeps its first row)."""
    _, pa = _require()
    import pyarrow.parquet as pq

    files = sorted(Path(out).glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"no Parquet files in {out}")
    table = pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")
    seen: set[Any] = set()
    keep = []
    for n, value in enumerate(table.column(id_column).to_pylist()):
        if value not in seen:
            seen.add(value)
            keep.append(n)
    return table.take(keep) if len(keep) < table.num_rows else table


def _check_columns(ds: ray.data.Dataset, needed: Sequence[str]) -> None:
    names = ds.schema().names
    missing = [c for c in needed if c not in names]
    if missing:
        raise ValueError(f"the data set has no column {', '.join(map(repr, missing))} "
                         f"(its columns: {', '.join(names)})")


def _run(ds: ray.data.Dataset, fn: Any, out: str | os.PathLike[str], id_out: str,
         fn_kwargs: dict[str, Any], *, batch_size: int, workers: int | None,
         num_cpus: float) -> RunReport:
    if "://" in os.fspath(out):
        raise ValueError(f"out={os.fspath(out)!r}: resuming reads out as a directory of "
                         "files; give a path mounted on the driver and every worker (or "
                         "use score_dataset + write_results, which write anywhere Ray "
                         "Data writes, without resuming)")
    before = done_ids(out, id_out)
    total = ds.count()
    scored = ds.map_batches(fn, batch_format="pyarrow", batch_size=batch_size,
                            concurrency=workers, num_cpus=num_cpus,
                            fn_kwargs={**fn_kwargs, "done": before})
    write_results(scored, out)
    after = done_ids(out, id_out)
    new = after - before
    errors = 0
    if new:
        table = read_results(out, id_out)
        errors = sum(1 for i, e in zip(table.column(id_out).to_pylist(),
                                       table.column("error").to_pylist(), strict=True)
                     if e is not None and str(i) in new)
    return RunReport(total=total, already_done=len(before), written=len(new), errors=errors,
                     not_scored=max(0, total - len(after)), out=str(out))


def write_results(scored: ray.data.Dataset, out: str | os.PathLike[str]) -> None:
    """Write scored (or embedded) rows into the Parquet directory ``out`` (appending)."""
    _require()
    if "://" not in os.fspath(out):
        Path(out).mkdir(parents=True, exist_ok=True)
    scored.write_parquet(os.fspath(out))


def _client_args(*, concurrency: int, chunk_size: int, timeout_s: float,
                 retry: RetryPolicy | None, headers: dict[str, str] | None) -> dict[str, Any]:
    return {"concurrency": concurrency, "chunk_size": chunk_size, "timeout_s": timeout_s,
            "retry": retry, "headers": headers}


def score_dataset(ds: ray.data.Dataset, url: str, *, reference: str = "reference",
                  generated: str = "generated", pair_id: str | None = "pair_id",
                  concurrency: int = 4, chunk_size: int = DEFAULT_CHUNK_SIZE,
                  timeout_s: float = 300.0, retry: RetryPolicy | None = None,
                  headers: dict[str, str] | None = None, batch_size: int = 256,
                  workers: int | None = None, num_cpus: float = 1.0,
                  skip: Iterable[str] = ()) -> ray.data.Dataset:
    """The lazily scored data set (one row per pair scored; ``SCORE_COLUMNS``), for
    pipelines that transform it further before :func:`write_results`.

    Args:
        ds: rows with a ``reference`` and a ``generated`` column (paths, URLs, data URIs;
            relative paths are taken against the caller's working directory and must be
            readable on every worker) and optionally a unique ``pair_id``.
        url: the service's base URL.
        pair_id: the id column; None (or absent from ``ds``) derives ids (:func:`pair_id_of`).
        concurrency, chunk_size, timeout_s, retry, headers: the CLI's client settings, per
            task (:class:`~similarity_client.AsyncSimilarityClient`).
        batch_size: rows per task call (``map_batches``).
        workers: tasks at once (Ray's ``concurrency``); None lets Ray decide.
        num_cpus: CPUs Ray reserves per task (mostly waiting on the network).
        skip: ids not to score (those already written).
    """
    _require()
    _check_columns(ds, [reference, generated])
    id_column = pair_id if pair_id and pair_id in ds.schema().names else None
    fn: Any = _score_batch
    return ds.map_batches(
        fn, batch_format="pyarrow", batch_size=batch_size, concurrency=workers,
        num_cpus=num_cpus, fn_kwargs={
            "url": url, "reference": reference, "generated": generated,
            "id_column": id_column, "done": frozenset(map(str, skip)), "base": os.getcwd(),
            "client_args": _client_args(concurrency=concurrency, chunk_size=chunk_size,
                                        timeout_s=timeout_s, retry=retry, headers=headers)})


def score_pairs(ds: ray.data.Dataset, url: str, out: str | os.PathLike[str], *,
                reference: str = "reference", generated: str = "generated",
                pair_id: str | None = "pair_id", concurrency: int = 4,
                chunk_size: int = DEFAULT_CHUNK_SIZE, timeout_s: float = 300.0,
                retry: RetryPolicy | None = None, headers: dict[str, str] | None = None,
                batch_size: int = 256, workers: int | None = None,
                num_cpus: float = 1.0) -> RunReport:
    """Score every pair of ``ds`` not yet in ``out`` into the Parquet directory ``out``.

    Arguments as for :func:`score_dataset`. Run it again after any failure: it resumes.
    """
    _require()
    _check_columns(ds, [reference, generated])
    id_column = pair_id if pair_id and pair_id in ds.schema().names else None
    started = time.monotonic()
    report = _run(ds, _score_batch, out, "pair_id", {
        "url": url, "reference": reference, "generated": generated, "id_column": id_column,
        "base": os.getcwd(),
        "client_args": _client_args(concurrency=concurrency, chunk_size=chunk_size,
                                    timeout_s=timeout_s, retry=retry, headers=headers)},
        batch_size=batch_size, workers=workers, num_cpus=num_cpus)
    log.info("%s in %.1f s", report, time.monotonic() - started)
    return report


def embed_images(ds: ray.data.Dataset, url: str, out: str | os.PathLike[str], *,
                 image: str = "image", image_id: str | None = "id", concurrency: int = 4,
                 chunk_size: int = 64, timeout_s: float = 300.0,
                 retry: RetryPolicy | None = None, headers: dict[str, str] | None = None,
                 batch_size: int = 256, workers: int | None = None,
                 num_cpus: float = 1.0) -> RunReport:
    """Embed every image of ``ds`` not yet in ``out`` (``POST /embed``) into the Parquet
    directory ``out``: one row per image (``EMBED_COLUMNS``; ``embedding`` is the
    normalised float32 vector, ``1 - dot`` of two is their DreamSim distance).

    Args:
        ds: rows with an ``image`` column (path, URL or data URI) and optionally a unique
            ``image_id`` column (else ids are a hash of the image string).
        Others: as for :func:`score_pairs`; ``chunk_size`` is images per request.
    """
    _require()
    _check_columns(ds, [image])
    id_column = image_id if image_id and image_id in ds.schema().names else None
    return _run(ds, _embed_batch, out, "id", {
        "url": url, "image": image, "id_column": id_column, "base": os.getcwd(),
        "client_args": _client_args(concurrency=concurrency, chunk_size=chunk_size,
                                    timeout_s=timeout_s, retry=retry, headers=headers)},
        batch_size=batch_size, workers=workers, num_cpus=num_cpus)

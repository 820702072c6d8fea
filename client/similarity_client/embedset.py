"""Embeddings of a whole set of images: from the local store when there, else from the
service's ``/embed`` (in chunks, with the client's retries), stored as they arrive.

Each image is hashed first (:func:`store.image_key`); images with equal bytes are embedded
once, images already in the store not at all. Embeddings are added to the store as each
answer arrives and flushed every few seconds and at the end (also on Ctrl-C), so an
interrupted run loses at most the last seconds of work.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from tqdm import tqdm

from .client import AsyncSimilarityClient, ServiceError
from .imagesets import ImageRef
from .store import EmbeddingStore, image_key


@dataclass
class EmbeddedSet:
    """One side's images with their embeddings (``vectors[i]`` is ``images[i]``'s);
    ``failed`` holds the images that have none, with the reason."""

    images: list[ImageRef]
    vectors: Any  # numpy float32 [len(images), dim]
    keys: list[str] = field(default_factory=list)  # store key of each image
    failed: dict[str, str] = field(default_factory=dict)  # image id -> reason
    not_embedded: int = 0  # retryable failures (service unavailable): run again
    cached: int = 0  # distinct images found in the store
    embedded: int = 0  # distinct images embedded by this run
    wall_s: float = 0.0


def service_model_type(url: str, *, headers: dict[str, str] | None = None,
                       timeout_s: float = 30.0, attempts: int = 10) -> str:
    """The ``model_type`` the service runs (``GET /health``), waiting while it loads.

    Raises:
        ServiceError: no answer with a ``model_type`` after ``attempts`` tries.
    """
    last = ""
    for attempt in range(attempts):
        try:
            r = httpx.get(f"{url.rstrip('/')}/health", headers=headers, timeout=timeout_s)
            body = r.json() if r.headers.get("content-type", "").startswith(
                "application/json") else {}
            if r.status_code == 200 and isinstance(body.get("model_type"), str):
                return str(body["model_type"])
            last = f"HTTP {r.status_code}: {r.text[:200]}"
        except (httpx.TransportError, ValueError) as e:
            last = f"{type(e).__name__}: {e}"
        time.sleep(min(2.0 ** attempt * 0.5, 10.0))
    raise ServiceError(f"GET {url}/health gave no model_type after {attempts} tries "
                       f"(last: {last}); pass --model-type to use the store alone")


def embed_set(images: list[ImageRef], store: EmbeddingStore,
              client: Callable[[], AsyncSimilarityClient] | None, *, label: str = "images",
              progress: bool = True) -> EmbeddedSet:
    """Embeddings of ``images``; those missing from ``store`` are embedded with a client
    made by ``client()`` (None: store only, the missing ones become failures).

    Raises:
        ServiceError: the service answered in a way no retry fixes.
        KeyboardInterrupt: interrupted (what arrived is in the store).
    """
    np = store.np
    started = time.monotonic()
    failed: dict[str, str] = {}
    keys: dict[str, str] = {}  # image id -> key
    for image in tqdm(images, desc=f"hashing {label}", unit="img", file=sys.stderr,
                      disable=not progress or len(images) < 1000, dynamic_ncols=True):
        try:
            keys[image.id] = image_key(image.source)
        except FileNotFoundError:
            failed[image.id] = "file not found"
        except (OSError, ValueError) as e:
            failed[image.id] = f"cannot read: {getattr(e, 'strerror', None) or e}"
    todo: dict[str, str] = {}  # key -> source, the first image with those bytes
    for image in images:
        key = keys.get(image.id)
        if key is not None and key not in store and key not in todo:
            todo[key] = image.source
    distinct = len(set(keys.values()))
    result = EmbeddedSet(images, None, failed=failed, cached=distinct - len(todo))
    key_errors: dict[str, str] = {}
    if todo and client is None:
        key_errors = dict.fromkeys(todo, "not in the store (no service to embed it)")
    elif todo:
        assert client is not None
        bar = tqdm(total=distinct, initial=result.cached, desc=f"embedding {label}",
                   unit="img", file=sys.stderr, disable=not progress, dynamic_ncols=True,
                   smoothing=0.05)
        try:
            asyncio.run(_embed(client, todo, store, result, key_errors, bar))
        finally:
            store.flush()
            bar.close()
    ok = [i for i, image in enumerate(images)
          if image.id in keys and keys[image.id] in store]
    for image in images:
        key = keys.get(image.id)
        if key is not None and key not in store:
            failed[image.id] = key_errors.get(key, "not embedded")
    result.images = [images[i] for i in ok]
    result.keys = [keys[images[i].id] for i in ok]
    result.vectors = store.get([keys[images[i].id] for i in ok]) if ok else np.zeros(
        (0, store.dim or 0), np.float32)
    result.wall_s = time.monotonic() - started
    return result


async def _embed(make_client: Callable[[], AsyncSimilarityClient], todo: dict[str, str],
                 store: EmbeddingStore,
                 result: EmbeddedSet, key_errors: dict[str, str], bar: tqdm) -> None:
    """Embed ``todo`` into the store; SIGINT/SIGTERM stop between two answers."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        async with make_client() as client:
            async for r in client.embed(todo.items()):
                key = str(r.image_id)
                if r.ok and r.embedding is not None:
                    if r.model_type != store.model_type:
                        raise ServiceError(f"/embed answered with {r.model_type} embeddings; "
                                           f"the store holds {store.model_type}")
                    store.add(key, r.embedding)
                    result.embedded += 1
                else:
                    key_errors[key] = f"{r.field}: {r.error}" if r.field else str(r.error)
                    if r.retryable:
                        result.not_embedded += 1
                    bar.set_postfix(failed=len(key_errors), refresh=False)
                bar.update(1)
    except asyncio.CancelledError:
        raise KeyboardInterrupt from None
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)

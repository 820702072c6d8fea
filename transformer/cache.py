"""A bounded LRU of embeddings, keyed by a hash of the image bytes and the model identity.

A hit skips decoding and the predictor. The model identity (variant, precision, device,
weights fingerprint, as the predictor reports them) is part of the key, so a predictor
restarted with other weights or settings never serves stale embeddings.

Privacy: a hit is faster than a miss (and counted in ``/metrics``), so with one cache for
everyone a client can tell that *someone* recently sent the exact same image.
``EMBEDDING_CACHE_SCOPE`` decides: ``shared`` (the default: one cache, for single-tenant
deployments where all clients trust each other), ``client`` (the key includes a hash of the
value of ``EMBEDDING_CACHE_CLIENT_HEADER``, e.g. the ``Authorization`` header the gateway
checked, so a client only ever hits its own entries; requests without it are not cached),
or ``off``.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import numpy as np


def cache_key(model_identity: str, data: bytes, partition: bytes = b"") -> bytes:
    """BLAKE2b-128 of the model identity, the client partition (empty when shared) and the
    image's bytes (or the hash that identifies them: ``inputs.content_hash``)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(model_identity.encode())
    h.update(b"\0")
    h.update(hashlib.blake2b(partition, digest_size=16).digest())
    h.update(data)
    return h.digest()


def partition_of(scope: str, client_id: str | None) -> bytes | None:
    """The cache partition of a request: b"" when shared, the client's identity when per
    client, None when this request must not use the cache (off, or no identity)."""
    if scope == "shared":
        return b""
    if scope == "client" and client_id:
        return client_id.encode("utf-8", "surrogatepass")
    return None


class EmbeddingCache:
    """LRU mapping cache keys to embeddings; ``max_entries = 0`` disables it.

    Args:
        max_entries: most embeddings kept (each is D float32 values: 768 or 1792).
    """

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._items: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.max_entries > 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: bytes) -> np.ndarray | None:
        if not self.enabled:
            return None
        with self._lock:
            value = self._items.get(key)
            if value is None:
                return None
            self._items.move_to_end(key)
            return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def put(self, key: bytes, value: np.ndarray) -> None:
        if not self.enabled:
            return
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)

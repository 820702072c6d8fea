"""A local store of embeddings keyed by the SHA-256 of the image file's bytes, per
``model_type``: a second run, or a run with one new image, embeds nothing twice.

Layout (``.npy`` plus an index, readable with nothing but numpy)::

    STORE/<model_type>/meta.json              {"model_type": ..., "dim": 768}
    STORE/<model_type>/shard-000001.npy       float32 [n, dim]
    STORE/<model_type>/shard-000001.keys      n lines: the hex SHA-256 of each row's image

A shard is written whole (temporary names, then the ``.npy`` renamed, then the ``.keys``
renamed: the index is what makes a shard count), so a run killed at any moment leaves a
store that opens, missing at most the embeddings not yet flushed. Shards are flushed every
``flush_every`` embeddings and every few seconds; many small shards are merged into one
when the store is opened. Embeddings of different variants are never mixed: each
``model_type`` has its own directory, and a ``dim`` that does not match is an error.

URLs are keyed by the URL's text (the client never downloads them), data URIs by the bytes
they carry, like files.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from .extras import require
from .inputs import is_passthrough

MERGE_ABOVE_SHARDS = 32
FLUSH_EVERY_S = 5.0


class StoreError(Exception):
    """The store cannot be used as asked (wrong dim, unreadable file)."""


def image_key(source: str) -> str:
    """The store key of an image: SHA-256 of its bytes (a file or a data URI) or, for an
    http(s) URL, of ``url:`` plus the URL.

    Raises:
        OSError: the file cannot be read.
        ValueError: a data URI that is not base64.
    """
    if source[:5].lower() == "data:":
        try:
            data = base64.b64decode(source.partition(",")[2], validate=True)
        except binascii.Error:
            raise ValueError("the data URI is not valid base64") from None
        return hashlib.sha256(data).hexdigest()
    if is_passthrough(source):
        return hashlib.sha256(b"url:" + source.encode()).hexdigest()
    h = hashlib.sha256()
    with open(source, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


class EmbeddingStore:
    """Embeddings of one ``model_type`` under ``root``.

    Args:
        root: the store's directory (created if missing).
        model_type: the variant the embeddings come from (``/health``'s ``model_type``).
        dim: the length of each vector; None to take it from the store (or the first add).
        flush_every: write a shard once this many new embeddings are buffered.
    """

    def __init__(self, root: Path, model_type: str, dim: int | None = None, *,
                 flush_every: int = 4096) -> None:
        self.np = require("numpy", "the embedding store")
        self.dir = Path(root) / _safe(model_type)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.model_type = model_type
        self.flush_every = flush_every
        meta_path = self.dir / "meta.json"
        meta: dict[str, Any] = {}
        if meta_path.exists():
            meta = json.loads(meta_path.read_text())
            if dim is not None and meta.get("dim") != dim:
                raise StoreError(f"{self.dir}: holds {meta.get('dim')}-dim embeddings of "
                                 f"{model_type}, the service answers {dim}-dim ones")
        self.dim: int | None = meta.get("dim", dim)
        if self.dim is not None and not meta_path.exists():
            self._write_meta()
        self._index: dict[str, tuple[int, int]] = {}  # key -> (shard number, row)
        self._shards: dict[int, Any] = {}  # shard number -> memory-mapped array
        self._buffer_keys: dict[str, int] = {}  # key -> position in _buffer
        self._buffer: list[Any] = []
        self._flushed = time.monotonic()
        self._load()
        if len(self._shards) > MERGE_ABOVE_SHARDS:
            self._merge()

    def _write_meta(self) -> None:
        tmp = self.dir / "meta.json.tmp"
        tmp.write_text(json.dumps({"model_type": self.model_type, "dim": self.dim}))
        os.replace(tmp, self.dir / "meta.json")

    def _load(self) -> None:
        for keys_path in sorted(self.dir.glob("shard-*.keys")):
            number = int(keys_path.stem.split("-")[1])
            npy = keys_path.with_suffix(".npy")
            keys = keys_path.read_text().split()
            try:
                array = self.np.load(npy, mmap_mode="r")
            except (OSError, ValueError) as e:
                raise StoreError(f"{npy}: cannot read ({e}); delete the shard's two files "
                                 "to embed its images again") from None
            if array.shape != (len(keys), self.dim):
                raise StoreError(f"{npy}: shape {array.shape}, its index has {len(keys)} "
                                 f"keys of dim {self.dim}")
            self._shards[number] = array
            for row, key in enumerate(keys):
                self._index[key] = (number, row)

    def _merge(self) -> None:
        """All shards into one (the index decides: a key is kept once)."""
        old = sorted(self._shards)
        keys = list(self._index)
        vectors = self.get(keys)
        self._index.clear()
        number = self._write_shard(keys, vectors)
        for n in old:
            self._shards.pop(n)
            (self.dir / f"shard-{n:06d}.keys").unlink()  # the index first: never half a shard
            (self.dir / f"shard-{n:06d}.npy").unlink()
        self._shards[number] = self.np.load(self.dir / f"shard-{number:06d}.npy", mmap_mode="r")
        for row, key in enumerate(keys):
            self._index[key] = (number, row)

    def _write_shard(self, keys: list[str], vectors: Any) -> int:
        existing = [int(p.stem.split("-")[1]) for p in self.dir.glob("shard-*.npy")]
        number = max([0, *existing, *self._shards]) + 1
        base = self.dir / f"shard-{number:06d}"
        tmp_npy, tmp_keys = Path(f"{base}.tmp.npy"), Path(f"{base}.keys.tmp")
        with tmp_npy.open("wb") as f:
            self.np.save(f, self.np.ascontiguousarray(vectors, dtype=self.np.float32))
            f.flush()
            os.fsync(f.fileno())
        with tmp_keys.open("w") as f:
            f.write("".join(k + "\n" for k in keys))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_npy, f"{base}.npy")
        os.replace(tmp_keys, f"{base}.keys")
        return number

    def __len__(self) -> int:
        return len(self._index) + len(self._buffer_keys)

    def __contains__(self, key: str) -> bool:
        return key in self._index or key in self._buffer_keys

    def add(self, key: str, vector: bytes | Any) -> None:
        """Buffer one embedding (raw little-endian float32 bytes or an array); flushed to a
        shard every ``flush_every`` embeddings or ``FLUSH_EVERY_S`` seconds."""
        v = (self.np.frombuffer(vector, "<f4") if isinstance(vector, bytes | bytearray)
             else self.np.asarray(vector, self.np.float32))
        if self.dim is None:
            self.dim = int(v.shape[0])
            self._write_meta()
        if v.shape != (self.dim,):
            raise StoreError(f"an embedding of shape {v.shape} for a {self.dim}-dim store")
        if key in self:
            return
        self._buffer_keys[key] = len(self._buffer)
        self._buffer.append(v)
        if (len(self._buffer) >= self.flush_every
                or time.monotonic() - self._flushed > FLUSH_EVERY_S):
            self.flush()

    def flush(self) -> None:
        """Write the buffered embeddings as one shard (nothing when none are buffered)."""
        self._flushed = time.monotonic()
        if not self._buffer:
            return
        keys, vectors = list(self._buffer_keys), self.np.stack(self._buffer)
        self._buffer_keys, self._buffer = {}, []
        number = self._write_shard(keys, vectors)
        self._shards[number] = self.np.load(self.dir / f"shard-{number:06d}.npy", mmap_mode="r")
        for row, key in enumerate(keys):
            self._index.setdefault(key, (number, row))

    def get(self, keys: list[str]) -> Any:
        """The embeddings of ``keys`` as one float32 [len(keys), dim] array, in order.

        Raises:
            KeyError: a key that is not in the store.
        """
        np = self.np
        out = np.empty((len(keys), self.dim or 0), np.float32)
        by_shard: dict[int, tuple[list[int], list[int]]] = {}
        for i, key in enumerate(keys):
            if key in self._index:
                number, row = self._index[key]
                where = by_shard.setdefault(number, ([], []))
                where[0].append(i)
                where[1].append(row)
            else:
                out[i] = self._buffer[self._buffer_keys[key]]
        for number, (positions, rows) in by_shard.items():
            out[positions] = self._shards[number][rows]
        return out

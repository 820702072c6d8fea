"""What goes in (a pair of images) and what comes out (a score or an error), as data."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Union

# One side of a pair: a local path, the bytes of an image file, a PIL image, or an
# http(s) URL / data URI that the service reads itself (never fetched by the client).
# (A PIL image is typed Any: Pillow is optional.)
ImageInput = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, Any]  # noqa: UP007
PairId = str | int | None
ImageId = str | int


@dataclass(frozen=True)
class Pair:
    """Two images to compare and the id their score is reported under."""

    reference: ImageInput
    generated: ImageInput
    pair_id: PairId = None


@dataclass(frozen=True)
class PairResult:
    """The outcome of one pair: a score, or an error naming the field and the reason.

    ``retryable`` errors (the service stayed unavailable, overloaded or unreachable after
    every retry) say nothing about the pair itself: the CLI leaves them out of its output
    so that the next run tries them again. The others (a missing file, an image the service
    cannot decode) belong to the pair and are written as ``error`` lines.
    """

    pair_id: PairId
    reference: str
    generated: str
    distance: float | None = None
    similarity: float | None = None
    error: str | None = None
    field: str | None = None
    retryable: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None

    def record(self) -> dict[str, Any]:
        """The output line: scores, or ``error`` (+ ``field``) with the reason."""
        out: dict[str, Any] = {"pair_id": self.pair_id, "reference": self.reference,
                               "generated": self.generated}
        if self.error is None:
            out["distance"] = self.distance
            out["similarity"] = self.similarity
        else:
            out["error"] = self.error
            out["field"] = self.field
        return out


@dataclass(frozen=True)
class EmbedResult:
    """The outcome of one image sent to ``/embed``: its embedding, or an error.

    ``embedding`` is the ``dim`` little-endian float32 values as bytes (the client itself
    needs no numpy: ``numpy.frombuffer(r.embedding, "<f4")``); ``model_type`` is the variant
    that computed it. ``retryable`` as in :class:`PairResult`.
    """

    image_id: ImageId
    image: str
    embedding: bytes | None = None
    model_type: str | None = None
    error: str | None = None
    field: str | None = None
    retryable: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class ClientStats:
    """What a client did on the wire: requests, retries by cause, the pair limit learned."""

    requests: int = 0
    pairs_sent: int = 0
    images_sent: int = 0  # to /embed
    retries: Counter[str] = field(default_factory=Counter)
    splits: int = 0  # chunks split again after a 413
    resent: int = 0  # chunks re-sent without the pairs a 422 named
    pair_limit: int | None = None  # learned from a 413 answer
    image_limit: int | None = None  # /embed's, learned from a 413 answer
    largest_request: int = 0
    lowest_concurrency: int = 0  # requests in flight allowed after 429/503 answers, at least

"""Images to unique inputs, embeddings back to per-image answers (``POST /embed``). Pure.

The predictor returns DreamSim's normalised embedding (per-sample mean subtracted, unit L2
norm), the vector the distance is computed on, so ``1 - dot(e_a, e_b)`` is the
``/similarity`` distance (``transformer.scoring``). ``base64`` encoding carries the exact
little-endian float32 bytes, about a quarter of the size of the JSON numbers.

The answer's list is rendered here, to JSON text (:func:`render_embeddings`), each distinct
embedding once, so that the route can do it on a thread: rendering 256 vectors of 1,792
numbers through pydantic models and ``json.dumps`` took the event loop 1.9-3.1 s (probes
timed out) even when the 256 were one image.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .schemas import EmbedImage, ImageEmbedding, PairId

FIELD = "image"
Encoding = Literal["float", "base64"]


@dataclass(frozen=True)
class ImagePlan:
    """Which unique input each image uses.

    Attributes:
        inputs: the distinct image strings, in first-seen order.
        slots: per image, its index in ``inputs``.
        uses: per distinct input, every (image index, ``"image"``) that refers to it.
    """

    inputs: list[str]
    slots: list[int]
    uses: list[list[tuple[int, str]]]


def plan_images(images: Sequence[EmbedImage]) -> ImagePlan:
    """Deduplicate identical image strings of a request."""
    index: dict[str, int] = {}
    inputs: list[str] = []
    uses: list[list[tuple[int, str]]] = []
    slots: list[int] = []
    for i, item in enumerate(images):
        if item.image not in index:
            index[item.image] = len(inputs)
            inputs.append(item.image)
            uses.append([])
        uses[index[item.image]].append((i, FIELD))
        slots.append(index[item.image])
    return ImagePlan(inputs=inputs, slots=slots, uses=uses)


def encode_embedding(vector: np.ndarray, encoding: Encoding) -> list[float] | str:
    """One embedding as the API sends it: float32 values as JSON numbers, or base64 of
    their little-endian bytes."""
    values = np.asarray(vector, dtype="<f4")
    if encoding == "base64":
        return base64.b64encode(values.tobytes()).decode("ascii")
    return values.tolist()  # type: ignore[no-any-return]


def decode_embedding(value: list[float] | str) -> np.ndarray:
    """The inverse of ``encode_embedding`` (for clients and tests)."""
    if isinstance(value, str):
        return np.frombuffer(base64.b64decode(value), dtype="<f4").astype(np.float32)
    return np.asarray(value, dtype=np.float32)


def embeddings_in_order(embeddings: np.ndarray, plan: ImagePlan, rows: Sequence[int],
                        ids: Sequence[PairId], encoding: Encoding) -> list[ImageEmbedding]:
    """One answer per image, in request order.

    Args:
        embeddings: ``[U, D]`` normalised embeddings of the distinct images.
        plan: the request's images as indices into ``plan.inputs``.
        rows: per input of ``plan``, its row in ``embeddings``.
        ids: echoed, one per image.
        encoding: ``float`` or ``base64``.
    """
    assert len(rows) == len(plan.inputs) and embeddings.ndim == 2, "rows do not fit the plan"
    assert all(0 <= r < embeddings.shape[0] for r in rows), (
        f"{embeddings.shape[0]} embeddings for rows up to {max(rows, default=-1)}"
    )
    encoded: dict[int, list[float] | str] = {}  # a repeated image is encoded once
    out = []
    for slot, image_id in zip(plan.slots, ids, strict=True):
        row = rows[slot]
        if row not in encoded:
            encoded[row] = encode_embedding(embeddings[row], encoding)
        out.append(ImageEmbedding(embedding=encoded[row], id=image_id))
    return out


def _dumps(value: object) -> str:
    """JSON as the service answers it (``routes.SafeJSONResponse``): ASCII, compact, no NaN."""
    return json.dumps(value, ensure_ascii=True, allow_nan=False, separators=(",", ":"))


@dataclass(frozen=True)
class RenderedList:
    """A JSON array already rendered to text, for an answer's field (its length counts
    its items, as the list's would)."""

    text: str
    count: int

    def __len__(self) -> int:
        return self.count


def render_embeddings(embeddings: np.ndarray, plan: ImagePlan, rows: Sequence[int],
                      ids: Sequence[PairId], encoding: Encoding) -> RenderedList:
    """``embeddings_in_order`` as the JSON array the answer carries (the same text
    ``[e.model_dump() for e in ...]`` renders to), each distinct embedding rendered once.
    CPU work in proportion to the distinct embeddings: call it off the event loop."""
    assert len(rows) == len(plan.inputs) and embeddings.ndim == 2, "rows do not fit the plan"
    assert all(0 <= r < embeddings.shape[0] for r in rows), (
        f"{embeddings.shape[0]} embeddings for rows up to {max(rows, default=-1)}"
    )
    encoded: dict[int, str] = {}
    parts = []
    for slot, image_id in zip(plan.slots, ids, strict=True):
        row = rows[slot]
        text = encoded.get(row)
        if text is None:
            text = encoded[row] = _dumps(encode_embedding(embeddings[row], encoding))
        parts.append(f'{{"embedding":{text},"id":{_dumps(image_id)}}}')
    return RenderedList(text=f"[{','.join(parts)}]", count=len(parts))

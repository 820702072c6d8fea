"""Pairs to unique images, embeddings back to per-pair scores. Pure functions.

DreamSim's distance is ``1 - cosine(e_a, e_b)``; the predictor returns embeddings already
normalised (zero mean, unit norm, as ``dreamsim`` normalises them), so the cosine is a dot
product. An image that appears more than once in a request is embedded once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .schemas import ImagePair, PairScore

FIELDS = ("reference_image", "generated_image")


@dataclass(frozen=True)
class PairPlan:
    """Which unique input each side of each pair uses.

    Attributes:
        inputs: the distinct image strings, in first-seen order.
        slots: per pair, (index of reference in ``inputs``, index of generated).
        uses: per distinct input, every (pair index, field) that refers to it.
    """

    inputs: list[str]
    slots: list[tuple[int, int]]
    uses: list[list[tuple[int, str]]]


def plan_pairs(pairs: Sequence[ImagePair]) -> PairPlan:
    """Deduplicate identical image strings across all pairs of a request."""
    index: dict[str, int] = {}
    inputs: list[str] = []
    uses: list[list[tuple[int, str]]] = []
    slots: list[tuple[int, int]] = []
    for i, pair in enumerate(pairs):
        sides = []
        for field in FIELDS:
            value = getattr(pair, field)
            if value not in index:
                index[value] = len(inputs)
                inputs.append(value)
                uses.append([])
            uses[index[value]].append((i, field))
            sides.append(index[value])
        slots.append((sides[0], sides[1]))
    return PairPlan(inputs=inputs, slots=slots, uses=uses)


def similarity(distance: float) -> float:
    """The API's similarity: ``1 / (1 + distance)``, in (0, 1]."""
    return 1.0 / (1.0 + distance)


def score_pairs(embeddings: np.ndarray, plan: PairPlan, rows: Sequence[int],
                pair_ids: Sequence[str | int | None]) -> list[PairScore]:
    """Scores in request order.

    Args:
        embeddings: ``[U, D]`` normalised embeddings of the distinct images.
        plan: the request's pairs as indices into ``plan.inputs``.
        rows: per input of ``plan``, its row in ``embeddings``.
        pair_ids: echoed, one per pair.

    The same image on both sides scores exactly 0; float rounding never makes a distance
    negative.
    """
    assert len(rows) == len(plan.inputs) and embeddings.ndim == 2, "rows do not fit the plan"
    assert all(0 <= r < embeddings.shape[0] for r in rows), (
        f"{embeddings.shape[0]} embeddings for rows up to {max(rows, default=-1)}"
    )
    emb = embeddings.astype(np.float64)
    scores = []
    for (input_a, input_b), pair_id in zip(plan.slots, pair_ids, strict=True):
        a, b = rows[input_a], rows[input_b]
        d = 0.0 if a == b else max(0.0, 1.0 - float(emb[a] @ emb[b]))
        scores.append(PairScore(distance=d, similarity=similarity(d), pair_id=pair_id))
    return scores

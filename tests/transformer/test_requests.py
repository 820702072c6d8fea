"""The kinds of request (``transformer.requests``): one parse, then the kind plans, names
its ids and renders its answer (no server; the routes' behaviour is tested against real
servers in ``test_api.py``, ``test_embed.py``, ``test_openai.py``)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
import pytest

from transformer import routes, server
from transformer.errors import BadRequest, TooManyImages, TooManyPairs
from transformer.openai_api import ModelNotFound
from transformer.requests import IMAGES, OPENAI_EMBEDDINGS, PAIRS, Parsed
from transformer.routes import SafeJSONResponse
from transformer.settings import TransformerSettings

SETTINGS = TransformerSettings()
INFO = {"model_type": "dino_vitb16", "embedding_dim": 2}


async def _info() -> dict[str, Any]:
    return INFO


def _render(parsed: Parsed[Any], vectors: np.ndarray) -> dict[str, Any]:
    plan = parsed.plan()
    rows = list(range(len(plan.inputs)))
    answer = asyncio.run(parsed.render(plan, vectors, rows, _info))
    return json.loads(bytes(SafeJSONResponse(answer).body))  # type: ignore[no-any-return]


def test_pairs_plan_ids_and_scores() -> None:
    parsed = PAIRS.parse({"pairs": [
        {"reference_image": "a", "generated_image": "b", "pair_id": "p"},
        {"reference_image": "a", "generated_image": "a", "pair_id": 2, "extra": 1}]}, SETTINGS)
    assert parsed.kind is PAIRS and parsed.id_field == "pair_id"
    assert parsed.plan().inputs == ["a", "b"] and parsed.ids() == ["p", 2]
    assert parsed.log_fields() == {"pairs": 2}
    body = _render(parsed, np.array([[1.0, 0.0], [0.0, 1.0]], np.float32))
    assert [(s["pair_id"], s["distance"]) for s in body["scores"]] == [("p", 1.0), (2, 0.0)]
    assert body["warnings"]  # the unknown field


def test_images_plan_ids_and_embeddings() -> None:
    parsed = IMAGES.parse({"images": [{"image": "a", "id": "x"}, {"image": "a"}]}, SETTINGS)
    assert parsed.kind is IMAGES and parsed.id_field == "id"
    assert parsed.plan().inputs == ["a"] and parsed.ids() == ["x", None]
    assert parsed.log_fields() == {}
    body = _render(parsed, np.array([[0.5, 0.5]], np.float32))
    assert body == {"embeddings": [{"embedding": [0.5, 0.5], "id": "x"},
                                   {"embedding": [0.5, 0.5], "id": None}],
                    "model_type": "dino_vitb16", "dim": 2}


def test_openai_is_embed_in_another_shape() -> None:
    parsed = OPENAI_EMBEDDINGS.parse({"model": "dino_vitb16", "input": ["a", "b", "a"]},
                                     SETTINGS)
    assert parsed.id_field == "id" and parsed.plan().inputs == ["a", "b"]
    asyncio.run(parsed.check(_info))  # the model served: no refusal
    body = _render(parsed, np.array([[1.0, 0.0], [0.0, 1.0]], np.float32))
    assert [d["embedding"] for d in body["data"]] == [[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]
    assert body["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    other = OPENAI_EMBEDDINGS.parse({"model": "ensemble", "input": "a"}, SETTINGS)
    with pytest.raises(ModelNotFound) as info:
        asyncio.run(other.check(_info))
    assert OPENAI_EMBEDDINGS.error_body(info.value)["error"]["code"] == "model_not_found"


def test_limits_and_schema_errors_by_kind() -> None:
    many = SETTINGS.max_pairs_per_request + 1
    with pytest.raises(TooManyPairs):
        PAIRS.parse({"pairs": [{}] * many}, SETTINGS)
    with pytest.raises(TooManyImages):
        IMAGES.parse({"images": [{}] * (SETTINGS.max_images_per_request + 1)}, SETTINGS)
    with pytest.raises(BadRequest) as info:
        IMAGES.parse({"images": [{"id": 7}]}, SETTINGS)
    assert [(e.index, e.id, e.field) for e in info.value.errors] == [(0, 7, "image")]


def test_the_routes_hold_no_service_of_their_own() -> None:
    """The service is bound by closure (``routes.create_app``), not by a module global."""
    assert not hasattr(routes, "_service") and not hasattr(routes, "set_service")
    assert not hasattr(server, "_service") and not hasattr(server, "set_service")

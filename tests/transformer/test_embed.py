"""``POST /embed``: the contract, its agreement with ``/similarity`` for every variant, and
the limits, errors, cache and admission it shares with ``/similarity``.

Real transformer and predictor processes on loopback (random-weight checkpoints in the
upstream layout, ``testing/checkpoints.py``); the pure helpers are tested without a server.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import json
import re
import threading
import time

import httpx
import numpy as np
import pytest

from predictor.layout import VARIANTS
from testing.http_host import ImageHost
from testing.images import b64, distinct_images
from transformer import embeddings as embeddings_module
from transformer import requests as kinds
from transformer.embeddings import (
    decode_embedding,
    embeddings_in_order,
    encode_embedding,
    plan_images,
    render_embeddings,
)
from transformer.inputs import LoadedImages
from transformer.pipeline import ChunkSender
from transformer.routes import SafeJSONResponse
from transformer.schemas import EmbedImage, EmbedRequest
from transformer.server import Batch, SimilarityTransformer
from transformer.settings import TransformerSettings

IMAGES = distinct_images(6, size=160)
SMALL = [b64(x) for x in distinct_images(2, size=64)]  # under the strict service's 50 kB


def embed(url: str, body: object, timeout: float = 120) -> httpx.Response:
    return httpx.post(f"{url}/embed", json=body, timeout=timeout)


def items(*indices: int, ids: bool = True) -> list[dict[str, object]]:
    return [{"image": b64(IMAGES[i]), **({"id": f"im{i}"} if ids else {})} for i in indices]


# --- pure helpers --------------------------------------------------------------------------

def test_plan_deduplicates_identical_strings_in_first_seen_order() -> None:
    plan = plan_images([EmbedImage(image=x) for x in ("a", "b", "a", "c", "b")])
    assert plan.inputs == ["a", "b", "c"]
    assert plan.slots == [0, 1, 0, 2, 1]
    assert plan.uses == [[(0, "image"), (2, "image")], [(1, "image"), (4, "image")],
                         [(3, "image")]]


def test_base64_is_the_little_endian_float32_bytes() -> None:
    vector = np.array([1.0, -0.5, 3.25e-8, 0.1], dtype=np.float32)
    text = encode_embedding(vector, "base64")
    assert isinstance(text, str)
    assert base64.b64decode(text) == vector.astype("<f4").tobytes()
    assert np.array_equal(decode_embedding(text), vector)
    assert np.array_equal(decode_embedding(encode_embedding(vector, "float")), vector)


def test_answers_follow_the_request_order_through_rows() -> None:
    plan = plan_images([EmbedImage(image=x) for x in ("a", "b", "a")])
    vectors = np.array([[0.0, 1.0], [1.0, 0.0]], dtype=np.float32)
    # "b" was decoded first (row 0), "a" came from the cache (row 1)
    out = embeddings_in_order(vectors, plan, rows=[1, 0], ids=["x", 7, None], encoding="float")
    assert [(e.embedding, e.id) for e in out] == [([1.0, 0.0], "x"), ([0.0, 1.0], 7),
                                                 ([1.0, 0.0], None)]


# --- against the real service --------------------------------------------------------------

@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_rendered_answer_is_the_json_of_the_models(encoding: str) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((3, 1792)).astype(np.float32)
    plan = plan_images([EmbedImage(image=x) for x in ("a", "b", "a", "c", "a")])
    ids = ["x", 7, None, "caf\u00e9 \u2028", 10 ** 30]
    rendered = render_embeddings(vectors, plan, [2, 0, 1], ids, encoding)  # type: ignore[arg-type]
    models = embeddings_in_order(vectors, plan, [2, 0, 1], ids, encoding)  # type: ignore[arg-type]
    assert len(rendered) == 5
    assert rendered.text == json.dumps([m.model_dump() for m in models], ensure_ascii=True,
                                       allow_nan=False, separators=(",", ":"))
    response = SafeJSONResponse({"embeddings": rendered, "model_type": "m", "dim": 1792,
                                 "processing_time_ms": 1.5})
    body = json.loads(bytes(response.body))
    assert list(body) == ["embeddings", "model_type", "dim", "processing_time_ms"]
    assert body["embeddings"] == [m.model_dump() for m in models]


def test_embed_answers_are_rendered_off_the_loop_each_vector_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # 256 copies of one image (issue 19, item 10): before, pydantic models and json.dumps
    # rendered 256 x 1,792 numbers on the event loop, 1.9-3.1 s of probe latency.
    encoded: list[str] = []
    real = embeddings_module.encode_embedding

    def counted(vector: np.ndarray, encoding: str) -> object:
        encoded.append(threading.current_thread().name)
        return real(vector, encoding)  # type: ignore[arg-type]

    monkeypatch.setattr(embeddings_module, "encode_embedding", counted)
    service = SimilarityTransformer("dreamsim", TransformerSettings(),
                                    predictor_host="127.0.0.1:1")
    service.predictor_info = {"model_type": "dino_vitb16", "embedding_dim": 4}
    request = EmbedRequest(images=[EmbedImage(image="a", id=i) for i in range(256)])
    plan = plan_images(request.images)
    images = LoadedImages(sender=ChunkSender(None, chunk_images=0), keys=[],
                          cached=np.empty((0, 0), np.float32), rows=[0])
    batch = Batch(parsed=kinds.Parsed(kinds.IMAGES, request), plan=plan, images=images,
                  model_identity=None, embeddings=np.ones((1, 4), np.float32) / 2)

    async def main() -> tuple[dict[str, object], str]:
        return await service.postprocess(batch), threading.current_thread().name

    result, loop_thread = asyncio.run(main())
    assert len(encoded) == 1 and encoded[0] != loop_thread  # once, on a thread
    body = json.loads(bytes(SafeJSONResponse(result).body))
    assert body["embeddings"] == [{"embedding": [0.5] * 4, "id": i} for i in range(256)]


def _counter(metrics_text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", metrics_text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


@pytest.mark.slow
def test_contract_order_ids_and_encodings(service_url: str) -> None:
    body = items(0, 1, 2) + [{"image": b64(IMAGES[0]), "id": 5}, {"image": b64(IMAGES[3])}]
    r = embed(service_url, {"images": body})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert set(answer) == {"embeddings", "model_type", "dim", "processing_time_ms"}
    assert answer["model_type"] == "dino_vitb16" and answer["dim"] == 768
    assert answer["processing_time_ms"] > 0
    assert [e["id"] for e in answer["embeddings"]] == ["im0", "im1", "im2", 5, None]
    vectors = np.array([e["embedding"] for e in answer["embeddings"]])
    assert vectors.shape == (5, 768)
    # normalised as DreamSim normalises: zero mean, unit norm
    assert np.abs(vectors.mean(axis=1)).max() < 1e-6
    assert np.abs(np.linalg.norm(vectors, axis=1) - 1).max() < 1e-5
    assert np.array_equal(vectors[0], vectors[3])  # the same image twice
    assert not np.allclose(vectors[0], vectors[1])

    as_b64 = embed(service_url, {"images": body, "encoding": "base64"}).json()
    decoded = np.stack([decode_embedding(e["embedding"]) for e in as_b64["embeddings"]])
    assert np.array_equal(decoded, vectors.astype(np.float32))
    # reversed request, reversed answer
    rev = embed(service_url, {"images": body[::-1]}).json()["embeddings"]
    assert [e["id"] for e in rev] == [None, 5, "im2", "im1", "im0"]
    assert np.allclose(np.array([e["embedding"] for e in rev])[::-1], vectors, atol=1e-6)


@pytest.mark.slow
def test_empty_request_still_names_the_model(service_url: str) -> None:
    r = embed(service_url, {"images": []})
    assert r.status_code == 200, r.text
    assert r.json()["embeddings"] == []
    assert (r.json()["model_type"], r.json()["dim"]) == ("dino_vitb16", 768)


@pytest.mark.slow
def test_duplicates_decoded_once_and_repeats_served_from_the_cache(service_url: str) -> None:
    fresh = [b64(x) for x in distinct_images(9, size=176)[6:]]
    body = [{"image": fresh[0]}, {"image": fresh[1]}, {"image": fresh[0]},
            {"image": "data:image/png;base64," + fresh[0]}]
    before = httpx.get(f"{service_url}/metrics", timeout=10).text
    first = embed(service_url, {"images": body})
    middle = httpx.get(f"{service_url}/metrics", timeout=10).text
    second = embed(service_url, {"images": body})
    after = httpx.get(f"{service_url}/metrics", timeout=10).text
    assert first.status_code == second.status_code == 200
    decoded = 'similarity_images_total{outcome="decoded"}'
    hits = "similarity_embedding_cache_hits_total"
    # 3 distinct strings, 2 distinct pixel arrays: 2 images decoded and embedded
    assert _counter(middle, decoded) - _counter(before, decoded) == 2
    assert _counter(after, decoded) == _counter(middle, decoded)  # nothing decoded again
    assert _counter(after, hits) - _counter(middle, hits) == 3
    assert first.json()["embeddings"] == second.json()["embeddings"]
    assert _counter(after, 'embed_requests_total{code="200"}') >= 2


@pytest.mark.slow
def test_openapi_documents_embed(service_url: str) -> None:
    doc = httpx.get(f"{service_url}/openapi.json", timeout=10).json()
    op = doc["paths"]["/embed"]["post"]
    schema = op["requestBody"]["content"]["application/json"]["schema"]
    assert schema["required"] == ["images"]
    assert schema["properties"]["encoding"]["enum"] == ["float", "base64"]
    assert {"200", "413", "422", "429", "503"} <= set(op["responses"])


@pytest.mark.slow
def test_every_failing_image_is_named_by_index_id_and_reason(
        strict_url: str, image_host: ImageHost) -> None:
    big = distinct_images(1, size=512)[0]  # over the 50 kB limit
    missing = image_host.add("embed-present.png", IMAGES[1]).replace("present", "absent")
    body = [{"image": SMALL[0], "id": "ok"}, {"image": "not base64!!", "id": 7},
            {"image": missing}]
    r = embed(strict_url, {"images": body})
    assert r.status_code == 422
    errors = r.json()["errors"]
    assert [(e["index"], e["id"], e["field"]) for e in errors] == [(1, 7, "image"),
                                                                   (2, None, "image")]
    assert "base64" in errors[0]["reason"] and "404" in errors[1]["reason"]
    r = embed(strict_url, {"images": [{"image": b64(big), "id": "big"}]})
    assert r.status_code == 422 and "limit" in r.json()["errors"][0]["reason"]
    assert r.json()["errors"][0]["id"] == "big"


@pytest.mark.slow
def test_embed_and_similarity_share_admission(strict_url: str, image_host: ImageHost) -> None:
    slow = {"images": [{"image": f"{image_host.base}/slow"}]}  # holds the one slot ~2 s
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        holder = pool.submit(embed, strict_url, slow)
        time.sleep(0.5)
        started = time.perf_counter()
        refused = embed(strict_url, {"images": [{"image": SMALL[0]}]})
        pairs = [{"reference_image": SMALL[0], "generated_image": SMALL[1]}]
        refused_too = httpx.post(f"{strict_url}/similarity", json={"pairs": pairs}, timeout=30)
        assert time.perf_counter() - started < 1.0
        assert refused.status_code == refused_too.status_code == 429
        assert refused.headers.get("Retry-After")
        assert holder.result(timeout=30).status_code == 422  # the slow URL timed out
    assert embed(strict_url, {"images": [{"image": SMALL[0]}]}).status_code == 200


# --- /embed against /similarity ------------------------------------------------------------
# For every variant this is checked without a server, on the fidelity tests' embeddings
# (tests/predictor/test_fidelity.py: check_embed_matches_similarity); here once through the
# real processes.

@pytest.mark.slow
def test_one_minus_dot_of_embeddings_is_the_similarity_distance(service_url: str) -> None:
    fresh = [b64(x) for x in distinct_images(12, size=144)[9:]]  # not cached by other tests
    pairs = [(0, 1), (1, 2), (2, 0)]
    # /embed first: it runs the model; /similarity then reads the same rows from the cache,
    # so the two answers must agree to the last bit of float32.
    e = embed(service_url, {"images": [{"image": x} for x in fresh], "encoding": "base64"})
    assert e.status_code == 200, e.text
    r = httpx.post(f"{service_url}/similarity", json={"pairs": [
        {"reference_image": fresh[a], "generated_image": fresh[b]} for a, b in pairs]},
        timeout=120)
    assert r.status_code == 200, r.text
    answer = e.json()
    assert answer["model_type"] == "dino_vitb16"
    assert answer["dim"] == VARIANTS["dino_vitb16"].embedding_dim
    vectors = np.stack([decode_embedding(x["embedding"]) for x in answer["embeddings"]])
    assert vectors.shape == (3, answer["dim"])
    vectors64 = vectors.astype(np.float64)
    for (a, b), score in zip(pairs, r.json()["scores"], strict=True):
        assert abs((1 - vectors64[a] @ vectors64[b]) - score["distance"]) < 1e-6

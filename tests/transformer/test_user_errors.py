"""What a new user's usual mistakes get back: misspelt fields named, items described in
the API's words, one identity field per error item (issue 23, item 8).

Against the real transformer and predictor of the session (``service_url``), except the
bounds of the warnings, which are a pure function."""

from __future__ import annotations

import httpx
import pytest

from testing.images import b64, distinct_images
from transformer.schemas import EmbedImage, EmbedRequest, ImagePair, SimilarityRequest
from transformer.unknown_fields import MAX_WARNINGS, unknown_fields


@pytest.fixture(scope="module")
def images() -> list[bytes]:
    return distinct_images(2, size=64)


def test_misspelt_fields_are_named_in_warnings(service_url: str, images: list[bytes]) -> None:
    pair = {"reference_image": b64(images[0]), "generated_image": b64(images[1])}
    r = httpx.post(f"{service_url}/similarity", timeout=120, json={
        "pairs": [{**pair, "pairid": "a"}, {**pair, "pairid": "b"}], "pair": 1})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [s["pair_id"] for s in body["scores"]] == [None, None]  # still ignored: the contract
    assert body["warnings"] == [
        "unknown field 'pair' ignored (did you mean 'pairs'?)",
        "unknown field 'pairid' in pairs[0] ignored (did you mean 'pair_id'?); "
        "also in 1 more of the pairs",
    ]
    r = httpx.post(f"{service_url}/embed", timeout=120, json={
        "images": [{"image": b64(images[0]), "ID": 3}], "encodng": "base64"})
    assert r.status_code == 200, r.text
    assert isinstance(r.json()["embeddings"][0]["embedding"], list)  # encoding ignored
    assert r.json()["warnings"] == [
        "unknown field 'encodng' ignored (did you mean 'encoding'?)",
        "unknown field 'ID' in images[0] ignored (did you mean 'id'?)",
    ]


def test_a_clean_request_has_no_warnings_key(service_url: str, images: list[bytes]) -> None:
    r = httpx.post(f"{service_url}/similarity", timeout=120, json={"pairs": [
        {"reference_image": b64(images[0]), "generated_image": b64(images[1]), "pair_id": 1}]})
    assert r.status_code == 200 and "warnings" not in r.json()


def test_error_items_carry_the_routes_own_identity(service_url: str) -> None:
    r = httpx.post(f"{service_url}/similarity", timeout=60, json={"pairs": [
        {"reference_image": "!!", "generated_image": "!!", "pair_id": "p"}]})
    assert r.status_code == 422
    for item in r.json()["errors"]:
        assert item["pair_id"] == "p" and "id" not in item, item
    r = httpx.post(f"{service_url}/embed", timeout=60, json={"images": [
        {"image": "!!", "id": "i"}]})
    assert r.status_code == 422
    for item in r.json()["errors"]:
        assert item["id"] == "i" and "pair_id" not in item, item
    r = httpx.post(f"{service_url}/similarity", timeout=60, json={"pairs": [
        {"reference_image": "!!", "generated_image": "!!"}]})
    assert all(item["pair_id"] is None and "id" not in item for item in r.json()["errors"])


@pytest.mark.parametrize(("route", "body", "field", "words"), [
    ("/embed", {"images": ["aGVsbG8="]}, "images", '{"image": "<base64, data URI or URL>"'),
    ("/similarity", {"pairs": ["aGVsbG8="]}, "pairs", '{"reference_image": "<base64, data URI'),
    ("/embed", ["aGVsbG8="], "body", 'the body must be a JSON object: {"images": ['),
    ("/similarity", "x", "body", 'the body must be a JSON object: {"pairs": ['),
])
def test_a_wrong_shape_is_described_in_the_apis_words(
        service_url: str, route: str, body: object, field: str, words: str) -> None:
    r = httpx.post(f"{service_url}{route}", json=body, timeout=60)
    assert r.status_code == 422, r.text
    (item,) = r.json()["errors"]
    assert item["field"] == field and words in item["reason"], item
    for internal in ("EmbedImage", "ImagePair", "EmbedRequest", "SimilarityRequest"):
        assert internal not in r.text


def test_warnings_are_bounded_whatever_the_body() -> None:
    body = {"pairs": [{"reference_image": "x", "generated_image": "y",
                       **{f"f{i}-{j}": 1 for j in range(50)}} for i in range(100)],
            **{"z" * 10_000 + str(k): 1 for k in range(5)}}
    warnings = unknown_fields(body, SimilarityRequest, "pairs", ImagePair)
    assert len(warnings) == MAX_WARNINGS + 1 and warnings[-1] == "more unknown fields left out"
    assert max(len(w) for w in warnings) < 200
    assert unknown_fields({"images": [{"image": "x", "id": 1}]}, EmbedRequest, "images",
                          EmbedImage) == []

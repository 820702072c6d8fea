"""``POST /v1/embeddings`` and ``GET /v1/models``: OpenAI's embeddings API over images.

The official ``openai`` client talks to the real transformer and predictor of the session
(``service_url``, random dino_vitb16 weights): the vectors are ``/embed``'s, bit for bit;
the errors reach the client as its own exceptions, with the service's message. The pure
translation (``transformer.openai_api``) is tested without a server.
"""

from __future__ import annotations

import base64
import io
import re
import time

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from testing.http_host import ImageHost
from testing.images import b64, distinct_images
from transformer import openai_api
from transformer.embeddings import decode_embedding
from transformer.errors import ImageErrors, ServiceError
from transformer.routes_guard import is_allowed
from transformer.schemas import ErrorItem

MODEL = "dino_vitb16"  # what the session's predictor runs


def reencoded(data: bytes, level: int) -> str:
    """The same pixels as other PNG bytes (another zlib level): another cache key, so the
    model really runs on it again."""
    buf = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").save(buf, "PNG", compress_level=level)
    return b64(buf.getvalue())


def metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    match = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


DECODED = 'similarity_images_total{outcome="decoded"}'


@pytest.fixture(scope="module")
def client(service_url: str) -> openai.OpenAI:
    # The service does no authentication (the gateway does): any key will do.
    return openai.OpenAI(base_url=f"{service_url}/v1", api_key="unused", max_retries=0,
                         timeout=120)


# --- the guard and the pure translation ----------------------------------------------------

def test_guard_lets_exactly_the_two_openai_paths_through() -> None:
    assert is_allowed("/v1/embeddings") and is_allowed("/v1/models")
    assert not any(is_allowed(p) for p in (
        "/v1/models/dreamsim:predict", "/v1/models/dreamsim:explain", "/v1/models/dreamsim",
        "/v1/models/", "/v1/embeddings/", "/v1", "/v1/chat/completions",
        "/openai/v1/embeddings", "/openai/v1/models"))


def test_parse_takes_one_string_or_a_list() -> None:
    one = openai_api.parse({"model": "m", "input": "abc"}, limit=4)
    assert [i.image for i in one.embed.images] == ["abc"] and one.embed.encoding == "float"
    many = openai_api.parse({"model": "m", "input": ["a", "b", "a"], "encoding_format": "base64",
                             "user": "u", "extra": 1}, limit=4)
    assert [i.image for i in many.embed.images] == ["a", "b", "a"]
    assert many.embed.encoding == "base64" and many.model == "m"


def test_inputs_are_counted_before_validation() -> None:
    with pytest.raises(ServiceError) as e:
        openai_api.parse({"model": 1, "input": [None] * 5}, limit=4)  # invalid AND too many
    assert e.value.status_code == 413
    assert "MAX_IMAGES_PER_REQUEST" in e.value.detail and "limit is 4" in e.value.detail


@pytest.mark.parametrize(("body", "param"), [
    ({"input": ["a"]}, "model"),
    ({"model": "m", "input": ["a", 3, [1, 2]]}, "input[1]"),  # token arrays are not images
    ({"model": "m", "input": 5}, "input"),
    ({"model": "m", "input": ["a"], "encoding_format": "hex"}, "encoding_format"),
    ([], "body"),
])
def test_schema_errors_name_the_field(body: object, param: str) -> None:
    with pytest.raises(ServiceError) as e:
        openai_api.parse(body, limit=4)
    assert e.value.status_code == 422
    error = openai_api.error_body(e.value)["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert param in error["message"]


def test_error_body_is_openai_shape_naming_each_input() -> None:
    e = ImageErrors("2 image(s) could not be used", [
        ErrorItem(index=1, field="image", reason="not valid base64"),
        ErrorItem(index=3, field="image", reason="URL answered HTTP 404")])
    body = openai_api.error_body(e)
    assert set(body) == {"error"}
    assert body["error"] == {
        "message": "2 image(s) could not be used: input[1]: not valid base64; "
                   "input[3]: URL answered HTTP 404",
        "type": "invalid_request_error", "param": "input[1]", "code": "image_errors",
        "errors": [{"index": 1, "field": "input", "reason": "not valid base64"},
                   {"index": 3, "field": "input", "reason": "URL answered HTTP 404"}]}


def test_model_and_dimensions_checked() -> None:
    parsed = openai_api.parse({"model": "clip_vitb32", "input": []}, limit=4)
    with pytest.raises(openai_api.ModelNotFound, match="'clip_vitb32' is not served"):
        openai_api.check_model(parsed, model_type=MODEL, dim=768)
    parsed = openai_api.parse({"model": MODEL, "input": [], "dimensions": 256}, limit=4)
    with pytest.raises(ServiceError, match="not truncated"):
        openai_api.check_model(parsed, model_type=MODEL, dim=768)
    openai_api.check_model(openai_api.parse({"model": MODEL, "input": [], "dimensions": 768},
                                            limit=4), model_type=MODEL, dim=768)


# --- the official client against the real service ------------------------------------------

@pytest.mark.slow
def test_model_list_names_the_variant_and_its_size(client: openai.OpenAI) -> None:
    (model,) = client.models.list().data
    assert model.id == MODEL and model.object == "model"
    assert model.model_extra == {"dim": 768, "max_images_per_request": 256}


@pytest.mark.slow
def test_vectors_are_embeds_bit_for_bit(client: openai.OpenAI, service_url: str,
                                        image_host: ImageHost) -> None:
    raw = distinct_images(9, size=96)[6:]  # not used by other tests: nothing cached
    # The same pixels in other bytes for each route: each misses the cache, so the model
    # runs on both, in the same batch shape.
    for_embed = [reencoded(x, 1) for x in raw]
    for_openai = [reencoded(x, 9) for x in raw]
    assert not set(for_embed) & set(for_openai)
    decoded = metric(service_url, DECODED)
    r = httpx.post(f"{service_url}/embed", json={"images": [{"image": x} for x in for_embed]},
                   timeout=120)
    assert r.status_code == 200, r.text
    expected = np.array([e["embedding"] for e in r.json()["embeddings"]], dtype=np.float32)
    assert metric(service_url, DECODED) - decoded == 3

    decoded = metric(service_url, DECODED)
    # the client's default: it asks for base64 and decodes it itself
    got = client.embeddings.create(model=MODEL, input=for_openai)
    assert metric(service_url, DECODED) - decoded == 3, "not served from the cache"
    assert got.object == "list" and got.model == MODEL
    assert [d.index for d in got.data] == [0, 1, 2]
    assert all(d.object == "embedding" for d in got.data)
    assert np.array_equal(np.array([d.embedding for d in got.data], dtype=np.float32),
                          expected)
    assert (got.usage.prompt_tokens, got.usage.total_tokens) == (3, 3)

    # floats, every input form (base64, data URI, URL), a repeat, all from the cache now
    url = image_host.add("openai-0.png", base64.b64decode(for_openai[0]))
    inputs = [for_openai[2], "data:image/png;base64," + for_openai[1], url, for_openai[2]]
    floats = client.embeddings.create(model=MODEL, input=inputs, encoding_format="float")
    assert np.array_equal(np.array([d.embedding for d in floats.data], dtype=np.float32),
                          expected[[2, 1, 0, 2]])
    assert floats.usage.total_tokens == 4  # every input counted, repeats and cached too

    # base64 on the wire: the little-endian float32 bytes of the same vectors
    wire = httpx.post(f"{service_url}/v1/embeddings", json={
        "model": MODEL, "input": for_openai, "encoding_format": "base64"}, timeout=120)
    assert wire.status_code == 200, wire.text
    assert set(wire.json()) == {"object", "data", "model", "usage"}
    assert np.array_equal(np.stack([decode_embedding(d["embedding"])
                                    for d in wire.json()["data"]]), expected)

    one = client.embeddings.create(model=MODEL, input=for_openai[1])  # a single string
    assert len(one.data) == 1 and np.array_equal(np.asarray(one.data[0].embedding, np.float32),
                                                 expected[1])


@pytest.mark.slow
def test_shares_embeds_metrics_and_access_log(client: openai.OpenAI, service_url: str) -> None:
    ok = 'openai_embeddings_requests_total{code="200"}'
    before = metric(service_url, ok)
    image = b64(distinct_images(1, size=64)[0])
    raw = client.embeddings.with_raw_response.create(model=MODEL, input=[image],
                                                     extra_headers={"X-Request-ID": "oa-1"})
    assert raw.headers["x-request-id"] == "oa-1"  # the access log's middleware saw it
    assert len(raw.parse().data) == 1 and raw.parse().model == MODEL
    assert metric(service_url, ok) - before == 1


@pytest.mark.slow
def test_wrong_model_is_404_before_any_image_is_touched(client: openai.OpenAI,
                                                        service_url: str) -> None:
    fetches = metric(service_url, "similarity_url_fetch_seconds_count")
    with pytest.raises(openai.NotFoundError) as e:
        client.embeddings.create(model="text-embedding-3-small",
                                 input=["http://127.0.0.2:9/never-fetched"])
    assert "'text-embedding-3-small' is not served here" in e.value.message
    assert f"'{MODEL}'" in e.value.message
    assert e.value.code == "model_not_found" and e.value.param == "model"
    assert metric(service_url, "similarity_url_fetch_seconds_count") == fetches


@pytest.mark.slow
def test_bad_images_are_422_naming_each_input(client: openai.OpenAI,
                                              image_host: ImageHost) -> None:
    good = b64(distinct_images(1, size=64)[0])
    missing = image_host.add("openai-present.png", b"x").replace("present", "absent")
    with pytest.raises(openai.UnprocessableEntityError) as e:
        client.embeddings.create(model=MODEL, input=[good, "not base64!!", missing])
    assert e.value.code == "image_errors" and e.value.param == "input[1]"
    assert "input[1]: " in e.value.message and "base64" in e.value.message
    assert "input[2]: " in e.value.message and "404" in e.value.message
    assert "input[0]" not in e.value.message
    body = e.value.body
    assert isinstance(body, dict) and [i["index"] for i in body["errors"]] == [1, 2]


@pytest.mark.slow
def test_same_limits_as_embed(client: openai.OpenAI) -> None:
    started = time.perf_counter()
    with pytest.raises(openai.APIStatusError) as e:
        client.embeddings.create(model=MODEL, input=["http://127.0.0.2:9/never"] * 257)
    assert e.value.status_code == 413
    assert "limit is 256" in e.value.message and "MAX_IMAGES_PER_REQUEST" in e.value.message
    assert time.perf_counter() - started < 5
    with pytest.raises(openai.UnprocessableEntityError) as e:
        client.embeddings.create(model=MODEL, input=[[1, 2, 3]])  # tokens
    assert "token arrays are text, not images" in e.value.message
    with pytest.raises(openai.UnprocessableEntityError, match="not truncated"):
        client.embeddings.create(model=MODEL, input=[], dimensions=64)


@pytest.mark.slow
def test_openapi_documents_the_openai_routes(service_url: str) -> None:
    doc = httpx.get(f"{service_url}/openapi.json", timeout=30).json()
    op = doc["paths"]["/v1/embeddings"]["post"]
    schema = op["requestBody"]["content"]["application/json"]["schema"]
    assert set(schema["required"]) == {"model", "input"}
    assert schema["properties"]["encoding_format"]["enum"] == ["float", "base64"]
    assert {"200", "404", "413", "422", "429", "503"} <= set(op["responses"])
    assert "get" in doc["paths"]["/v1/models"]

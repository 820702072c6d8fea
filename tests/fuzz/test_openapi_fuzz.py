"""OpenAPI-driven fuzzing of the public routes, and hostile raw bodies, against real servers.

The transformer's ``/openapi.json`` lists the public routes only; the public API
(``POST /similarity``, ``POST /embed``, ``GET /health``, ``POST /v1/embeddings``,
``GET /v1/models``) is fuzzed. Schemathesis generates
requests from the document, both schema-valid (positive) and schema-invalid (negative), and
checks: no 5xx, documented status codes and content types, bodies that match the documented
schemas, and negative data refused. Then hand-written hostile bodies, each of which must get
a 4xx with a JSON body, after which the service must still score a valid pair exactly as
before.

Generated image strings are random, so no generated request reaches the model: the suite
stays fast. URLs that get a 422 (unreachable, or refused by the address policy) are fine.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from PIL import Image
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

PUBLIC_PATHS = ("/similarity", "/embed", "/health", "/v1/embeddings", "/v1/models")
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


@pytest.fixture(scope="module")
def client(service_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service_url, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def openapi_doc(client: httpx.Client) -> dict[str, Any]:
    r = client.get("/openapi.json")
    assert r.status_code == 200, r.text[:500]
    doc = r.json()
    assert set(PUBLIC_PATHS) <= set(doc["paths"]), sorted(doc["paths"])
    return doc


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), f"external $ref {ref!r}"
    node: Any = doc
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"$ref {ref!r} does not resolve"
        node = node[part]
    return node


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def test_public_routes_refs_resolve(openapi_doc: dict[str, Any]) -> None:
    """Every $ref reachable from the public routes points at something in the document
    (clients generate code from it; an unresolvable ref breaks them)."""
    seen: set[str] = set()
    todo = [ref for path in PUBLIC_PATHS for ref in _refs(openapi_doc["paths"][path])]
    broken = []
    while todo:
        ref = todo.pop()
        if ref in seen:
            continue
        seen.add(ref)
        try:
            todo.extend(_refs(_resolve(openapi_doc, ref)))
        except AssertionError:
            broken.append(ref)
    assert not broken, f"unresolvable $ref in the public routes: {sorted(broken)}"


@pytest.fixture(scope="module")
def api_schema(openapi_doc: dict[str, Any]) -> schemathesis.BaseSchema:
    # The document as served: no repair, so a schema that clients could not use fails here
    # as it fails test_public_routes_refs_resolve.
    schema = schemathesis.openapi.from_dict(openapi_doc)
    return schema.include(path_regex=r"^/(similarity|embed|health|v1/embeddings|v1/models)$")


@pytest.mark.parametrize(("path", "method", "mode", "examples"), [
    ("/similarity", "POST", GenerationMode.POSITIVE, 150),
    ("/similarity", "POST", GenerationMode.NEGATIVE, 150),
    ("/embed", "POST", GenerationMode.POSITIVE, 100),
    ("/embed", "POST", GenerationMode.NEGATIVE, 100),
    ("/health", "GET", GenerationMode.POSITIVE, 5),
    ("/v1/embeddings", "POST", GenerationMode.POSITIVE, 60),
    ("/v1/embeddings", "POST", GenerationMode.NEGATIVE, 60),
    ("/v1/models", "GET", GenerationMode.POSITIVE, 5),
], ids=["similarity-positive", "similarity-negative", "embed-positive", "embed-negative",
        "health", "openai-positive", "openai-negative", "openai-models"])
def test_schemathesis(service_url: str, api_schema: schemathesis.BaseSchema, path: str,
                      method: str, mode: GenerationMode, examples: int) -> None:
    operation = api_schema[path][method]
    checks = CHECKS + ([negative_data_rejection] if mode == GenerationMode.NEGATIVE else [])
    statuses: list[int] = []

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: schemathesis.Case) -> None:
        response = case.call_and_validate(base_url=service_url, checks=checks, timeout=120)
        statuses.append(response.status_code)

    run()
    print(f"{path} {mode.value}: {len(statuses)} requests, statuses "
          f"{ {s: statuses.count(s) for s in sorted(set(statuses))} }")
    # the fuzzer did reach the service (GET /health has one possible request)
    assert len(statuses) >= (1 if method == "GET" else examples // 2)


def test_only_public_routes_are_fuzzed(api_schema: schemathesis.BaseSchema) -> None:
    operations = list(api_schema.get_all_operations())
    assert all(isinstance(op, Ok) for op in operations), operations  # no unparsable route
    labels = sorted(op.ok().label for op in operations if isinstance(op, Ok))
    assert labels == ["GET /health", "GET /v1/models", "POST /embed", "POST /similarity",
                      "POST /v1/embeddings"]


# --- hostile raw bodies --------------------------------------------------------------------

def _png(seed: int) -> str:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


A, B = _png(1), _png(2)
VALID = {"pairs": [{"reference_image": A, "generated_image": B, "pair_id": "probe"}]}
JSON = {"Content-Type": "application/json"}


def _body(pairs_json: str) -> bytes:
    return ('{"pairs": ' + pairs_json + "}").encode()


def _pair(ref: str = A, gen: str = B, pair_id: str = '"x"') -> str:
    return f'[{{"reference_image": {json.dumps(ref)}, "generated_image": {json.dumps(gen)}, ' \
           f'"pair_id": {pair_id}}}]'


HOSTILE: dict[str, tuple[bytes, dict[str, str]]] = {
    "non-utf8": (b'{"pairs": [{"reference_image": "\xff\xfe\xfd", "generated_image": "x"}]}',
                 JSON),
    "non-utf8-garbage": (bytes(range(128, 256)) * 8, JSON),
    "empty-body": (b"", JSON),
    "nested-10k-arrays": (b"[" * 10_000 + b"]" * 10_000, JSON),
    "nested-10k-in-pairs": (_body("[" * 10_000 + "]" * 10_000), JSON),
    "nested-10k-objects": (b'{"a":' * 10_000 + b"1" + b"}" * 10_000, JSON),
    "unterminated-nesting": (b"[" * 100_000, JSON),
    "number-100k-digits": (_body("1" * 100_000), JSON),
    "pair-id-100k-digits": (_body(_pair(pair_id="9" * 100_000)), JSON),
    "float-100k-digits": (_body("0." + "1" * 100_000), JSON),
    "exponent-overflow": (_body(_pair(pair_id="1e999999")), JSON),
    "nan-literal": (_body(_pair(pair_id="NaN")), JSON),
    "pairs-null": (b'{"pairs": null}', JSON),
    "pairs-string": (b'{"pairs": "x"}', JSON),
    "pairs-object": (b'{"pairs": {"0": {}}}', JSON),
    "body-array": (b"[]", JSON),
    "body-scalar": (b"123", JSON),
    "huge-pair-id": (_body(_pair(pair_id=json.dumps("p" * 1_000_000))), JSON),
    "pair-id-bool": (_body(_pair(pair_id="true")), JSON),
    "pair-id-lone-surrogate": (_body(_pair(pair_id='"\\ud800"')), JSON),
    "pair-id-surrogate-bad-image": (_body(_pair(ref="!", pair_id='"\\udfff"')), JSON),
    "image-lone-surrogate": (_body(_pair(ref="\ud800")), JSON),
    "url-unclosed-ipv6": (_body(_pair(ref="http://[::1/x.png")), JSON),
    "url-surrogate-path": (_body(_pair(ref="http://example.invalid/\ud800.png")), JSON),
    "url-surrogate-host": (_body(_pair(ref="http://\ud800/x.png")), JSON),
    "url-bad-idna": (_body(_pair(ref="http://xn--/x.png")), JSON),
    "url-nul-host": (_body(_pair(ref="http://a\u0000b/x.png")), JSON),
    "url-empty-host-port": (_body(_pair(ref="http://:80/x.png")), JSON),
    "url-bad-port": (_body(_pair(ref="http://127.0.0.1:99999999/x.png")), JSON),
    "duplicate-keys": (b'{"pairs": [], "pairs": null}', JSON),
    "trailing-garbage": (json.dumps(VALID).encode() + b" x", JSON),
    "form-encoded": (b"pairs=1", {"Content-Type": "application/x-www-form-urlencoded"}),
    "wrong-content-type-bad-body": (b"<xml/>", {"Content-Type": "text/xml"}),
    "utf16-bom": ('{"pairs": null}'.encode("utf-16"), JSON),
}


def _post_valid(client: httpx.Client) -> float:
    r = client.post("/similarity", json=VALID)
    assert r.status_code == 200, r.text[:500]
    scores = r.json()["scores"]
    assert len(scores) == 1 and scores[0]["pair_id"] == "probe"
    return float(scores[0]["distance"])


@pytest.fixture(scope="module")
def baseline(client: httpx.Client) -> float:
    distance = _post_valid(client)
    assert 0 < distance <= 2
    return distance


def _assert_json_4xx(r: httpx.Response) -> dict[str, Any]:
    assert 400 <= r.status_code < 500, f"HTTP {r.status_code}: {r.text[:300]!r}"
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert isinstance(body.get("detail"), str) and body["detail"], body
    assert "Traceback" not in r.text
    return body


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_body(client: httpx.Client, baseline: float, name: str) -> None:
    content, headers = HOSTILE[name]
    r = client.post("/similarity", content=content, headers=headers)
    _assert_json_4xx(r)
    assert _post_valid(client) == pytest.approx(baseline, abs=1e-6)


def test_valid_body_with_wrong_content_type(client: httpx.Client, baseline: float) -> None:
    """The route reads the body whatever its Content-Type: a valid JSON body sent as
    text/plain is scored, exactly as with application/json. (Should the service start
    enforcing the media type, that is a contract change: change this test with it.)"""
    r = client.post("/similarity", content=json.dumps(VALID).encode(),
                    headers={"Content-Type": "text/plain"})
    assert r.status_code == 200, r.text[:300]
    assert r.json()["scores"][0]["distance"] == pytest.approx(baseline, abs=1e-6)
    assert _post_valid(client) == pytest.approx(baseline, abs=1e-6)


def test_health_after_fuzzing(client: httpx.Client) -> None:
    r = client.get("/health")
    assert r.status_code == 200 and r.json()["model_loaded"] is True, r.text

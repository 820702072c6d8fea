"""KServe's generic routes on a real transformer process: refused before any work, while
the probes, the metrics and the public routes keep answering.

The predictor is the fake one (``fake_predictor``): these tests are about which routes the
transformer serves, and a generic route that got through would score the pair through it.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from testing.fake_predictor import fake_predictor
from testing.images import b64, distinct_images
from tests.conftest import start_transformer

pytestmark = pytest.mark.slow

IMAGES = [b64(i) for i in distinct_images(2, size=64)]
PAIRS = {"pairs": [{"reference_image": IMAGES[0], "generated_image": IMAGES[1]}]}


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("logs") / "transformer.log"
    with fake_predictor() as grpc_host, start_transformer(grpc_host, log) as base:
        yield base


# What KServe's model server adds to the app (kserve 0.21, rest/v1_endpoints.py,
# v2_endpoints.py, server.py), each with a body that would score the pair if it got through.
V2_BODY = {"inputs": [{"name": "pairs", "shape": [1], "datatype": "BYTES", "data": [PAIRS]}]}
GENERIC = [
    ("POST", "/v1/models/dreamsim:predict", PAIRS),
    ("POST", "/v1/models/dreamsim:explain", PAIRS),
    ("POST", "/v2/models/dreamsim/infer", V2_BODY),
    ("POST", "/v2/models/dreamsim/versions/1/infer", V2_BODY),
    ("POST", "/v2/repository/models/dreamsim/unload", None),
    ("POST", "/v2/repository/models/dreamsim/load", None),
    ("GET", "/v1/models/dreamsim", None),
    ("GET", "/v1/models/dino_vitb16", None),
    # KServe's OpenAI data plane (when vLLM is installed) and OpenAI routes not served
    ("POST", "/openai/v1/embeddings", {"model": "dreamsim", "input": IMAGES}),
    ("GET", "/openai/v1/models", None),
    ("POST", "/v1/chat/completions", {"model": "dreamsim", "messages": []}),
    ("GET", "/v2", None),
    ("GET", "/v2/models", None),
    ("GET", "/v2/models/dreamsim", None),
    ("GET", "/", None),
    ("GET", "/docs", None),
    ("GET", "/redoc", None),
]


@pytest.mark.parametrize(("method", "path", "body"), GENERIC)
def test_generic_routes_are_refused(url: str, method: str, path: str, body: object) -> None:
    r = httpx.request(method, url + path, json=body, timeout=30)
    assert r.status_code == 404, (path, r.status_code, r.text[:300])
    detail = r.json()["detail"]
    assert path in detail and "POST /similarity" in detail
    assert "scores" not in r.text


def test_refused_before_the_body_is_read(url: str) -> None:
    """A body over any limit is answered at once: the guard never reads it."""
    huge = b"x" * 50_000_000
    r = httpx.post(f"{url}/v2/models/dreamsim/infer", content=huge, timeout=30,
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 404


def test_probes_metrics_and_public_routes_still_answer(url: str) -> None:
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/dreamsim/ready",
                 "/health", "/metrics"):
        r = httpx.get(url + path, timeout=30)
        assert r.status_code == 200, (path, r.text[:300])
    r = httpx.post(f"{url}/similarity", json=PAIRS, timeout=60)
    assert r.status_code == 200, r.text
    assert len(r.json()["scores"]) == 1
    # The model was not unloaded by the refused repository calls above.
    assert httpx.get(f"{url}/v2/models/dreamsim/ready", timeout=30).status_code == 200


def test_openai_routes_are_ours_not_kserves(url: str) -> None:
    """``GET /v1/models`` is KServe's v1 model list too: the transformer's own route answers
    (in OpenAI's shape; the fake predictor names no model, so that is a 502)."""
    r = httpx.get(f"{url}/v1/models", timeout=30)
    assert r.status_code == 502, r.text
    assert r.json()["error"]["code"] == "predictor_failed" and "models" not in r.json()
    r = httpx.post(f"{url}/v1/embeddings", json={"model": "dreamsim", "input": IMAGES},
                   timeout=60)
    assert r.status_code == 502 and r.json()["error"]["type"] == "server_error", r.text


def test_openapi_documents_only_the_public_routes(url: str) -> None:
    doc = httpx.get(f"{url}/openapi.json", timeout=30).json()
    assert {"/similarity", "/health"} <= set(doc["paths"])
    assert set(doc["paths"]) <= {"/similarity", "/health", "/embed", "/v1/embeddings",
                                 "/v1/models"}, sorted(doc["paths"])
    # this service's version and a description that points at what exists (no API.md)
    import importlib.metadata

    assert doc["info"]["version"] == importlib.metadata.version("image-similarity-service")
    assert doc["info"]["version"] != importlib.metadata.version("kserve")
    assert "API.md" not in doc["info"]["description"]
    assert "README" in doc["info"]["description"]


def test_guard_allow_list() -> None:
    from transformer.routes_guard import is_allowed, is_probe

    assert all(is_allowed(p) for p in ("/similarity", "/embed", "/health", "/metrics",
                                       "/v2/health/live", "/v2/models/x/ready",
                                       "/v1/embeddings", "/v1/models"))
    assert not any(is_allowed(p) for p in ("/v2/models/x/infer", "/v2/models/x/ready/",
                                           "/v2/models/x/y/ready", "/similarity/",
                                           "/v1/models/x:predict", "/v1/models/x",
                                           "/v1/models/", "/v1/embeddings/"))
    assert is_probe("/health") and not is_probe("/similarity")


"""The embedding cache: LRU bound, keys, and hits that skip decoding and the predictor."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import httpx
import numpy as np
import pytest

from testing.images import check_response, distinct_images
from testing.procs import Predictor, free_port, predictor_cmd, running, wait_http_ok
from tests.conftest import start_transformer
from transformer.cache import EmbeddingCache, cache_key, partition_of


def test_lru_bound_and_order() -> None:
    cache = EmbeddingCache(2)
    a, b, c = (cache_key("m", x) for x in (b"a", b"b", b"c"))
    cache.put(a, np.zeros(3))
    cache.put(b, np.ones(3))

    def held(key: bytes) -> np.ndarray:
        value = cache.get(key)
        assert value is not None
        return value

    assert np.array_equal(held(a), np.zeros(3))  # a is now the most recent
    cache.put(c, np.full(3, 2.0))
    assert len(cache) == 2
    assert cache.get(b) is None  # the least recent went, not the oldest put
    assert np.array_equal(held(a), np.zeros(3))
    assert np.array_equal(held(c), np.full(3, 2.0))
    # (Hits and misses are counted by the Prometheus metrics, tested through /metrics
    # below; the cache itself kept counters that nothing read.)


def test_keys_depend_on_bytes_and_model_identity() -> None:
    assert cache_key("dino:fp32:cpu:1", b"img") == cache_key("dino:fp32:cpu:1", b"img")
    assert cache_key("dino:fp32:cpu:1", b"img") != cache_key("dino:fp16:cuda:1", b"img")
    assert cache_key("dino:fp32:cpu:1", b"img") != cache_key("dino:fp32:cpu:1", b"img2")


def test_disabled_cache_stores_nothing() -> None:
    cache = EmbeddingCache(0)
    key = cache_key("m", b"x")
    cache.put(key, np.zeros(3))
    assert cache.get(key) is None and len(cache) == 0


def _counter(metrics_text: str, name: str) -> float:
    match = re.search(rf"^{name} ([0-9.e+]+)$", metrics_text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


@pytest.mark.slow
def test_repeated_images_are_served_from_the_cache(service_url: str) -> None:
    imgs = [base64.b64encode(x).decode() for x in distinct_images(3, size=200)]
    pairs = [{"reference_image": imgs[0], "generated_image": imgs[1], "pair_id": "a"},
             {"reference_image": imgs[0], "generated_image": imgs[2], "pair_id": "b"}]
    first = httpx.post(f"{service_url}/similarity", json={"pairs": pairs}, timeout=120)
    assert first.status_code == 200
    before = httpx.get(f"{service_url}/metrics", timeout=10).text
    second = httpx.post(f"{service_url}/similarity", json={"pairs": pairs}, timeout=120)
    after = httpx.get(f"{service_url}/metrics", timeout=10).text
    check_response(second.json(), pairs)
    hits = (_counter(after, "similarity_embedding_cache_hits_total")
            - _counter(before, "similarity_embedding_cache_hits_total"))
    assert hits == 3  # every distinct image of the second request
    assert [s["distance"] for s in second.json()["scores"]] == pytest.approx(
        [s["distance"] for s in first.json()["scores"]], abs=1e-6)
    # The same image as a data URI has the same bytes: a hit too.
    data_uri = [{"reference_image": "data:image/png;base64," + imgs[0],
                 "generated_image": imgs[1]}]
    third = httpx.post(f"{service_url}/similarity", json={"pairs": data_uri}, timeout=120)
    assert third.json()["scores"][0]["distance"] == pytest.approx(
        first.json()["scores"][0]["distance"], abs=1e-6)


def test_another_model_identity_empties_the_cache() -> None:
    from transformer.server import SimilarityTransformer
    from transformer.settings import TransformerSettings

    service = SimilarityTransformer("dreamsim", TransformerSettings(),
                                    predictor_host="127.0.0.1:1")
    service._update_info({"model_id": "dino_vitb16:fp32:cpu:aaaa", "device": "cpu"})
    service.cache.put(cache_key("dino_vitb16:fp32:cpu:aaaa", b"x"), np.zeros(3))
    service._update_info({"model_id": "dino_vitb16:fp32:cpu:aaaa", "device": "cpu"})
    assert len(service.cache) == 1  # same model: kept
    service._update_info({"model_id": "dino_vitb16:fp16:cuda:bbbb", "device": "cuda"})
    assert len(service.cache) == 0  # restarted with another model: nothing stale survives


def test_cache_partitions() -> None:
    assert partition_of("shared", None) == partition_of("shared", "a") == b""
    assert partition_of("client", "Bearer a") == b"Bearer a"
    assert partition_of("client", None) is None and partition_of("client", "") is None
    assert partition_of("off", "a") is None
    assert cache_key("m", b"img", b"a") != cache_key("m", b"img", b"b")
    assert cache_key("m", b"img", b"") == cache_key("m", b"img")


@pytest.mark.slow
def test_per_client_scope_keeps_clients_apart(predictor_server: Predictor,
                                              tmp_path: Path) -> None:
    """EMBEDDING_CACHE_SCOPE=client (issue 10, finding 11): one client never hits what
    another sent; a request without the client header is not cached; off caches nothing."""
    imgs = [base64.b64encode(x).decode() for x in distinct_images(2, size=96)]
    pairs = [{"reference_image": imgs[0], "generated_image": imgs[1]}]

    def hits_after(url: str, headers: dict[str, str]) -> float:
        before = _counter(httpx.get(f"{url}/metrics", timeout=10).text,
                          "similarity_embedding_cache_hits_total")
        r = httpx.post(f"{url}/similarity", json={"pairs": pairs}, headers=headers,
                       timeout=120)
        assert r.status_code == 200, r.text
        return _counter(httpx.get(f"{url}/metrics", timeout=10).text,
                        "similarity_embedding_cache_hits_total") - before

    env = {"EMBEDDING_CACHE_SCOPE": "client", "EMBEDDING_CACHE_CLIENT_HEADER": "X-Tenant"}
    with start_transformer(predictor_server.grpc, tmp_path / "client.log", env=env) as url:
        assert hits_after(url, {"X-Tenant": "a"}) == 0
        assert hits_after(url, {"X-Tenant": "b"}) == 0  # shared: 2 hits, telling b about a
        assert hits_after(url, {"X-Tenant": "a"}) == 2
        assert hits_after(url, {}) == 0
        assert hits_after(url, {}) == 0
    env = {"EMBEDDING_CACHE_SCOPE": "off"}
    with start_transformer(predictor_server.grpc, tmp_path / "off.log", env=env) as url:
        assert hits_after(url, {}) == 0
        assert hits_after(url, {}) == 0


def test_health_asks_again_once_the_report_is_old() -> None:
    """A predictor replaced by one of another variant (helm upgrade of the model type) must
    not be reported as the old one by /health: seen on the cluster lab, /health said
    dino_vitb16 after the upgrade to clip_vitb32 until a request came. An idle transformer
    asks the predictor again (an empty batch) once its last report is INFO_MAX_AGE_S old."""
    import asyncio

    from transformer import server
    from transformer.settings import TransformerSettings

    class Predictor:  # stands in for the gRPC client: what a restarted predictor reports
        def __init__(self) -> None:
            self.model_type, self.asked = "dino_vitb16", 0

        async def is_ready(self) -> bool:
            return True

        async def describe(self, timeout_s: float) -> dict[str, str]:
            self.asked += 1
            return {"model_type": self.model_type, "model_id": f"{self.model_type}:cpu",
                    "device": "cpu"}

    service = server.SimilarityTransformer("dreamsim", TransformerSettings(),
                                           predictor_host="127.0.0.1:1")
    stand_in = Predictor()
    service.predictor = stand_in  # type: ignore[assignment]

    async def model_type() -> str | None:
        return (await service.health())[1].model_type

    assert asyncio.run(model_type()) == "dino_vitb16" and stand_in.asked == 1
    assert asyncio.run(model_type()) == "dino_vitb16" and stand_in.asked == 1  # fresh: kept
    stand_in.model_type = "clip_vitb32"  # the predictor was replaced
    service._info_at -= server.INFO_MAX_AGE_S  # and no answer came since
    assert asyncio.run(model_type()) == "clip_vitb32" and stand_in.asked == 2


@pytest.mark.slow
def test_a_predictor_replaced_by_another_model_is_never_mixed_with_the_cache(
        dino_weights_dir: Path, tmp_path: Path) -> None:
    """The cache is read under the model identity the predictor last reported
    (MODEL_IDENTITY_MAX_AGE_S, here long enough that the replacement goes unseen until an
    answer tells it). A request with a cached image and a new one, sent once the predictor
    has been replaced by another (bf16) on the same address, gets answers from the new
    model for the new image: the request is answered again from scratch, and its distance
    is the new model's alone, not the old image embedding's against the new one."""
    x, y, z = (base64.b64encode(i).decode() for i in distinct_images(3, size=96))
    http_port, grpc_port = free_port(), free_port()
    grpc = f"127.0.0.1:{grpc_port}"
    ready = f"http://127.0.0.1:{http_port}/v2/models/dreamsim/ready"
    old = {"MODEL_CACHE_DIR": str(dino_weights_dir), "DEVICE": "cpu"}
    new = {**old, "PRECISION": "bf16"}  # another model identity, the same embedding size

    def post(url: str, path: str, body: dict[str, object]) -> httpx.Response:
        return httpx.post(f"{url}/{path}", json=body, timeout=120)

    def retries(url: str) -> float:
        return _counter(httpx.get(f"{url}/metrics", timeout=10).text,
                        "similarity_model_changed_retries_total")

    log = tmp_path / "transformer.log"
    with start_transformer(grpc, log, env={"MODEL_IDENTITY_MAX_AGE_S": "600"},
                           wait_healthy=False) as url:
        with running(predictor_cmd(http_port, grpc_port), env=old,
                     log_path=tmp_path / "old.log") as first:
            wait_http_ok(ready, timeout_s=120, proc=first)
            r = post(url, "embed", {"images": [{"image": x}]})  # x cached, old model
            assert r.status_code == 200, r.text
            old_x = np.array(r.json()["embeddings"][0]["embedding"])
        with running(predictor_cmd(http_port, grpc_port), env=new,
                     log_path=tmp_path / "new.log") as second:
            wait_http_ok(ready, timeout_s=180, proc=second)
            for _ in range(60):  # the transformer's channel reconnects (503 meanwhile)
                r = post(url, "similarity", {"pairs": [{"reference_image": x,
                                                         "generated_image": z}]})
                if r.status_code != 503:
                    break
            assert r.status_code == 200, r.text
            assert retries(url) == 1
            mixed = r.json()["scores"][0]["distance"]
            # The new model alone, from a transformer without a cache.
            with start_transformer(grpc, tmp_path / "uncached.log",
                                   env={"EMBEDDING_CACHE_SIZE": "0"}) as plain:
                r = post(plain, "embed", {"images": [{"image": x}, {"image": z}]})
                new_x, new_z = (np.array(e["embedding"]) for e in r.json()["embeddings"])
                alone = post(plain, "similarity", {"pairs": [
                    {"reference_image": x, "generated_image": z}]}).json()["scores"][0]
            # Cached x and y again: y is new to the new model, x was cached by the retry.
            r = post(url, "similarity", {"pairs": [{"reference_image": x,
                                                     "generated_image": y}]})
            assert r.status_code == 200 and retries(url) == 1, r.text
    assert abs(mixed - alone["distance"]) < 1e-6
    assert abs(mixed - (1 - float(new_x @ new_z))) < 1e-5
    assert abs(mixed - (1 - float(old_x @ new_z))) > 1e-4  # what mixing would have given
    assert "answering the request again" in log.read_text()

"""The public API contract, against real transformer and predictor processes on loopback."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from testing.http_host import ImageHost
from testing.images import b64, check_response, distinct_images
from testing.procs import free_port
from tests.conftest import STRICT_ENV, start_transformer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def images() -> list[bytes]:
    return distinct_images(8, size=256)


def post(url: str, body: object, **kw: object) -> httpx.Response:
    return httpx.post(f"{url}/similarity", json=body, timeout=120, **kw)  # type: ignore[arg-type]


def assert_still_serving(url: str, images: list[bytes]) -> None:
    pairs = [{"reference_image": b64(images[0]), "generated_image": b64(images[1])}]
    r = post(url, {"pairs": pairs})
    assert r.status_code == 200, r.text
    check_response(r.json(), pairs)


def test_health_reports_the_loaded_model(service_url: str) -> None:
    r = httpx.get(f"{service_url}/health", timeout=10)
    assert r.status_code == 200
    # The contract's four fields, then what the predictor adds about its device (null on CPU).
    assert r.json() == {"status": "healthy", "model_loaded": True, "device": "cpu",
                        "model_type": "dino_vitb16", "precision": "fp32",
                        "device_index": None, "gpu_name": None, "attention_backend": "flash"}


def test_contract_fields_formula_order_and_pair_ids(service_url: str,
                                                    images: list[bytes]) -> None:
    pairs: list[dict[str, object]] = [
        {"reference_image": b64(images[0]), "generated_image": b64(images[1]), "pair_id": "a"},
        {"reference_image": b64(images[2]), "generated_image": b64(images[3]), "pair_id": 17},
        {"reference_image": b64(images[4]), "generated_image": b64(images[4])},
        {"reference_image": b64(images[5]), "generated_image": b64(images[0]), "pair_id": None},
        {"reference_image": b64(images[6]), "generated_image": b64(images[7]), "pair_id": "a"},
    ]
    r = post(service_url, {"pairs": pairs})
    assert r.status_code == 200, r.text
    body = r.json()
    check_response(body, pairs)  # fields, count, similarity = 1/(1+d), pair_id echoed
    scores = body["scores"]
    assert [s["pair_id"] for s in scores] == ["a", 17, None, None, "a"]
    assert scores[2]["distance"] == 0 and scores[2]["similarity"] == 1
    assert all(s["distance"] > 0 for i, s in enumerate(scores) if i != 2)

    # Same pairs reversed: the scores come back reversed (order is the request's).
    rev = post(service_url, {"pairs": pairs[::-1]}).json()["scores"]
    for s, t in zip(scores, rev[::-1], strict=True):
        assert s["pair_id"] == t["pair_id"]
        assert abs(s["distance"] - t["distance"]) < 1e-6


def test_empty_pair_list_is_an_empty_answer(service_url: str) -> None:
    r = post(service_url, {"pairs": []})
    assert r.status_code == 200
    assert r.json()["scores"] == []


# /similarity and /embed share one validation helper: each check runs on both routes.
@pytest.mark.parametrize("route, body, index, field", [
    ("similarity", {}, None, "pairs"),
    ("similarity", {"pairs": "nope"}, None, "pairs"),
    ("similarity", {"pairs": [{"reference_image": "x"}]}, 0, "generated_image"),
    ("similarity", {"pairs": [{"reference_image": 3, "generated_image": "x"}]}, 0,
     "reference_image"),
    ("embed", {}, None, "images"),
    ("embed", {"images": [{"id": "x"}]}, 0, "image"),
    ("embed", {"images": [{"image": "x", "id": True}]}, 0, "id"),
    ("embed", {"images": [{"image": "x"}], "encoding": "hex"}, None, "encoding"),
])
def test_schema_errors_are_422_naming_the_field(service_url: str, route: str, body: object,
                                                index: int | None, field: str) -> None:
    r = httpx.post(f"{service_url}/{route}", json=body, timeout=120)
    assert r.status_code == 422, r.text
    errors = r.json()["errors"]
    assert any(e["index"] == index and e["field"].startswith(field) for e in errors), errors
    if route == "embed" and index == 0 and field == "image":
        assert errors[0]["id"] == "x"
    assert "Traceback" not in r.text


def test_invalid_json_is_422(service_url: str) -> None:
    r = httpx.post(f"{service_url}/similarity", content=b"{pairs: [", timeout=10,
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 422
    assert "not valid JSON" in r.json()["detail"]


@pytest.mark.parametrize("route, key, item, setting", [
    ("similarity", "pairs", {"reference_image": "http://127.0.0.2:9/never-fetched",
                             "generated_image": "http://127.0.0.2:9/never-fetched"},
     "MAX_PAIRS_PER_REQUEST"),
    ("embed", "images", {"image": "http://127.0.0.2:9/never-fetched"},
     "MAX_IMAGES_PER_REQUEST"),
])
def test_too_many_items_is_413_before_any_work(strict_url: str, route: str, key: str,
                                               item: dict[str, str], setting: str) -> None:
    limit = int(STRICT_ENV[setting])
    started = time.perf_counter()
    r = httpx.post(f"{strict_url}/{route}", json={key: [item] * (limit + 1)}, timeout=120)
    assert r.status_code == 413
    assert f"limit is {limit}" in r.json()["detail"] and setting in r.json()["detail"]
    assert r.json()["limit"] == {"setting": setting, "value": limit}  # for clients to split by
    assert time.perf_counter() - started < 1.0  # the URLs were never tried


def test_every_failing_image_is_listed(service_url: str, image_host: ImageHost,
                                       images: list[bytes]) -> None:
    good = b64(images[0])
    missing = image_host.add("present.png", images[1]).replace("present", "absent")
    closed = f"http://127.0.0.2:{free_port()}/x.png"
    pairs = [
        {"reference_image": good, "generated_image": good, "pair_id": "ok"},
        {"reference_image": "not base64!!", "generated_image": good, "pair_id": "b64"},
        {"reference_image": good, "generated_image": b64(b"plain text, not an image"),
         "pair_id": "notimg"},
        {"reference_image": b64(images[2][: len(images[2]) // 2]), "generated_image": missing,
         "pair_id": 4},
        {"reference_image": closed, "generated_image": "ftp://example.com/a.png"},
    ]
    r = post(service_url, {"pairs": pairs})
    assert r.status_code == 422
    errors = r.json()["errors"]
    got = {(e["index"], e["field"]) for e in errors}
    assert got == {(1, "reference_image"), (2, "generated_image"), (3, "reference_image"),
                   (3, "generated_image"), (4, "reference_image"), (4, "generated_image")}
    reasons = {(e["index"], e["field"]): e["reason"] for e in errors}
    assert "base64" in reasons[(1, "reference_image")]
    assert "not a recognised image" in reasons[(2, "generated_image")]
    assert "truncated" in reasons[(3, "reference_image")]
    assert "404" in reasons[(3, "generated_image")]
    assert "could not connect" in reasons[(4, "reference_image")]
    assert "scheme" in reasons[(4, "generated_image")]
    assert [e["pair_id"] for e in errors if e["index"] == 3] == [4, 4]
    assert_still_serving(service_url, images)


def test_size_limit_applies_to_base64_and_urls(strict_url: str, image_host: ImageHost,
                                               images: list[bytes]) -> None:
    big = distinct_images(1, size=512)[0]  # a PNG well over 50 kB
    assert len(big) > 60_000
    url = image_host.add("big.png", big)
    r = post(strict_url, {"pairs": [{"reference_image": b64(big), "generated_image": url}]})
    assert r.status_code == 422
    reasons = [e["reason"] for e in r.json()["errors"]]
    assert len(reasons) == 2 and all("limit" in x for x in reasons), reasons
    assert_still_serving(strict_url, distinct_images(2, size=64))


def test_slow_url_times_out_quickly(strict_url: str, image_host: ImageHost) -> None:
    small = b64(distinct_images(1, size=64)[0])
    started = time.perf_counter()
    r = post(strict_url, {"pairs": [{"reference_image": small,
                                     "generated_image": f"{image_host.base}/slow"}]})
    elapsed = time.perf_counter() - started
    assert r.status_code == 422
    assert "timed out" in r.json()["errors"][0]["reason"]
    # URL_FETCH_TIMEOUT is 2 s; the slow URL would go on for 20 s.
    assert elapsed < 2 + 3


def test_predictor_unreachable_is_503(tmp_path: Path, images: list[bytes]) -> None:
    dead = f"127.0.0.1:{free_port()}"
    with start_transformer(dead, tmp_path / "t.log", wait_healthy=False) as url:
        health = httpx.get(f"{url}/health", timeout=10)
        assert health.status_code == 503
        assert health.json()["model_loaded"] is False
        pairs = [{"reference_image": b64(images[0]), "generated_image": b64(images[1])}]
        r = post(url, {"pairs": pairs})
        assert r.status_code == 503
        assert r.json()["detail"] == "the model server cannot be reached; retry shortly"
        assert r.headers.get("Retry-After")
        # Its address is for the log, not the client (issue 10, finding 7).
        assert dead not in r.text
        assert dead in (tmp_path / "t.log").read_text()

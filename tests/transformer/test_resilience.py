"""Hostile requests, predictor faults, overload and shutdown: clear answers, no hangs,
nothing lost, and the next request is served correctly."""

from __future__ import annotations

import concurrent.futures
import signal
import time
from pathlib import Path

import httpx
import pytest

from testing.fake_predictor import fake_predictor
from testing.images import b64, check_response, distinct_images
from testing.procs import (
    Predictor,
    free_port,
    predictor_cmd,
    running,
    transformer_cmd,
    wait_http_ok,
)
from tests.conftest import start_transformer

pytestmark = pytest.mark.slow

IMAGES = distinct_images(12, size=128)
LONG = distinct_images(128, size=64)  # one request of 64 pairs, every image distinct


def pairs(n: int, offset: int = 0) -> list[dict[str, object]]:
    return [{"reference_image": b64(IMAGES[(2 * i + offset) % 12]),
             "generated_image": b64(IMAGES[(2 * i + 1 + offset) % 12]), "pair_id": f"p{i}"}
            for i in range(n)]


def post(url: str, body: object, timeout: float = 120) -> httpx.Response:
    return httpx.post(f"{url}/similarity", json=body, timeout=timeout)


def assert_serves(url: str) -> None:
    body = pairs(1)
    r = post(url, {"pairs": body})
    assert r.status_code == 200, r.text
    check_response(r.json(), body)


# --- requests ------------------------------------------------------------------------------

def test_body_limit_is_enforced_before_parsing(predictor_server: Predictor,
                                               tmp_path: Path) -> None:
    env = {"MAX_REQUEST_BODY_MB": "0.05"}
    with start_transformer(predictor_server.grpc, tmp_path / "t.log", env=env) as url:
        big = b'{"pairs": [' + b" " * 100_000 + b"]}"
        r = httpx.post(f"{url}/similarity", content=big, timeout=30,
                       headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and "MAX_REQUEST_BODY_MB" in r.json()["detail"]

        def chunked() -> object:  # no Content-Length: counted while streaming
            for _ in range(100):
                yield b" " * 1000

        r = httpx.post(f"{url}/similarity", content=chunked(), timeout=30,  # type: ignore[arg-type]
                       headers={"Content-Type": "application/json"})
        assert r.status_code == 413
        assert_serves(url)


@pytest.mark.parametrize("pair_id", ["x" * 257, True, 1.5, {"a": 1}, [1]])
def test_pair_id_must_be_a_short_string_or_an_integer(service_url: str, pair_id: object) -> None:
    body = pairs(1)
    body[0]["pair_id"] = pair_id
    r = post(service_url, {"pairs": body})
    assert r.status_code == 422
    assert r.json()["errors"][0]["index"] == 0
    assert "pair_id" in r.json()["errors"][0]["field"]


def test_duplicate_ids_long_ids_and_unknown_fields_are_kept(service_url: str) -> None:
    body = pairs(3)
    body[0]["pair_id"] = body[1]["pair_id"] = "same"
    body[2]["pair_id"] = "y" * 256
    body[2]["extra"] = {"ignored": True}
    r = post(service_url, {"pairs": body, "options": 1})
    assert r.status_code == 200, r.text
    answer = r.json()
    # the unknown fields are ignored, and named in the additive "warnings"
    assert answer.pop("warnings") == ["unknown field 'options' ignored",
                                      "unknown field 'extra' in pairs[2] ignored"]
    check_response(answer, body)


# --- predictor faults ----------------------------------------------------------------------

def test_slow_predictor_is_504_not_a_hang(tmp_path: Path) -> None:
    with fake_predictor(delay_s=30) as host, start_transformer(
            host, tmp_path / "t.log", env={"PREDICTOR_TIMEOUT": "1"}) as url:
        started = time.perf_counter()
        r = post(url, {"pairs": pairs(1)})
        assert r.status_code == 504
        assert "did not answer within 1 s" in r.json()["detail"]
        assert r.headers.get("Retry-After")
        assert time.perf_counter() - started < 5


@pytest.mark.parametrize("behaviour", ["wrong-shape", "nan"])
def test_malformed_predictor_answer_is_502(tmp_path: Path, behaviour: str) -> None:
    with fake_predictor(behaviour) as host, start_transformer(host, tmp_path / "t.log") as url:
        r = post(url, {"pairs": pairs(2)})
        assert r.status_code == 502
        assert "model server" in r.json()["detail"]


def test_predictor_restart_mid_request_and_recovery(dino_weights_dir: Path,
                                                    tmp_path: Path) -> None:
    http_port, grpc_port = free_port(), free_port()
    cmd = predictor_cmd(http_port, grpc_port)
    env = {"MODEL_CACHE_DIR": str(dino_weights_dir), "DEVICE": "cpu"}
    ready = f"http://127.0.0.1:{http_port}/v2/models/dreamsim/ready"
    with running(cmd, env=env, log_path=tmp_path / "p1.log") as predictor:
        wait_http_ok(ready, timeout_s=120, proc=predictor)
        # No embedding cache: every request below must really need the predictor.
        with start_transformer(f"127.0.0.1:{grpc_port}", tmp_path / "t.log",
                               env={"EMBEDDING_CACHE_SIZE": "0"}) as url:
            assert_serves(url)
            # A long request, and the predictor is killed while it runs: once it has
            # embedded its first images (128 distinct images are seconds of work on any
            # CPU; a fixed sleep before the kill let a request of 12 distinct images finish
            # first on a quiet machine).
            metrics = f"http://127.0.0.1:{http_port}/metrics"

            def embedded() -> float:
                return sum(float(line.split()[-1]) for line in
                           httpx.get(metrics, timeout=10).text.splitlines()
                           if line.startswith("dreamsim_images_total"))

            before = embedded()
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                pending = pool.submit(post, url, {"pairs": [
                    {"reference_image": b64(a), "generated_image": b64(b), "pair_id": f"p{i}"}
                    for i, (a, b) in enumerate(zip(LONG[::2], LONG[1::2], strict=True))]})
                deadline = time.monotonic() + 60
                while embedded() == before and not pending.done():
                    assert time.monotonic() < deadline, "the predictor never started"
                    time.sleep(0.05)
                predictor.kill()
                r = pending.result(timeout=60)
            assert r.status_code in (502, 503), r.text
            assert "Traceback" not in r.text
            r = post(url, {"pairs": pairs(1)}, timeout=30)
            assert r.status_code == 503 and r.headers.get("Retry-After")
            health = httpx.get(f"{url}/health", timeout=10)
            assert health.status_code == 503 and health.json()["model_loaded"] is False

            # Back on the same address: the transformer reconnects by itself.
            with running(cmd, env=env, log_path=tmp_path / "p2.log") as again:
                wait_http_ok(ready, timeout_s=120, proc=again)
                wait_http_ok(f"{url}/health", timeout_s=30)
                assert_serves(url)


# --- overload and shutdown -----------------------------------------------------------------

def test_overload_gets_quick_429s_and_admitted_requests_complete(tmp_path: Path) -> None:
    env = {"MAX_CONCURRENT_REQUESTS": "1", "MAX_QUEUED_REQUESTS": "1"}
    with fake_predictor(delay_s=1.5) as host, start_transformer(
            host, tmp_path / "t.log", env=env) as url:
        def timed() -> tuple[int, float]:
            t0 = time.perf_counter()
            r = post(url, {"pairs": pairs(1)})
            return r.status_code, time.perf_counter() - t0

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            results = list(pool.map(lambda _: timed(), range(6)))
        codes = sorted(code for code, _ in results)
        assert codes.count(200) == 2 and codes.count(429) == 4, results
        assert all(t < 1.0 for code, t in results if code == 429)
        assert_serves(url)


def test_queue_timeout_is_503(tmp_path: Path) -> None:
    env = {"MAX_CONCURRENT_REQUESTS": "1", "MAX_QUEUED_REQUESTS": "4", "QUEUE_TIMEOUT": "0.5"}
    with fake_predictor(delay_s=2) as host, start_transformer(
            host, tmp_path / "t.log", env=env) as url:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            first = pool.submit(post, url, {"pairs": pairs(1)})
            time.sleep(0.3)
            second = post(url, {"pairs": pairs(1)})
            assert second.status_code == 503 and "no processing slot" in second.json()["detail"]
            assert first.result().status_code == 200


def test_sigterm_drains_in_flight_requests(tmp_path: Path) -> None:
    with fake_predictor(delay_s=3) as host:
        port = free_port()
        cmd = transformer_cmd(host, port, protocol=None)  # the transformer's default
        log = tmp_path / "t.log"
        with running(cmd, log_path=log) as proc:
            url = f"http://127.0.0.1:{port}"
            wait_http_ok(f"{url}/health", timeout_s=60, proc=proc, log_path=log)
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                pending = pool.submit(post, url, {"pairs": pairs(2)})
                time.sleep(1)
                proc.send_signal(signal.SIGTERM)
                r = pending.result(timeout=30)
            assert r.status_code == 200, r.text
            check_response(r.json(), pairs(2))
            assert proc.wait(timeout=30) == 0  # a clean exit after draining, not a kill
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"{url}/health", timeout=5)

"""Load test on loopback: concurrent clients, base64 and URL pairs, bounded in count and time.

Every answer must be complete and correct (each pair's distance equal to its value when
sent alone, order kept); the only errors allowed are the designed overload answers (429,
retried after Retry-After); the transformer's memory must stay bounded. Prints p50/p95/p99
latency and throughput (``pytest tests/test_load.py -s``).
"""

from __future__ import annotations

import base64
import random
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from testing.http_host import IMAGE_HOST_NETWORK, ImageHost
from testing.images import distinct_images
from testing.procs import Predictor, run_transformer

pytestmark = pytest.mark.slow

CLIENTS = 6
REQUESTS_PER_CLIENT = 6
PAIRS_PER_REQUEST = 3
DEADLINE_S = 300


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


@pytest.fixture(scope="module")
def loaded_service(predictor_server: Predictor, tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[tuple[str, int]]:
    """A transformer with small admission limits, so that overload answers happen."""
    # No embedding cache: every request must reach the predictor, or this would only load
    # the cache.
    env = {"MAX_CONCURRENT_REQUESTS": "3", "MAX_QUEUED_REQUESTS": "2",
           "EMBEDDING_CACHE_SIZE": "0", "URL_ALLOWED_NETWORKS": IMAGE_HOST_NETWORK}
    log = tmp_path_factory.mktemp("logs") / "load-transformer.log"
    with run_transformer(predictor_server.grpc, env, log, timeout_s=60) as t:
        yield t.url, t.pid


def test_concurrent_clients_get_complete_correct_answers(loaded_service: tuple[str, int],
                                                         image_host: ImageHost) -> None:
    url, pid = loaded_service
    images = distinct_images(12, size=320)
    sources = []  # per image: (base64 form, URL form)
    for i, img in enumerate(images):
        sources.append((base64.b64encode(img).decode(), image_host.add(f"load-{i}.img", img)))
    base_pairs = [(2 * i, 2 * i + 1) for i in range(6)]

    # Reference: each pair alone.
    alone = []
    for a, b in base_pairs:
        r = httpx.post(f"{url}/similarity", timeout=120, json={"pairs": [
            {"reference_image": sources[a][0], "generated_image": sources[b][0]}]})
        assert r.status_code == 200, r.text
        alone.append(r.json()["scores"][0]["distance"])

    latencies: list[float] = []
    overloads = 0
    failures: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + DEADLINE_S

    def client(seed: int) -> None:
        nonlocal overloads
        rng = random.Random(seed)
        with httpx.Client(timeout=120) as http:
            for _ in range(REQUESTS_PER_CLIENT):
                chosen = rng.sample(range(len(base_pairs)), PAIRS_PER_REQUEST)
                body = {"pairs": [
                    {"reference_image": sources[base_pairs[k][0]][rng.random() < 0.5],
                     "generated_image": sources[base_pairs[k][1]][rng.random() < 0.5],
                     "pair_id": k} for k in chosen]}
                while time.monotonic() < deadline:
                    t0 = time.perf_counter()
                    r = http.post(f"{url}/similarity", json=body)
                    if r.status_code == 429:  # designed overload answer: retry as told
                        with lock:
                            overloads += 1
                        time.sleep(float(r.headers.get("Retry-After", "1")) * rng.random())
                        continue
                    elapsed = time.perf_counter() - t0
                    with lock:
                        if r.status_code != 200:
                            failures.append(f"{r.status_code}: {r.text[:200]}")
                        else:
                            latencies.append(elapsed)
                            scores = r.json()["scores"]
                            ids = [s["pair_id"] for s in scores]
                            errors = [abs(s["distance"] - alone[k])
                                      for s, k in zip(scores, chosen, strict=True)]
                            if ids != chosen or max(errors) > 1e-5:
                                failures.append(f"wrong scores {scores} for pairs {chosen}")
                    break

    rss_before = _rss_mb(pid)
    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE_S + 30)
    wall = time.perf_counter() - started

    assert not failures, failures[:5]
    assert len(latencies) == CLIENTS * REQUESTS_PER_CLIENT
    q = statistics.quantiles(latencies, n=100)
    pairs_done = len(latencies) * PAIRS_PER_REQUEST
    print(f"\nload: {CLIENTS} clients x {REQUESTS_PER_CLIENT} requests x {PAIRS_PER_REQUEST} "
          f"pairs (base64/URL mix), wall {wall:.1f} s, {pairs_done / wall:.2f} pairs/s, "
          f"{len(latencies) / wall:.2f} req/s; latency p50 {q[49]:.2f} s, p95 {q[94]:.2f} s, "
          f"p99 {q[98]:.2f} s; 429 answers retried: {overloads}")
    rss_after = _rss_mb(pid)
    print(f"transformer RSS {rss_before:.0f} MB -> {rss_after:.0f} MB")
    assert rss_after < rss_before + 400
    # And it still answers a plain request correctly.
    a, b = base_pairs[0]
    r = httpx.post(f"{url}/similarity", timeout=120, json={"pairs": [
        {"reference_image": sources[a][1], "generated_image": sources[b][0]}]})
    assert r.status_code == 200 and abs(r.json()["scores"][0]["distance"] - alone[0]) < 1e-5

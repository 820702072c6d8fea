"""One request's many slow fetches or costly decodes must not starve another client's small
request (issue 19, item 5).

A real transformer process; a local HTTP host whose ``/slow/...`` paths drip their answer
for ``DRIP_S``. The predictor is the instant FAKE one (``fake_predictor``), on purpose:
what is tested is how the transformer shares its fetches and decode threads between
requests, and the real model on this machine's CPU would add its own queue (one call at a
time) to both requests' times. Before, every fetch of the pod waited on one FIFO
semaphore and every decode went into one FIFO thread pool: the small request waited for
the slow fetches to end (here ``DRIP_S``), or for all of the costly images to decode.
Figures under load: ``python -m bench.studies.fairness``.
"""

from __future__ import annotations

import concurrent.futures
import io
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from testing.fake_predictor import fake_predictor
from testing.http_host import image_host
from testing.images import b64, distinct_images
from tests.conftest import start_transformer

pytestmark = pytest.mark.slow

DRIP_S = 10.0  # the heavy request: 4 URLs, 2 at a time, ends after 2 x DRIP_S
ENV = {"DECODE_WORKERS": "1", "URL_FETCH_CONCURRENCY": "4", "URL_FETCH_PER_REQUEST": "2",
       "MAX_CONCURRENT_REQUESTS": "2", "URL_FETCH_TIMEOUT": "60", "REQUEST_TIMEOUT": "30",
       "EMBEDDING_CACHE_SIZE": "0"}
SMALL = distinct_images(1, size=64)[0]


@pytest.fixture(scope="module")
def host() -> Iterator[str]:
    """``/slow/...``: a valid PNG's first byte, then a trickle for ``DRIP_S``; any other
    path: a small PNG at once."""
    with image_host(default=SMALL, drip_every_s=0.5, drip_s=DRIP_S) as served:
        yield served.base


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("logs") / "fair-transformer.log"
    with fake_predictor() as grpc, start_transformer(grpc, log, env=ENV) as url:
        yield url


def timed_request(url: str, images: list[str]) -> tuple[int, float]:
    started = time.perf_counter()
    # Pairs of consecutive images; one image is paired with itself (embedded once).
    pairs = [{"reference_image": images[i], "generated_image": images[min(i + 1, len(images) - 1)]}
             for i in range(0, len(images), 2)]
    r = httpx.post(f"{url}/similarity", json={"pairs": pairs},
                   timeout=120)
    return r.status_code, time.perf_counter() - started


def costly_pngs(n: int, side: int = 2500) -> list[bytes]:
    """``n`` distinct PNGs that are small to send and slow to decode and resize."""
    out = []
    for i in range(n):
        pixels = np.zeros((side, side, 3), np.uint8)
        pixels[0, 0] = (i % 256, i // 256, 1)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def test_a_one_url_request_is_not_held_behind_anothers_slow_urls(service: str,
                                                                   host: str) -> None:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        heavy = pool.submit(timed_request, service, [f"{host}/slow/{i}" for i in range(4)])
        time.sleep(2)  # its four fetches are under way: every fetch slot of the pod, before
        code, small_s = timed_request(service, [f"{host}/small.png"])
        still_running = not heavy.done()
        heavy_code, heavy_s = heavy.result()
    print(f"one-URL request: {small_s:.2f} s beside a request of slow URLs "
          f"({heavy_code} after {heavy_s:.1f} s)")
    assert code == 200
    assert still_running
    assert small_s < DRIP_S / 2, small_s  # before: at least DRIP_S


def test_a_small_request_is_not_held_behind_anothers_costly_decodes(service: str) -> None:
    costly = [b64(p) for p in costly_pngs(30)]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        heavy = pool.submit(timed_request, service, costly)
        time.sleep(1)  # its images are queued for the one decode thread
        code, small_s = timed_request(service, [b64(SMALL)])
        heavy_code, heavy_s = heavy.result()
    print(f"small request: {small_s:.2f} s beside a request of costly images "
          f"({heavy_code} after {heavy_s:.1f} s)")
    assert code == 200 and heavy_code == 200
    # Before: it waited for every costly image (FIFO), finishing about with the heavy one.
    assert small_s < 0.5 * heavy_s, (small_s, heavy_s)

"""A predictor that starts late or restarts, seen through a readiness probe (issue 19, item 0).

Kubernetes polls ``/health`` about once a second and sends traffic once it answers 200; from
then on no request may get 503. Before, the health checks rotated over the
``PREDICTOR_CONNECTIONS`` channels: each channel that had failed while the predictor was
down sat in gRPC's reconnect backoff (growing to 120 s), and a call landing on one failed at
once. Measured on the old code: 10 of 16 requests got 503 right after ``/health`` turned 200
following a restart. A real predictor process, killed and started again on the same port;
a real transformer process.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from testing.images import b64, distinct_images
from testing.procs import free_port, predictor_cmd, running
from tests.conftest import start_transformer

pytestmark = pytest.mark.slow

IMAGE = b64(distinct_images(1, size=64)[0])
REQUESTS = 16


def poll_until_healthy(url: str, *, timeout_s: float) -> int:
    """Poll ``/health`` once a second, as a readiness probe does; the polls it took."""
    deadline = time.monotonic() + timeout_s
    polls = 0
    while time.monotonic() < deadline:
        polls += 1
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return polls
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(f"/health not 200 within {timeout_s} s")


def codes_of_requests(url: str) -> list[int]:
    """Status codes of ``REQUESTS`` one-image requests sent one after another."""
    with httpx.Client(timeout=60) as http:
        return [http.post(f"{url}/embed", json={"images": [{"image": IMAGE}]}).status_code
                for _ in range(REQUESTS)]


def test_no_503_once_health_is_200_after_a_late_start_and_a_restart(
        dino_weights_dir: Path, tmp_path: Path) -> None:
    http_port, grpc_port = free_port(), free_port()
    cmd = predictor_cmd(http_port, grpc_port)
    env = {"MODEL_CACHE_DIR": str(dino_weights_dir), "DEVICE": "cpu"}
    # No embedding cache: every request needs the predictor.
    with start_transformer(f"127.0.0.1:{grpc_port}", tmp_path / "t.log", wait_healthy=False,
                           env={"EMBEDDING_CACHE_SIZE": "0"}) as url:
        # The transformer first, the predictor some seconds later (probes failing meanwhile).
        for _ in range(6):
            assert httpx.get(f"{url}/health", timeout=5).status_code == 503
            time.sleep(1)
        with running(cmd, env=env, log_path=tmp_path / "p1.log") as first:
            poll_until_healthy(url, timeout_s=180)
            late_start = codes_of_requests(url)
            first.kill()
            first.wait()
        # Down for a while under the probe: every channel fails and backs off.
        down_until = time.monotonic() + 15
        while time.monotonic() < down_until:
            assert httpx.get(f"{url}/health", timeout=5).status_code == 503
            time.sleep(1)
        with running(cmd, env=env, log_path=tmp_path / "p2.log"):
            poll_until_healthy(url, timeout_s=180)
            restart = codes_of_requests(url)
            time.sleep(5)
            later = codes_of_requests(url)
    print(f"503s of {REQUESTS} after /health 200: late start {late_start.count(503)}, "
          f"restart {restart.count(503)}, 5 s later {later.count(503)}")
    assert late_start == [200] * REQUESTS, late_start
    assert restart == [200] * REQUESTS, restart
    assert later == [200] * REQUESTS, later

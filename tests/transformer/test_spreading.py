"""gRPC load spreads over predictor replicas behind one address (issue 9, defect 9).

Three predictors behind ``TcpBalancer``, which like kube-proxy picks a backend once per TCP
connection, and a real transformer process pointed at the balancer: under concurrent load
each predictor must get a fair share of the calls. With one channel (the old client) every
call went to the predictor the first connection landed on.

The predictors are the fake one (``fake_predictor``), on purpose: how calls spread is a
property of the connections and of the client's scheduling, not of the model, and three
real predictors would each load a ViT and run it on this 2-core machine for every image.
The real predictor's side (it ends connections after ``GRPC_MAX_CONNECTION_AGE`` so that
clients reconnect and are re-dealt) is tested in ``tests/predictor/test_server.py``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from testing.fake_predictor import fake_predictor
from testing.images import b64, distinct_images
from testing.tcp_balancer import TcpBalancer
from tests.conftest import start_transformer
from transformer.channels import ChannelPool

IMAGES = [b64(i) for i in distinct_images(4, size=64)]


def infer_calls(log: Path) -> int:
    """Inference calls (with images) a fake predictor served, from its log."""
    return sum(1 for n in re.findall(r"infer images=(\d+)", log.read_text()) if int(n) > 0)


@pytest.fixture(scope="module")
def predictors(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[tuple[str, Path]]]:
    """Three fake predictors, each answering after 20 ms; (address, log) each."""
    logs = tmp_path_factory.mktemp("predictors")
    with ExitStack() as stack:
        out = []
        for i in range(3):
            log = logs / f"predictor-{i}.log"
            out.append((stack.enter_context(fake_predictor(delay_s=0.02, log_path=log)), log))
        yield out


def load(url: str, *, clients: int, requests: int) -> None:
    """``clients`` concurrent clients, each sending ``requests`` requests one after another."""
    body = {"pairs": [{"reference_image": IMAGES[0], "generated_image": IMAGES[1]},
                      {"reference_image": IMAGES[2], "generated_image": IMAGES[3]}]}

    def client() -> None:
        with httpx.Client(timeout=60) as http:
            for _ in range(requests):
                r = http.post(f"{url}/similarity", json=body)
                assert r.status_code == 200, r.text

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(client) for _ in range(clients)]:
            f.result()


@pytest.mark.slow
def test_calls_spread_over_predictors_behind_one_address(predictors: list[tuple[str, Path]],
                                                         tmp_path: Path) -> None:
    balancer = TcpBalancer([address for address, _ in predictors])
    before = [infer_calls(log) for _, log in predictors]
    env = {"PREDICTOR_CONNECTIONS": "3", "EMBEDDING_CACHE_SIZE": "0"}
    with balancer.serving() as address, \
            start_transformer(address, tmp_path / "transformer.log", env=env) as url:
        load(url, clients=6, requests=10)
    split = [infer_calls(log) - b for (_, log), b in zip(predictors, before, strict=True)]
    total = sum(split)
    print(f"calls per predictor: {split} of {total}; connections: {balancer.connections}")
    assert total >= 60, split
    # Three channels are three TCP connections, one per predictor (round-robin dealing).
    assert balancer.connections == [1, 1, 1], balancer.connections
    assert min(split) >= 0.25 * total, f"unfair split {split}"


def test_pool_picks_the_least_busy_channel_in_turn() -> None:
    async def run() -> None:
        pool = ChannelPool("127.0.0.1:9", size=3, options=[])
        # Nothing listens: no channel is READY, so all of them are candidates.
        async with pool.stub() as a, pool.stub() as b, pool.stub() as c:
            assert len({id(a), id(b), id(c)}) == 3  # three calls, three channels
            assert pool.in_flight == [1, 1, 1]
            async with pool.stub() as d:  # all busy: the next in turn
                assert pool.in_flight.count(2) == 1 and d in (a, b, c)
        assert pool.in_flight == [0, 0, 0]
        picked = []
        for _ in range(6):  # one at a time: the channels take turns
            async with pool.stub() as s:
                picked.append(id(s))
        assert picked[:3] == picked[3:] and len(set(picked)) == 3
        await pool.close()

    asyncio.run(run())


@pytest.mark.slow
def test_round_robin_over_every_resolved_address(predictors: list[tuple[str, Path]],
                                                 tmp_path: Path) -> None:
    """PREDICTOR_LB_POLICY=round_robin: with one connection setting, every address the
    host resolves to gets calls in turn (here an ``ipv4:`` list standing in for a headless
    Service's DNS answer)."""
    host = "ipv4:" + ",".join(address for address, _ in predictors)
    before = [infer_calls(log) for _, log in predictors]
    env = {"PREDICTOR_CONNECTIONS": "1", "PREDICTOR_LB_POLICY": "round_robin",
           "EMBEDDING_CACHE_SIZE": "0"}
    with start_transformer(host, tmp_path / "transformer.log", env=env) as url:
        load(url, clients=3, requests=10)
    split = [infer_calls(log) - b for (_, log), b in zip(predictors, before, strict=True)]
    print(f"round_robin calls per predictor: {split}")
    assert sum(split) >= 30 and min(split) >= 0.25 * sum(split), split

"""``python -m bench.studies.spreading``: how a transformer's calls split over predictor replicas.

Three (``--backends``) predictors behind ``testing/tcp_balancer.py``, a TCP balancer that
like kube-proxy picks a backend once per connection (``round-robin``: IPVS's default;
``random``: iptables mode), and a real transformer pointed at the balancer, as it is at a
ClusterIP Service. Concurrent clients send ``/similarity`` requests; printed for each
``PREDICTOR_CONNECTIONS`` and balancer policy: the inference calls each predictor served,
their shares, and the connections each got. ``PREDICTOR_CONNECTIONS=1`` is the old client
(one channel): every call on one predictor.

The predictors are the FAKE one (``testing/fake_predictor.py``: constant
embeddings after ``--delay-ms``, over the same gRPC v2 protocol): the split is a property
of the connections and of the client's scheduling, not of the model, and this machine
cannot run three real models at a useful rate. The predictor's other half
(``GRPC_MAX_CONNECTION_AGE``, connections re-dealt over time) is not in this bench: its
effect shows over minutes, with scaling; ``tests/predictor/test_server.py`` tests it.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import os
import re
import time
from pathlib import Path

import httpx

from bench.machine import machine_info
from bench.settings import RESULTS_DIR, reproduce
from testing.fake_predictor import fake_predictor
from testing.images import b64, distinct_images
from testing.procs import run_transformer
from testing.tcp_balancer import Policy, TcpBalancer


def _calls(log: Path) -> int:
    return sum(1 for n in re.findall(r"infer images=(\d+)", log.read_text()) if int(n) > 0)


def _load(url: str, *, clients: int, requests: int) -> float:
    """Requests per second of ``clients`` concurrent clients sending ``requests`` each."""
    images = [b64(i) for i in distinct_images(4, size=64)]
    body = {"pairs": [{"reference_image": images[0], "generated_image": images[1]},
                      {"reference_image": images[2], "generated_image": images[3]}]}

    def client() -> None:
        with httpx.Client(timeout=120) as http:
            for _ in range(requests):
                r = http.post(f"{url}/similarity", json=body)
                r.raise_for_status()

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(client) for _ in range(clients)]:
            f.result()
    return clients * requests / (time.perf_counter() - started)


def _list(text: str) -> list[str]:
    return [v for v in text.replace(" ", "").split(",") if v]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.studies.spreading",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--backends", type=int, default=3, help="predictor replicas [3]")
    p.add_argument("--connections", default="1,3,8",
                   help="PREDICTOR_CONNECTIONS values, comma-separated [1,3,8]")
    p.add_argument("--policies", default="round-robin,random",
                   help="balancer policies: round-robin, random [both]")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients [8]")
    p.add_argument("--requests", type=int, default=15, help="requests per client [15]")
    p.add_argument("--delay-ms", type=float, default=20, help="predictor answer time [20]")
    p.add_argument("--seed", type=int, default=0, help="the random policy's seed [0]")
    args = p.parse_args(argv)
    policies: list[Policy] = []
    for name in _list(args.policies):
        if name not in ("round-robin", "random"):
            p.error(f"unknown policy {name!r}")
        policies.append(name)  # type: ignore[arg-type]
    print(f"machine: {machine_info()['cpu']}, {len(os.sched_getaffinity(0))} usable cores "
          f"(shared with other jobs); {args.backends} FAKE predictors answering after "
          f"{args.delay_ms:g} ms; {args.clients} clients x {args.requests} requests of "
          f"2 pairs (one predictor call each)", flush=True)
    log_dir = RESULTS_DIR / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {"EMBEDDING_CACHE_SIZE": "0"}
    with contextlib.ExitStack() as stack:
        backends = []
        for i in range(args.backends):
            log = log_dir / f"spreading-predictor-{i}.log"
            address = stack.enter_context(fake_predictor(delay_s=args.delay_ms / 1000,
                                                         log_path=log))
            backends.append((address, log))
        for policy in policies:
            for connections in (int(c) for c in _list(args.connections)):
                balancer = TcpBalancer([a for a, _ in backends], policy=policy,
                                       seed=args.seed)
                before = [_calls(log) for _, log in backends]
                with balancer.serving() as address, run_transformer(
                        address, {**env, "PREDICTOR_CONNECTIONS": str(connections)},
                        log_dir / "spreading-transformer.log", own_session=True) as t:
                    rate = _load(t.url, clients=args.clients, requests=args.requests)
                split = [_calls(log) - b for (_, log), b in zip(backends, before, strict=True)]
                total = sum(split) or 1
                shares = " / ".join(f"{100 * n / total:.0f}%" for n in split)
                print(f"policy={policy} PREDICTOR_CONNECTIONS={connections}: calls per "
                      f"predictor {split} = {shares} of {sum(split)}; connections per "
                      f"predictor {balancer.connections}; {rate:.0f} requests/s", flush=True)
    print(reproduce("bench.studies.spreading", argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Several clients at once against the service: throughput and latency percentiles."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx

from bench.http_client import Deadline, post


def measure_concurrent(url: str, bodies: list[list[bytes]], pairs_per_request: int,
                       deadline: Deadline) -> dict[str, Any]:
    """``len(bodies)`` clients, each sending its requests back to back."""
    clients = len(bodies)
    barrier = threading.Barrier(clients + 1)
    results: list[tuple[list[float], float]] = [([], 0.0)] * clients
    errors: list[BaseException] = []

    def client(c: int) -> None:
        lat: list[float] = []
        try:
            with httpx.Client() as http:
                barrier.wait()
                for body in bodies[c]:
                    wall, _, _ = post(http, url, body, pairs_per_request, deadline)
                    lat.append(wall)
            results[c] = (lat, time.perf_counter())
        except BaseException as e:  # reported by the main thread
            errors.append(e)
            with_barrier_abort(barrier)

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(clients)]
    for t in threads:
        t.start()
    try:
        barrier.wait()
    except threading.BrokenBarrierError:  # a client failed before the start: reported below
        pass
    t0 = time.perf_counter()
    for t in threads:
        while t.is_alive():  # short joins: the main thread stays responsive to signals
            t.join(timeout=0.2)
    if errors:
        raise errors[0]
    wall = max(end for _, end in results) - t0
    latencies = sorted(x for lat, _ in results for x in lat)
    total = sum(len(lat) for lat, _ in results) * pairs_per_request
    return {"clients": clients, "rounds": len(bodies[0]), "pairs_per_request": pairs_per_request,
            "pairs": total, "wall_s": wall, "pairs_per_s": total / wall,
            "latency_p50_s": percentile(latencies, 50), "latency_p95_s": percentile(latencies, 95),
            "latency_max_s": latencies[-1]}


def with_barrier_abort(barrier: threading.Barrier) -> None:
    try:
        barrier.abort()
    except Exception:
        pass


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile of an already sorted list."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = (len(sorted_values) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


"""The client side of the HTTP benchmarks: distinct images handed out once, request
bodies, one checked ``POST /similarity``, and the run's deadline."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from testing.photos import BenchImage


class BenchError(Exception):
    """The service answered something other than a valid 200."""


class Pool:
    """Hands out images in order; every request gets images nobody has seen yet."""

    def __init__(self) -> None:
        self.images: list[BenchImage] = []
        self.cursor = 0

    def take(self, n: int) -> list[BenchImage]:
        out = self.images[self.cursor : self.cursor + n]
        assert len(out) == n, "image pool too small (bug in the plan)"
        self.cursor += n
        return out

    def pairs(self, n: int) -> list[tuple[BenchImage, BenchImage]]:
        flat = self.take(2 * n)
        return [(flat[2 * i], flat[2 * i + 1]) for i in range(n)]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def request_body(pairs: Sequence[tuple[BenchImage, BenchImage]]) -> bytes:
    return json.dumps({"pairs": [
        {"reference_image": b64(a.data), "generated_image": b64(b.data), "pair_id": i}
        for i, (a, b) in enumerate(pairs)]}).encode()


@dataclass
class Deadline:
    at: float

    def left(self) -> float:
        return max(1.0, self.at - time.monotonic())


def post(client: httpx.Client, url: str, body: bytes, n: int, deadline: Deadline
         ) -> tuple[float, float, list[float]]:
    """One ``POST /similarity``: wall seconds, server ms, distances."""
    t0 = time.perf_counter()
    r = client.post(f"{url}/similarity", content=body, timeout=min(900.0, deadline.left()),
                    headers={"Content-Type": "application/json"})
    wall = time.perf_counter() - t0
    if r.status_code != 200:
        raise BenchError(f"POST /similarity ({n} pairs) answered {r.status_code}: {r.text[:500]}")
    data = r.json()
    scores = data.get("scores", [])
    if len(scores) != n or any(s.get("pair_id") != i for i, s in enumerate(scores)):
        raise BenchError(f"POST /similarity ({n} pairs): malformed answer {str(data)[:300]}")
    return wall, float(data.get("processing_time_ms", float("nan"))), \
        [float(s["distance"]) for s in scores]


"""A FAKE similarity service for the client's unit tests: a real HTTP server on loopback.

It stands in for the real transformer where the tests need answers the real service gives
only under conditions that are slow or hard to arrange (413 on a given pair count, 429 and
503 with ``Retry-After`` on a given request, 422 naming a given pair, a request held until
the test says so). It speaks the API's wire format (``POST /similarity`` bodies, error
bodies built by ``transformer/errors.py`` itself, so the 413's structured ``limit`` is the
service's own shape; ``test_client_service.py`` checks the client against the real 413)
but does NOT compute DreamSim: a distance is a hash of the two
inputs (0 when they are equal). Tests against the real service are in
``test_client_service.py``.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from testing.http_host import Handler as QuietHandler
from testing.http_host import serving
from transformer.errors import TooManyPairs
from transformer.schemas import ErrorItem, RequestLimit

BAD_IMAGE = "YmFk"  # base64 of b"bad": the stand-in answers 422 for it, as the service would


def fake_distance(a: str, b: str) -> float:
    """The stand-in's distance: deterministic, 0 for equal inputs, else in (0, 1)."""
    if a == b:
        return 0.0
    digest = hashlib.sha256(f"{a}\x00{b}".encode()).digest()
    return (int.from_bytes(digest[:4], "big") + 1) / 2**32


Answer = tuple[int, dict[str, str], dict[str, Any]]


@dataclass
class Received:
    at: float
    pairs: list[dict[str, Any]]


@dataclass
class StandIn:
    """Scripted behaviour; every request is recorded in ``received``."""

    url: str = ""
    pair_limit: int | None = None  # more pairs: 413 with the service's message
    body_limit: int | None = None  # more bytes: 413 "request body ... over the limit"
    script: list[Answer] = field(default_factory=list)  # answered first, one per request
    hold: Callable[[list[dict[str, Any]]], None] | None = None  # called before answering
    max_in_flight: int | None = None  # more requests at once: 429, as the admission does
    delay_s: float = 0.0  # each scored request takes this long
    delay_per_pair_s: float = 0.0  # ... plus this per pair (a slow, CPU-like service)
    health: list[int] = field(default_factory=list)  # GET /health statuses, then 200
    health_calls: int = 0
    in_flight: int = 0
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, raw: bytes) -> Answer:
        if self.body_limit is not None and len(raw) > self.body_limit:
            return 413, {}, {"detail": f"request body of {len(raw)} bytes is over the limit "
                                       f"of {self.body_limit} (MAX_REQUEST_BODY_MB)",
                             "errors": []}
        body = json.loads(raw)
        pairs = body["pairs"]
        with self.lock:
            self.received.append(Received(time.monotonic(), pairs))
            scripted = self.script.pop(0) if self.script else None
        if scripted is not None:
            return scripted
        if self.pair_limit is not None and len(pairs) > self.pair_limit:
            refused = TooManyPairs(
                f"{len(pairs)} pairs in one request (stand-in)",
                [ErrorItem(field="pairs", reason=f"{len(pairs)} > {self.pair_limit}")],
                limit=RequestLimit(setting="MAX_PAIRS_PER_REQUEST", value=self.pair_limit))
            return 413, {}, refused.body()
        errors = [{"index": i, "pair_id": p.get("pair_id"), "field": f,
                   "reason": "not an image (cannot identify image file)"}
                  for i, p in enumerate(pairs) for f in ("reference_image", "generated_image")
                  if p[f] == BAD_IMAGE]
        if errors:
            return 422, {}, {"detail": f"{len(errors)} image(s) could not be used",
                             "errors": errors}
        with self.lock:
            self.in_flight += 1
            busy = self.max_in_flight is not None and self.in_flight > self.max_in_flight
        try:
            if busy:
                return 429, {}, {"detail": "the service is busy: too many requests in "
                                           "flight; retry shortly", "errors": []}
            time.sleep(self.delay_s + self.delay_per_pair_s * len(pairs))
        finally:
            with self.lock:
                self.in_flight -= 1
        if self.hold is not None:
            self.hold(pairs)
        scores = []
        for p in pairs:
            d = fake_distance(p["reference_image"], p["generated_image"])
            scores.append({"distance": d, "similarity": 1 / (1 + d), "pair_id": p.get("pair_id")})
        return 200, {}, {"scores": scores, "processing_time_ms": 1.0}

    def sizes(self) -> list[int]:
        return [len(r.pairs) for r in self.received]


def _handler(standin: StandIn) -> type[QuietHandler]:
    class Handler(QuietHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path == "/health":
                with standin.lock:
                    standin.health_calls += 1
                    status = standin.health.pop(0) if standin.health else 200
                body = {"status": "ok" if status == 200 else "loading"}
            else:
                status, body = 404, {"detail": "Not Found"}
            self.reply_json(status, body)

        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path != "/similarity":
                answer: Answer = (404, {}, {"detail": "Not Found"})
                status, headers, body = answer
            else:
                status, headers, body = standin.answer(raw)
            self.reply_json(status, body, headers)

    return Handler


@contextmanager
def serve(standin: StandIn, port: int = 0) -> Iterator[StandIn]:
    """Run ``standin`` on 127.0.0.1 (a free port unless given) for the with-block."""
    with serving(_handler(standin), port=port) as standin.url:
        yield standin

"""The client's own logic (chunking, retries, per-pair errors, streaming, inputs) against
the stand-in service in ``standin.py`` (a FAKE: a real HTTP server on loopback that follows
a script). The same behaviours against the real service: ``test_client_service.py``."""

from __future__ import annotations

import asyncio
import base64
import io
import threading
import time
import typing
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image
from similarity_client import (
    AsyncSimilarityClient,
    Pair,
    RetryPolicy,
    ServiceError,
    SimilarityClient,
)
from similarity_client.client import PairLike
from similarity_client.models import PairResult
from similarity_client.retry import parse_retry_after

from testing.procs import free_port
from tests.client.standin import BAD_IMAGE, Answer, StandIn, fake_distance, serve

FAST = RetryPolicy(max_retries=3, base_delay_s=0.01, max_delay_s=0.05)


def png(color: tuple[int, int, int], size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, "PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def numbered_pairs(n: int) -> list[Pair]:
    return [Pair(png((i % 256, 0, 0)), png((0, i % 256, 1)), f"p{i}") for i in range(n)]


def expected(pair: Pair) -> float:
    assert isinstance(pair.reference, bytes) and isinstance(pair.generated, bytes)
    return fake_distance(b64(pair.reference), b64(pair.generated))


def test_sides_are_encoded_by_kind_and_urls_passed_through(tmp_path: Path) -> None:
    file_bytes = png((10, 20, 30))
    (tmp_path / "a.png").write_bytes(file_bytes)
    pil = Image.new("RGB", (5, 4), (1, 2, 3))
    url, data_uri = "https://images.example/x.png", "data:image/png;base64," + b64(file_bytes)
    pairs: list[PairLike] = [(tmp_path / "a.png", str(tmp_path / "a.png"), "paths"),
             (b"\x89PNGraw", bytearray(b"\xff\xd8\xffjpeg"), "bytes"),
             (pil, url, "pil-url"), (data_uri, url, 7)]
    with serve(StandIn()) as s:
        results = list(SimilarityClient(s.url, concurrency=1).score(pairs))
    sent = {p["pair_id"]: p for r in s.received for p in r.pairs}
    assert sent["paths"]["reference_image"] == b64(file_bytes)
    assert sent["paths"]["generated_image"] == b64(file_bytes)
    assert sent["bytes"]["reference_image"] == b64(b"\x89PNGraw")
    assert sent["bytes"]["generated_image"] == b64(b"\xff\xd8\xffjpeg")
    decoded = Image.open(io.BytesIO(base64.b64decode(sent["pil-url"]["reference_image"])))
    assert decoded.format == "PNG" and decoded.tobytes() == pil.tobytes()
    assert sent["pil-url"]["generated_image"] == url  # never fetched by the client
    assert sent[7]["reference_image"] == data_uri and sent[7]["generated_image"] == url
    by_id = {r.pair_id: r for r in results}
    assert by_id["paths"].distance == 0.0 and by_id["paths"].similarity == 1.0
    assert by_id["paths"].reference == str(tmp_path / "a.png")
    assert by_id["pil-url"].reference == "<PIL image 5x4 RGB>"
    assert by_id[7].distance == pytest.approx(fake_distance(data_uri, url))


def test_pairs_without_id_are_identified_by_position() -> None:
    with serve(StandIn()) as s:
        results = list(SimilarityClient(s.url).score([(b"a", b"b"), {"reference": b"c",
                                                                       "generated": b"c"}]))
    assert sorted((r.pair_id for r in results), key=str) == [0, 1]
    assert {r.pair_id: r.distance for r in results}[1] == 0.0
    with serve(StandIn()) as s, pytest.raises(TypeError, match="pair 1: pair_id must be"):
        bad = (b"a", b"b", 1.5)  # a float pair_id: what the test is about
        list(SimilarityClient(s.url).score([(b"a", b"b", "ok"), bad]))  # type: ignore[list-item]


def test_a_missing_file_is_an_error_and_never_sent(tmp_path: Path) -> None:
    pairs = [Pair(tmp_path / "missing.png", b"x", "gone"), Pair(tmp_path, b"x", "dir"),
             Pair(b"a", b"b", "fine")]
    with serve(StandIn()) as s:
        results = {r.pair_id: r for r in SimilarityClient(s.url).score(pairs)}
    assert results["gone"].error == "file not found"
    assert results["gone"].field == "reference_image" and not results["gone"].retryable
    assert results["dir"].error == "is a directory, not a file"
    assert results["fine"].ok
    assert [p["pair_id"] for r in s.received for p in r.pairs] == ["fine"]


def test_learns_the_pair_limit_from_413_and_never_exceeds_it() -> None:
    pairs = numbered_pairs(60)
    with serve(StandIn(pair_limit=5)) as s:
        client = SimilarityClient(s.url, concurrency=3, chunk_size=16, retry=FAST)
        results = list(client.score(pairs))
    assert Counter(r.pair_id for r in results) == Counter(p.pair_id for p in pairs)
    assert all(r.distance == pytest.approx(expected(p))
               for r, p in zip(sorted(results, key=lambda r: int(str(r.pair_id)[1:])), pairs,
                               strict=True))
    assert client.stats.pair_limit == 5
    sizes = s.sizes()
    # Only the chunks already in flight before the first 413 came back were too large.
    assert sum(1 for n in sizes if n > 5) <= 3, sizes
    assert max(sizes[-5:]) <= 5


def test_413_for_the_body_size_halves_and_a_lone_oversized_pair_is_its_error() -> None:
    big = Pair(b"x" * 3000, b"y", "big")
    pairs = [*numbered_pairs(12), big]
    with serve(StandIn(body_limit=1500)) as s:
        client = SimilarityClient(s.url, concurrency=1, chunk_size=13, retry=FAST)
        results = {r.pair_id: r for r in client.score(pairs)}
    assert len(results) == 13
    assert all(results[p.pair_id].ok for p in pairs[:12])
    assert results["big"].error is not None and "413" in results["big"].error
    assert "MAX_REQUEST_BODY_MB" in results["big"].error and results["big"].field == "pair"
    assert client.stats.pair_limit is None and client.stats.splits >= 3


def test_retry_after_is_honoured_on_429_and_503() -> None:
    script = [(429, {"Retry-After": "1"}, {"detail": "busy", "errors": []}),
              (503, {"Retry-After": "1"}, {"detail": "predictor restarting", "errors": []})]
    with serve(StandIn(script=script)) as s:
        # Backoff alone would wait 10-20 ms: any wait near 1 s is the Retry-After.
        client = SimilarityClient(s.url, retry=RetryPolicy(max_retries=5, base_delay_s=0.01))
        results = list(client.score(numbered_pairs(3)))
    assert all(r.ok for r in results) and len(results) == 3
    times = [r.at for r in s.received]
    assert len(times) == 3
    assert times[1] - times[0] >= 0.95 and times[2] - times[1] >= 0.95, times
    assert client.stats.retries == Counter({"HTTP 429": 1, "HTTP 503": 1})


def test_overload_lowers_the_requests_in_flight_instead_of_exhausting_retries() -> None:
    # One request at a time, 100 ms each; 4 workers retrying every 10-50 ms would lose the
    # race for the one slot more than 3 times in a row without the adaptive window.
    with serve(StandIn(max_in_flight=1, delay_s=0.1)) as s:
        client = SimilarityClient(s.url, concurrency=4, chunk_size=1, retry=RetryPolicy(
            max_retries=3, base_delay_s=0.01, max_delay_s=0.05))
        results = list(client.score(numbered_pairs(16)))
    assert [r for r in results if not r.ok] == []
    assert client.stats.retries["HTTP 429"] >= 1 and client.stats.lowest_concurrency == 1


def test_backoff_is_exponential_and_bounded() -> None:
    policy = RetryPolicy(base_delay_s=0.5, max_delay_s=4.0, jitter=False)
    assert [policy.delay(n, None) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert policy.delay(1, 3.0) == 3.0  # never sooner than Retry-After
    assert policy.delay(1, 3600.0) == 4.0  # ... but bounded
    jittered = RetryPolicy(base_delay_s=1.0, max_delay_s=100.0)
    assert all(2.0 <= jittered.delay(3, None) <= 4.0 for _ in range(50))
    assert parse_retry_after("7") == 7.0 and parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past


def test_gives_up_after_max_retries_with_retryable_errors() -> None:
    script: list[Answer] = [(503, {}, {"detail": "no predictor", "errors": []})] * 10
    with serve(StandIn(script=script)) as s:
        client = SimilarityClient(s.url, retry=RetryPolicy(max_retries=2, base_delay_s=0.01))
        results = list(client.score(numbered_pairs(2)))
    assert len(s.received) == 3
    assert all(r.retryable and r.error == "gave up after 2 retries; last: HTTP 503: "
               "no predictor" for r in results)


def test_connection_refused_is_retried_until_the_service_comes_up() -> None:
    port = free_port()
    standin = StandIn()
    started = threading.Event()

    def late_start() -> None:
        time.sleep(0.8)
        with serve(standin, port=port):
            started.set()
            time.sleep(5)

    threading.Thread(target=late_start, daemon=True).start()
    client = SimilarityClient(f"http://127.0.0.1:{port}",
                              retry=RetryPolicy(max_retries=20, base_delay_s=0.05,
                                                max_delay_s=0.2))
    results = list(client.score(numbered_pairs(2)))
    assert started.is_set() and all(r.ok for r in results)
    assert client.stats.retries["ConnectError"] >= 1


def test_a_422_pair_is_an_error_and_the_rest_of_its_chunk_is_resent() -> None:
    pairs = [*numbered_pairs(5)]
    pairs.insert(2, Pair(b"bad", b"fine", "broken"))  # b"bad" -> BAD_IMAGE
    assert b64(b"bad") == BAD_IMAGE
    with serve(StandIn()) as s:
        client = SimilarityClient(s.url, chunk_size=10)
        results = {r.pair_id: r for r in client.score(pairs)}
    assert results["broken"].error == "not an image (cannot identify image file)"
    assert results["broken"].field == "reference_image" and not results["broken"].retryable
    assert all(results[p.pair_id].distance == pytest.approx(expected(p))
               for p in pairs if p.pair_id != "broken")
    assert s.sizes() == [6, 5] and client.stats.resent == 1
    assert "broken" not in [p["pair_id"] for p in s.received[1].pairs]


def test_an_unfixable_answer_stops_the_run() -> None:
    script: list[Answer] = [(422, {}, {"detail": "the request body does not match the API",
                         "errors": [{"index": None, "field": "pairs", "reason": "bad"}]})]
    with serve(StandIn(script=script)) as s:
        with pytest.raises(ServiceError, match="does not match the API"):
            list(SimilarityClient(s.url).score(numbered_pairs(2)))
        with pytest.raises(ServiceError, match="HTTP 404"):  # more pairs than the queue holds
            list(SimilarityClient(s.url + "/wrong", concurrency=1, chunk_size=1).score(
                numbered_pairs(50)))


def test_results_stream_as_chunks_complete() -> None:
    release = threading.Event()

    def hold(pairs: list[dict[str, object]]) -> None:
        if any(p["pair_id"] == "slow" for p in pairs):
            assert release.wait(10), "the test never released the slow chunk"

    pairs = [Pair(b"s", b"t", "slow"), *numbered_pairs(3)]
    with serve(StandIn(hold=hold)) as s:
        results = SimilarityClient(s.url, concurrency=2, chunk_size=1).score(pairs)
        first = [next(results) for _ in range(3)]  # while "slow" is still held
        assert "slow" not in [r.pair_id for r in first]
        release.set()
        rest = list(results)
    assert [r.pair_id for r in rest] == ["slow"]


def test_stopping_the_iteration_early_cancels_the_rest() -> None:
    with serve(StandIn()) as s:
        # score() is a generator: close() is how a caller stops it early.
        results = typing.cast(typing.Generator[PairResult, None, None], SimilarityClient(
            s.url, concurrency=1, chunk_size=1).score(numbered_pairs(200)))
        assert next(results).ok
        results.close()
        sent = len(s.received)
        time.sleep(0.2)
        assert len(s.received) == sent < 200


def test_async_client_streams_the_same_results() -> None:
    pairs = numbered_pairs(9)

    async def run(url: str) -> dict[object, float | None]:
        async def agen():  # type: ignore[no-untyped-def]
            for p in pairs:
                yield p

        async with AsyncSimilarityClient(url, concurrency=2, chunk_size=4) as client:
            return {r.pair_id: r.distance async for r in client.score(agen())}

    with serve(StandIn()) as s:
        got = asyncio.run(run(s.url))
        sync = {r.pair_id: r.distance for r in SimilarityClient(s.url).score(pairs)}
    assert got == sync == {p.pair_id: pytest.approx(expected(p)) for p in pairs}


def test_adaptive_chunks_start_small_grow_on_a_fast_service_and_stay_under_the_maximum() -> None:
    with serve(StandIn()) as s:
        client = SimilarityClient(s.url, concurrency=1, chunk_size=16, retry=FAST,
                                  target_request_s=5.0)
        results = list(client.score(numbered_pairs(60)))
    assert len(results) == 60 and all(r.ok for r in results)
    sizes = s.sizes()
    # Each request on loopback takes milliseconds, far under 5 s: 4, then doubling to 16.
    assert sizes[:3] == [4, 8, 16], sizes
    assert max(sizes) == 16, sizes


def test_adaptive_chunks_shrink_on_a_slow_service() -> None:
    # 0.1 s per pair, a 0.25 s target: the first chunk of 4 takes 0.4 s (more under load),
    # so the next ones are at most 2 pairs (the time per pair says 2.5 or fewer).
    with serve(StandIn(delay_per_pair_s=0.1)) as s:
        client = SimilarityClient(s.url, concurrency=1, chunk_size=32, retry=FAST,
                                  target_request_s=0.25)
        results = list(client.score(numbered_pairs(12)))
    assert len(results) == 12 and all(r.ok for r in results)
    sizes = s.sizes()
    assert sizes[0] == 4 and max(sizes[1:]) <= 2, sizes


def test_fixed_chunks_without_a_target() -> None:
    with serve(StandIn()) as s:
        list(SimilarityClient(s.url, concurrency=1, chunk_size=16).score(numbered_pairs(40)))
    assert s.sizes() == [16, 16, 8]

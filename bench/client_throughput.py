"""Bulk scoring throughput: the client (chunks, concurrent requests) against one pair per
request, on the same running service, in one run.

    python -m bench.client_throughput --url http://localhost:8080 [--pairs 2000]

The pairs combine a few distinct small images (``--distinct``; combinations repeat when
there are fewer than ``--pairs``), and every image is embedded
once before timing starts, so both sides are served from the service's embedding cache:
what is measured is the per-request cost (HTTP, JSON, base64, cache look-ups, admission)
that chunking amortises, not the model (which on a CPU would dominate both sides and take
far too long for 2,000 distinct pairs). One pair per request is timed on ``--naive-pairs``
pairs before and after the client run (the machine's speed drifts) and its rate taken as
the mean of both.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import os
import platform
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
from similarity_client import Pair, SimilarityClient

from testing.images import image_files


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


@dataclass(frozen=True)
class Figures:
    pairs: int
    client_s: float
    client_rate: float
    naive_pairs: int
    naive_rate: float
    chunk_size: int
    concurrency: int
    requests: int

    def table(self) -> str:
        return "\n".join([
            f"{'mode':<36} {'pairs':>6} {'pairs/s':>9}",
            f"{f'client, chunks of {self.chunk_size}, {self.concurrency} concurrent':<36} "
            f"{self.pairs:>6} {self.client_rate:>9.1f}   ({self.client_s:.1f} s, "
            f"{self.requests} requests)",
            f"{'one pair per request, sequential':<36} {self.naive_pairs:>6} "
            f"{self.naive_rate:>9.1f}",
            f"ratio: {self.client_rate / self.naive_rate:.1f}x"])


def measure(url: str, *, pairs: int = 2000, distinct: int = 48, naive_pairs: int = 200,
            chunk_size: int = 32, concurrency: int = 4, workdir: Path | None = None) -> Figures:
    """Time the client on ``pairs`` pairs and one pair per request on ``naive_pairs``."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = workdir or Path(tmp)
        images = image_files(folder, distinct, seed=12)
        combos = list(itertools.islice(itertools.permutations(range(distinct), 2), pairs))
        # Fewer distinct combinations than pairs: repeat them (under other pair ids).
        combos = [combos[k % len(combos)] for k in range(pairs)]
        todo = [Pair(images[a], images[b], f"t{k}") for k, (a, b) in enumerate(combos)]
        with httpx.Client(timeout=600) as http:
            # Embed every image once (small requests: a slow CPU must not hit the service's
            # PREDICTOR_TIMEOUT), so that both sides below hit the embedding cache.
            warm = [Pair(images[i], images[(i + 1) % distinct], i) for i in range(distinct)]
            warmed = list(SimilarityClient(url, chunk_size=4, concurrency=1).score(warm))
            assert all(r.ok for r in warmed), [r for r in warmed if not r.ok][:3]

            def naive() -> float:
                started = time.perf_counter()
                for pair in todo[:naive_pairs]:
                    body = {"pairs": [{"reference_image": _b64(Path(str(pair.reference))),
                                       "generated_image": _b64(Path(str(pair.generated))),
                                       "pair_id": pair.pair_id}]}
                    http.post(f"{url}/similarity", json=body).raise_for_status()
                return naive_pairs / (time.perf_counter() - started)

            before = naive()
            client = SimilarityClient(url, chunk_size=chunk_size, concurrency=concurrency)
            started = time.perf_counter()
            results = list(client.score(todo))
            client_s = time.perf_counter() - started
            after = naive()
        counts = Counter(r.pair_id for r in results)
        assert len(counts) == pairs and set(counts.values()) == {1}, "a pair lost or repeated"
        assert all(r.ok for r in results), [r for r in results if not r.ok][:3]
        return Figures(pairs, client_s, pairs / client_s, naive_pairs, (before + after) / 2,
                       chunk_size, concurrency, client.stats.requests)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--distinct", type=int, default=48)
    parser.add_argument("--naive-pairs", type=int, default=200)
    parser.add_argument("--chunk-size", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args(argv)
    figures = measure(args.url.rstrip("/"), pairs=args.pairs, distinct=args.distinct,
                      naive_pairs=args.naive_pairs, chunk_size=args.chunk_size,
                      concurrency=args.concurrency)
    print(f"client throughput against {args.url} ({platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs; every image in the embedding cache)")
    print(figures.table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

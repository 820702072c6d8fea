"""``similarity-client nearest`` figures: references embedded per second (from the service,
and from the local store on a rerun), and search time of 10^3 queries against 10^4, 10^5 and
10^6 references, exact numpy (blockwise BLAS) against faiss (``IndexFlatIP``, exact; and
``IndexIVFFlat``, approximate).

    python -m bench.nearest [--sizes 10000,100000,1000000] [--queries 1000] [--dim 768]
    python -m bench.nearest --url http://localhost:8080 --embed 64   # also the embedding rate

Search runs on synthetic unit vectors (random: the worst case for the IVF index, whose
recall is printed too). The references are generated in float32; 10^6 x 768 is 3 GB, and
faiss keeps a copy of its own: ``--block`` holds at most that many at once and streams a
larger set block by block (each block searched as the CLI searches it, the top-k merged
across blocks, the merge timed too), for machines without the memory. Embedding
needs a running service; a distinct set of small PNGs (never seen by its cache) is embedded
into a fresh store, then read again from the store by the same call a rerun makes.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from similarity_client import AsyncSimilarityClient
from similarity_client.embedset import embed_set, service_model_type
from similarity_client.imagesets import read_images
from similarity_client.search import Searcher
from similarity_client.store import EmbeddingStore

from testing.images import image_files


def unit_rows(rng: np.random.Generator, n: int, dim: int, block: int = 100_000) -> np.ndarray:
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, block):
        x = rng.standard_normal((min(block, n - s), dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[s:s + len(x)] = x
    return out


def time_search(refs: np.ndarray, queries: np.ndarray, engine: str, k: int
                ) -> tuple[float, float, np.ndarray, np.ndarray]:
    """(build s, search s, top-k indices, their similarities) of one engine."""
    started = time.perf_counter()
    searcher = Searcher(refs, engine=engine)
    built = time.perf_counter() - started
    started = time.perf_counter()
    hits = [h for _, block in searcher.search(queries, k) for h in block]
    searched = time.perf_counter() - started
    idx = np.array([h.indices for h in hits], np.int64)
    return built, searched, idx, 1 - np.array([h.distances for h in hits])


def streamed(n: int, block: int, dim: int, queries: np.ndarray, engine: str, k: int
             ) -> tuple[float, float, np.ndarray]:
    """Search time against ``n`` references generated ``block`` at a time (so that the
    benchmark never holds them all): per block as the CLI does it, top-k merged across
    blocks (the merge is timed too). Build and search seconds, summed; the top-k."""
    built = searched = 0.0
    best_idx = np.zeros((len(queries), 0), np.int64)
    best_sim = np.zeros((len(queries), 0))
    for s in range(0, n, block):
        refs = unit_rows(np.random.default_rng([n, s]), min(block, n - s), dim)
        b, t, idx, sim = time_search(refs, queries, engine, k)
        started = time.perf_counter()
        idx = np.concatenate([best_idx, idx + s], 1)
        sim = np.concatenate([best_sim, sim], 1)
        keep = np.argsort(-sim, 1, kind="stable")[:, :k]
        best_idx, best_sim = np.take_along_axis(idx, keep, 1), np.take_along_axis(sim, keep, 1)
        built, searched = built + b, searched + t + time.perf_counter() - started
        del refs
    return built, searched, best_idx


def search_figures(sizes: list[int], n_queries: int, dim: int, k: int, ivf_max: int,
                   block: int) -> None:
    rng = np.random.default_rng(0)
    queries = unit_rows(rng, n_queries, dim)
    print(f"\n{n_queries} queries, k={k}, dim {dim}, float32; seconds; references held in "
          f"blocks of at most {block:,}")
    print("| references | numpy exact: search | faiss exact: build + search | "
          "faiss IVF approx: build + search (recall@k) |")
    print("|---|---|---|---|")
    for n in sizes:
        _, np_s, np_idx = streamed(n, block, dim, queries, "numpy", k)
        fa_b, fa_s, fa_idx = streamed(n, block, dim, queries, "faiss", k)
        same = bool((np_idx == fa_idx).all())
        ivf_cell = "-"
        if n <= ivf_max and n <= block:
            refs = unit_rows(np.random.default_rng([n, 0]), n, dim)
            iv_b, iv_s, iv_idx, _ = time_search(refs, queries, "faiss-ivf", k)
            recall = np.mean([len(set(a) & set(b)) / k for a, b in
                              zip(iv_idx, np_idx, strict=True)])
            ivf_cell = f"{iv_b:.1f} + {iv_s:.2f} ({recall:.2f})"
            del refs
        print(f"| {n:,} | {np_s:.2f} | {fa_b:.1f} + {fa_s:.2f}"
              f"{'' if same else ' (DIFFERENT neighbours)'} | {ivf_cell} |", flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    print(f"peak RSS {peak:.1f} GB")


def embed_figures(url: str, n: int, chunk_size: int, concurrency: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "refs"
        folder.mkdir()
        image_files(folder, n, seed=int(time.time()) % 100_000)  # unseen by the service
        images = read_images(folder)
        store = EmbeddingStore(Path(tmp) / "store", service_model_type(url))

        def client() -> AsyncSimilarityClient:
            return AsyncSimilarityClient(url, chunk_size=chunk_size, concurrency=concurrency)

        first = embed_set(images, store, client, progress=False)
        again = embed_set(images, EmbeddingStore(Path(tmp) / "store", store.model_type),
                          client, progress=False)
        assert first.embedded == n and again.embedded == 0 and again.cached == n
        print(f"\nembedding {n} distinct 64x64 PNGs ({store.model_type}, chunks of "
              f"{2 * chunk_size}, {concurrency} in flight):")
        print(f"  from the service (not cached): {n / first.wall_s:.1f} references/s "
              f"({first.wall_s:.1f} s)")
        print(f"  from the local store (a rerun): {n / again.wall_s:.0f} references/s "
              f"({again.wall_s:.3f} s, no request)")


def store_figures(n: int, dim: int) -> None:
    """Rate of a rerun that finds every reference in the store (no service needed): hash
    each file, look it up, gather the vectors."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "refs"
        folder.mkdir()
        image_files(folder, n, seed=7)
        images = read_images(folder)
        store = EmbeddingStore(Path(tmp) / "store", "dino_vitb16")
        vectors = unit_rows(np.random.default_rng(7), n, dim)
        from similarity_client.store import image_key

        for image, v in zip(images, vectors, strict=True):
            store.add(image_key(image.source), v)
        store.flush()
        again = embed_set(images, EmbeddingStore(Path(tmp) / "store", "dino_vitb16"), None,
                          progress=False)
        assert again.cached == n and len(again.images) == n
        print(f"\nfrom the local store, no service ({n} 64x64 PNG files, {dim}-d): "
              f"{n / again.wall_s:.0f} references/s ({again.wall_s:.2f} s: hashing the "
              f"files, looking up, gathering the vectors)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--ivf-max", type=int, default=100_000,
                        help="time the approximate index up to this many references")
    parser.add_argument("--block", type=int, default=1_000_000,
                        help="references held at once (memory: block x dim x 4 bytes; "
                             "larger sets are streamed block by block)")
    parser.add_argument("--url", help="a running service: also measure embedding")
    parser.add_argument("--store-only", type=int, default=0, metavar="N",
                        help="also time a rerun of N references served by the store alone")
    parser.add_argument("--embed", type=int, default=64, help="images to embed (--url)")
    parser.add_argument("--chunk-size", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args(argv)
    load = os.getloadavg()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average {load[0]:.1f}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    if args.store_only:
        store_figures(args.store_only, args.dim)
    if args.url:
        embed_figures(args.url, args.embed, args.chunk_size, args.concurrency)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if sizes:
        search_figures(sizes, args.queries, args.dim, args.k, args.ivf_max, args.block)


if __name__ == "__main__":
    main()

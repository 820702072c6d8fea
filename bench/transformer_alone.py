"""``python -m bench.transformer_alone``: the transformer's own cost, inference left out.

On a GPU the model is fast and the transformer (HTTP, JSON, base64, decoding, resizing,
hashing, gRPC) sets the pace. This machine has no GPU, so this puts in the predictor's
place an instant stand-in: ``testing/fake_predictor.py`` (FAKE, on purpose: it
answers constant embeddings at once over the same gRPC v2 protocol, and records a digest
of every image tensor it receives). Everything else is the real transformer, decoding real
photographs (500-1100 px, half JPEG and half PNG, every request new).

It compares ``DECODE_IMPL=pillow`` (Pillow for every step: the transformer before the
native decoders) with ``DECODE_IMPL=native`` in one run, alternating, and reports:

1. CPU ms per image by format and size, decoding in this process (``decode_image``, each
   image both ways in turn, median of the repeats), and whether the tensors are equal;
2. the same fresh ``--pairs`` requests sent to both transformers, alternating which goes
   first: median latency, the transformer process's CPU time per pair (so pairs/s per
   core, which other jobs on a shared machine disturb much less than latency), the speedup;
3. concurrent clients on each (pairs/s);
4. whether every tensor the native transformer sent is byte-identical to the Pillow one's
   (the stand-ins' digests, compared as sets: the same images, chunked in any order).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import httpx
import numpy as np

from bench.concurrency import measure_concurrent
from bench.http_client import Deadline, post, request_body
from bench.machine import machine_info
from bench.settings import RESULTS_DIR, reproduce
from testing.fake_predictor import fake_predictor
from testing.photos import BenchImage, make_images
from testing.procs import run_transformer
from transformer.images import decode_image
from transformer.resize import warm_up

IMPLS = ("pillow", "native")
_TICK = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def size_bucket(image: BenchImage) -> str:
    side = max(image.width, image.height)
    return "500-699 px" if side < 700 else "700-899 px" if side < 900 else "900-1100 px"


def decode_cpu(images: list[BenchImage], repeats: int) -> tuple[list[str], bool]:
    """Lines of the per-image CPU table, and whether every tensor was identical."""
    warm_up()
    per: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: {
        i: [] for i in IMPLS})
    identical = True
    for k, image in enumerate(images):
        times: dict[str, list[float]] = {i: [] for i in IMPLS}
        outs = {}
        for r in range(repeats):
            order = IMPLS if (k + r) % 2 == 0 else IMPLS[::-1]
            for impl in order:
                t0 = time.thread_time()
                outs[impl] = decode_image(image.data, impl=impl)  # type: ignore[arg-type]
                times[impl].append(time.thread_time() - t0)
        identical &= bool(np.array_equal(outs["pillow"], outs["native"]))
        cell = per[(image.fmt, size_bucket(image))]
        for impl in IMPLS:
            cell[impl].append(statistics.median(times[impl]) * 1000)
    lines = ["| format | long side | images | pillow CPU ms/image | native CPU ms/image | "
             "speedup |", "|---|---|---:|---:|---:|---:|"]
    totals: dict[str, list[float]] = {i: [] for i in IMPLS}
    for (fmt, bucket), cell in sorted(per.items()):
        old, new = statistics.mean(cell["pillow"]), statistics.mean(cell["native"])
        lines.append(f"| {fmt} | {bucket} | {len(cell['pillow'])} | {old:.1f} | {new:.1f} | "
                     f"{old / new:.2f}x |")
        for impl in IMPLS:
            totals[impl] += cell[impl]
    old, new = statistics.mean(totals["pillow"]), statistics.mean(totals["native"])
    lines.append(f"| all | 500-1100 px | {len(totals['pillow'])} | {old:.1f} | {new:.1f} | "
                 f"{old / new:.2f}x |")
    return lines, identical


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.transformer_alone",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=30, help="pairs per request [30]")
    p.add_argument("--requests", type=int, default=8,
                   help="single-client requests sent to both transformers [8]")
    p.add_argument("--clients", type=int, default=2, help="concurrent clients [2]")
    p.add_argument("--rounds", type=int, default=2, help="requests per client [2]")
    p.add_argument("--decode-images", type=int, default=48,
                   help="photographs for the per-image CPU table [48]")
    p.add_argument("--decode-repeats", type=int, default=3,
                   help="decodes of each image each way [3]")
    args = p.parse_args(argv)
    cores = len(os.sched_getaffinity(0))
    m = machine_info()
    print(f"machine: {m['cpu']}, {cores} usable cores (shared with other jobs: figures are "
          f"medians, old and new alternating); predictor: an instant FAKE stand-in (no "
          f"model runs); DECODE_WORKERS={cores}", flush=True)

    concurrent = args.clients * args.rounds
    n_requests = 1 + args.requests + concurrent
    images = make_images(2 * args.pairs * n_requests + args.decode_images, seed=17,
                         min_side=500, max_side=1100)
    table, identical_local = decode_cpu(images[-args.decode_images:] if args.decode_images
                                        else [], args.decode_repeats)
    if args.decode_images:
        print("decode_image CPU time per image (this process, one thread, median of "
              f"{args.decode_repeats}; tensors identical: {identical_local}):")
        print("\n".join(table), flush=True)

    bodies = [request_body([(images[2 * k], images[2 * k + 1]) for k in
                            range(r * args.pairs, (r + 1) * args.pairs)])
              for r in range(n_requests)]
    log_dir = RESULTS_DIR / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    deadline = Deadline(at=float("inf"))
    env = {"MAX_PAIRS_PER_REQUEST": str(max(args.pairs, 128)), "EMBEDDING_CACHE_SIZE": "0"}
    walls: dict[str, list[float]] = {i: [] for i in IMPLS}
    cpus: dict[str, list[float]] = {i: [] for i in IMPLS}
    load: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        records = {i: Path(tmp) / f"{i}.digests" for i in IMPLS}
        servers = {}
        for impl in IMPLS:
            grpc = stack.enter_context(fake_predictor("ok", record=records[impl]))
            t = stack.enter_context(run_transformer(
                grpc, {**env, "DECODE_IMPL": impl}, log_dir / f"alone-{impl}.log",
                own_session=True))
            servers[impl] = (t.url, t.pid)
        http = stack.enter_context(httpx.Client())
        for impl in IMPLS:  # warm-up
            post(http, servers[impl][0], bodies[0], args.pairs, deadline)
        for r in range(1, 1 + args.requests):
            for impl in (IMPLS if r % 2 else IMPLS[::-1]):
                url, pid = servers[impl]
                cpu0 = process_cpu_s(pid)
                walls[impl].append(post(http, url, bodies[r], args.pairs, deadline)[0])
                cpus[impl].append(process_cpu_s(pid) - cpu0)
        rest = bodies[1 + args.requests:]
        for impl in IMPLS:
            load[impl] = measure_concurrent(
                servers[impl][0], [rest[c * args.rounds:(c + 1) * args.rounds]
                                   for c in range(args.clients)], args.pairs, deadline)
        sent = {i: sorted(records[i].read_text().split()) for i in IMPLS}

    wall = {i: statistics.median(walls[i]) * 1000 for i in IMPLS}
    cpu_pair = {i: statistics.median(cpus[i]) * 1000 / args.pairs for i in IMPLS}
    for impl in IMPLS:
        print(f"DECODE_IMPL={impl}: one request of {args.pairs} pairs {wall[impl]:.0f} ms "
              f"(median of {args.requests}); transformer CPU {cpu_pair[impl]:.1f} ms per "
              f"pair = {1000 / cpu_pair[impl]:.1f} pairs/s per core; {args.clients} clients: "
              f"{load[impl]['pairs_per_s']:.1f} pairs/s on {cores} cores", flush=True)
    faster = sum(walls["pillow"][k] > walls["native"][k] for k in range(args.requests))
    cpu_ratio = cpu_pair["pillow"] / cpu_pair["native"]
    load_ratio = load["native"]["pairs_per_s"] / load["pillow"]["pairs_per_s"]
    print(f"native vs pillow: {wall['pillow'] / wall['native']:.2f}x faster per request "
          f"(faster in {faster} of {args.requests}), {cpu_ratio:.2f}x less CPU per pair, "
          f"{load_ratio:.2f}x pairs/s with {args.clients} clients")
    same = sent["pillow"] == sent["native"] and len(sent["native"]) > 0
    print(f"tensors sent to the stand-in: {len(sent['pillow'])} (pillow), "
          f"{len(sent['native'])} (native); byte-identical: {'yes' if same else 'NO'}")
    print(reproduce("bench.transformer_alone", argv))
    return 0 if same and identical_local else 1


if __name__ == "__main__":
    raise SystemExit(main())

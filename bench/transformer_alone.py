"""``python -m bench.transformer_alone``: the transformer's own ceiling, inference left out.

On a GPU the model is fast and the transformer (HTTP, JSON, base64, decoding, hashing,
gRPC) sets the pace. This machine has no GPU, so this puts in the predictor's place an
instant stand-in: ``tests/transformer/fake_predictor.py`` (FAKE, on purpose: it answers
constant embeddings at once over the same gRPC v2 protocol). Everything else is the real
transformer, decoding real photographs (400-1024 px, JPEG and PNG, every request new).

It measures, for DECODE_MODE=exact (DreamSim's preprocessing, the default) and
DECODE_MODE=fast (JPEG draft, opt-in): the latency of one request of ``--pairs`` pairs
(median) and the pairs/s that several concurrent clients get. The scores are meaningless;
only the times count. What it says: the least time a request can take on this many
cores whatever the GPU, and how many transformer cores a target rate needs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics

import httpx

from bench.images import make_images
from bench.run import (
    RESULTS_DIR,
    Deadline,
    machine_info,
    measure_concurrent,
    post,
    reproduce,
    request_body,
)
from bench.service import run_transformer
from tests.transformer.fake_predictor import fake_predictor


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.transformer_alone",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=30, help="pairs per request [30]")
    p.add_argument("--repeats", type=int, default=5, help="single-client requests [5]")
    p.add_argument("--clients", type=int, default=4, help="concurrent clients [4]")
    p.add_argument("--rounds", type=int, default=3, help="requests per client [3]")
    args = p.parse_args(argv)
    cores = len(os.sched_getaffinity(0))
    m = machine_info()
    print(f"machine: {m['cpu']}, {cores} usable cores; predictor: an instant FAKE stand-in "
          f"(no model runs); DECODE_WORKERS={cores}", flush=True)
    per_mode = args.repeats + args.clients * args.rounds + 1
    images = make_images(2 * args.pairs * per_mode * 2, seed=17)
    log_dir = RESULTS_DIR / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    deadline = Deadline(at=float("inf"))
    env = {"MAX_PAIRS_PER_REQUEST": str(max(args.pairs, 128)), "EMBEDDING_CACHE_SIZE": "0"}
    with fake_predictor("ok") as grpc:
        for i, mode in enumerate(("exact", "fast")):
            mine = images[2 * args.pairs * per_mode * i:]
            bodies = [request_body([(mine[2 * k], mine[2 * k + 1]) for k in
                                    range(r * args.pairs, (r + 1) * args.pairs)])
                      for r in range(per_mode)]
            with contextlib.ExitStack() as stack:
                url, _ = stack.enter_context(run_transformer(
                    grpc, {**env, "DECODE_MODE": mode}, log_dir / f"alone-{mode}.log"))
                http = stack.enter_context(httpx.Client())
                post(http, url, bodies[-1], args.pairs, deadline)  # warm-up
                walls = [post(http, url, bodies[r], args.pairs, deadline)[0]
                         for r in range(args.repeats)]
                rest = bodies[args.repeats:-1]
                load = measure_concurrent(
                    url, [rest[c * args.rounds:(c + 1) * args.rounds]
                          for c in range(args.clients)], args.pairs, deadline)
            line = (f"DECODE_MODE={mode}: one request of {args.pairs} pairs "
                    f"{statistics.median(walls) * 1000:.0f} ms (median of {args.repeats}); "
                    f"{args.clients} clients: {load['pairs_per_s']:.1f} pairs/s = "
                    f"{2 * load['pairs_per_s'] / cores:.0f} images/s per core")
            print(line, flush=True)
    print(reproduce("bench.transformer_alone", argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

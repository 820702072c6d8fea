"""``python -m bench.studies.pipelining``: does overlapping decoding with inference pay?

The transformer sends a request's distinct images to the predictor in chunks of
PIPELINE_CHUNK_IMAGES as soon as they are decoded (0: all of them in one call, after
decoding all). Whether that pays depends on whether decoding and inference compete for
the same cores, so this runs the same fresh requests through both transformers (one
predictor, alternating which goes first) twice:

- ``separate``: the predictor pinned to one half of the cores (torch threads = that half),
  the transformers to the other half (decode threads = that half): the InferenceService
  layout, where predictor and transformer are separate pods with their own CPU;
- ``shared``: every process on every core, as ``make run`` on one small machine.

Needs at least 2 cores (Linux, for the pinning). Weights as ``make bench``: real ones
from MODEL_CACHE_DIR if complete, else the random test checkpoint. DEVICE, PRECISION and
MODEL_TYPE as for the service; on CUDA ``separate`` pins only the CPU side.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys

import httpx

from bench.http_client import Deadline, post, request_body
from bench.machine import machine_info
from bench.settings import PIPELINE_CHUNK, RESULTS_DIR, choose_weights, read_settings, reproduce
from testing.photos import make_images
from testing.procs import run_predictor, run_transformer


def measure(layout: str, env: dict[str, str], chunk: int, requests: list[bytes], pairs: int
            ) -> dict[int, list[float]]:
    """Seconds per request of each transformer (``chunk`` and 0); the last request of
    ``requests`` warms both up."""
    cores = sorted(os.sched_getaffinity(0))
    half = len(cores) // 2
    if layout == "separate":
        predictor_cpus, transformer_cpus = set(cores[:half]), set(cores[half:])
        penv = {**env, "OMP_NUM_THREADS": str(len(predictor_cpus))}
        tenv = {**env, "DECODE_WORKERS": str(len(transformer_cpus))}
    else:
        predictor_cpus = transformer_cpus = set(cores)
        penv, tenv = env, env
    times: dict[int, list[float]] = {chunk: [], 0: []}
    deadline = Deadline(at=float("inf"))
    with contextlib.ExitStack() as stack:
        grpc = stack.enter_context(run_predictor(
            penv, RESULTS_DIR / "logs" / f"pipelining-{layout}-predictor.log", timeout_s=300,
            cpus=predictor_cpus, own_session=True)).grpc
        urls = {}
        for c in (chunk, 0):
            urls[c] = stack.enter_context(run_transformer(
                grpc, {**tenv, "PIPELINE_CHUNK_IMAGES": str(c)},
                RESULTS_DIR / "logs" / f"pipelining-{layout}-transformer-{c}.log",
                cpus=transformer_cpus, own_session=True)).url
        http = stack.enter_context(httpx.Client())
        for c in (chunk, 0):  # warm-up
            post(http, urls[c], requests[-1], pairs, deadline)
        for r, body in enumerate(requests[:-1]):
            for c in ((chunk, 0) if r % 2 == 0 else (0, chunk)):
                times[c].append(post(http, urls[c], body, pairs, deadline)[0])
            print(f"  {layout} request {r + 1}: chunks of {chunk} {times[chunk][-1]:.3f} s, "
                  f"one call {times[0][-1]:.3f} s", flush=True)
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.studies.pipelining",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=30, help="pairs per request [30]")
    p.add_argument("--requests", type=int, default=6, help="requests per layout [6]")
    p.add_argument("--chunk", type=int, default=PIPELINE_CHUNK,
                   help=f"PIPELINE_CHUNK_IMAGES compared against 0 [{PIPELINE_CHUNK}]")
    p.add_argument("--layouts", default="separate,shared", help="separate, shared or both")
    args = p.parse_args(argv)
    if len(os.sched_getaffinity(0)) < 2:
        print("needs at least 2 cores", file=sys.stderr)
        return 2
    s = read_settings()
    choose_weights(s, print)
    (RESULTS_DIR / "logs").mkdir(parents=True, exist_ok=True)
    env = {**s.service_env(args.pairs), "PIPELINE_CHUNK_IMAGES": "0"}
    m = machine_info()
    print(f"machine: {m['cpu']}, {m['cores']} cores, GPU: {m['gpu'] or 'none'}; device "
          f"{s.device}, precision {s.precision}, {s.model_type}, {s.weights} weights", flush=True)
    layouts = [x.strip() for x in args.layouts.split(",")]
    images = make_images(2 * args.pairs * (args.requests + 1) * len(layouts), seed=11)
    summary = []
    for i, layout in enumerate(layouts):
        mine = images[2 * args.pairs * (args.requests + 1) * i:]
        requests = [request_body([(mine[2 * k], mine[2 * k + 1])
                                  for k in range(r * args.pairs, (r + 1) * args.pairs)])
                    for r in range(args.requests + 1)]
        times = measure(layout, env, args.chunk, requests, args.pairs)
        on, off = statistics.median(times[args.chunk]), statistics.median(times[0])
        faster = sum(a < b for a, b in zip(times[args.chunk], times[0], strict=True))
        summary.append(f"{layout} cores, {args.pairs} pairs: chunks of {args.chunk} {on:.3f} s, "
                       f"one call {off:.3f} s (medians of {args.requests}): {off / on:.3f}x; "
                       f"chunks faster in {faster} of {args.requests} requests")
    print("\n".join(summary))
    print(reproduce("bench.studies.pipelining", argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

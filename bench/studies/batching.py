"""``python -m bench.studies.batching``: what batching across requests does for many small requests.

The predictor can combine concurrent requests into one forward pass (up to
BATCH_SIZE_LIMIT images, waiting at most BATCH_MAX_WAIT_MS for company; by default on
CUDA only, BATCH_ACROSS_REQUESTS=auto). This runs the same concurrent
load, several clients each sending small requests back to back, through the service
two services at once: one with ``BATCH_ACROSS_REQUESTS=true`` (the default), one with
``false`` (every request its own forward pass), loaded one at a time, round by round,
alternating which goes first (the machine's speed drifts). Prints pairs/s, latency and
the mean number of images per forward pass (from the predictor's ``/metrics``). Each
service sees each request once, so no cache answers; the requests are the same for both.

Weights as ``make bench``: real ones from MODEL_CACHE_DIR if complete, else the random
test checkpoint. DEVICE, PRECISION, MODEL_TYPE and BATCH_SIZE_LIMIT as for the service.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import statistics

import httpx

from bench.concurrency import measure_concurrent
from bench.http_client import Deadline, post, request_body
from bench.machine import machine_info
from bench.settings import RESULTS_DIR, choose_weights, read_settings, reproduce
from testing.photos import make_images
from testing.procs import run_predictor, run_transformer


def _batch_totals(predictor_http: str) -> tuple[float, float]:
    """(images, forward passes) so far, from the predictor's metrics."""
    text = httpx.get(f"{predictor_http}/metrics", timeout=10).text
    values = {m.group(1): float(m.group(2)) for m in re.finditer(
        r"^dreamsim_batch_images_(sum|count) ([0-9.e+]+)$", text, re.MULTILINE)}
    return values.get("sum", 0.0), values.get("count", 0.0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.studies.batching",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=8, help="concurrent clients [8]")
    p.add_argument("--rounds", type=int, default=4, help="requests per client [4]")
    p.add_argument("--pairs", type=int, default=1, help="pairs per request [1]")
    args = p.parse_args(argv)
    s = read_settings()
    choose_weights(s, print)
    log_dir = RESULTS_DIR / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    m = machine_info()
    print(f"machine: {m['cpu']}, {m['cores']} cores, GPU: {m['gpu'] or 'none'}; device "
          f"{s.device}, precision {s.precision}, {s.model_type}, {s.weights} weights, "
          f"BATCH_SIZE_LIMIT={s.batch_size_limit}", flush=True)
    n = args.clients * args.rounds * args.pairs
    images = make_images(2 * n + 2, seed=13)
    pairs = [(images[2 * i], images[2 * i + 1]) for i in range(n + 1)]
    bodies = [[request_body(pairs[(c * args.rounds + r) * args.pairs:
                                  (c * args.rounds + r + 1) * args.pairs])
               for r in range(args.rounds)] for c in range(args.clients)]
    warm = request_body(pairs[-1:])
    settings = ("true", "false")
    walls: dict[str, list[float]] = {c: [] for c in settings}
    p50s: dict[str, list[float]] = {c: [] for c in settings}
    batches: dict[str, float] = {}
    deadline = Deadline(at=float("inf"))
    with contextlib.ExitStack() as stack:
        services = {}
        for combine in settings:  # both up at once; only one is loaded at a time
            env = {**s.service_env(args.pairs), "BATCH_ACROSS_REQUESTS": combine}
            predictor = stack.enter_context(run_predictor(
                env, log_dir / f"batching-{combine}-predictor.log", timeout_s=300,
                own_session=True))
            grpc, predictor_http = predictor.grpc, predictor.http
            url = stack.enter_context(run_transformer(
                grpc, env, log_dir / f"batching-{combine}-transformer.log",
                own_session=True)).url
            with httpx.Client() as http:
                post(http, url, warm, 1, deadline)
            services[combine] = (url, predictor_http, _batch_totals(predictor_http))
        for r in range(args.rounds):  # round by round, alternating which goes first
            for combine in (settings if r % 2 == 0 else settings[::-1]):
                result = measure_concurrent(services[combine][0],
                                            [[client[r]] for client in bodies], args.pairs,
                                            deadline)
                walls[combine].append(result["wall_s"])
                p50s[combine].append(result["latency_p50_s"])
        for combine, (_, predictor_http, (images0, passes0)) in services.items():
            images1, passes1 = _batch_totals(predictor_http)
            batches[combine] = (images1 - images0) / max(passes1 - passes0, 1)
    rate = {c: n / sum(walls[c]) for c in settings}
    for combine in settings:
        print(f"BATCH_ACROSS_REQUESTS={combine}: {args.clients} clients x {args.rounds} "
              f"requests x {args.pairs} pairs: {rate[combine]:.2f} pairs/s, latency p50 "
              f"{statistics.median(p50s[combine]):.2f} s (median over rounds); "
              f"{batches[combine]:.1f} images per forward pass on average", flush=True)
    faster = sum(a < b for a, b in zip(walls["true"], walls["false"], strict=True))
    print(f"batching across requests: {rate['true'] / rate['false']:.2f}x the pairs/s; "
          f"faster in {faster} of {args.rounds} rounds")
    print(reproduce("bench.studies.batching", argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

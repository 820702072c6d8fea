"""``python -m bench.studies.model_identity``: what asking the predictor's model identity
before every cached request costs.

The transformer reads its embedding cache under the model identity the predictor last
reported; ``MODEL_IDENTITY_MAX_AGE_S`` (default 5) says how old that report may be before
an empty batch asks again, ``0`` asks before every request (what the transformer did
before). One predictor, two transformers (``0`` and the default), the same small pair
cached in both; then rounds of ``--requests`` sequential requests of that pair (every
image from the cache: the request's cost is HTTP, JSON, hashing, look-ups and, with ``0``,
the extra call), alternating which transformer goes first. Prints the median and 90th
percentile latency of each and their ratio.

Weights as ``make bench``: real ones from MODEL_CACHE_DIR if complete, else the random
test checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import httpx

from bench.concurrency import percentile
from bench.machine import machine_info
from bench.settings import RESULTS_DIR, choose_weights, read_settings, reproduce
from testing.images import b64, distinct_images
from testing.procs import run_predictor, run_transformer

SETTINGS = {"every request": "0", "default (5 s)": "5"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.studies.model_identity",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=200, help="requests per round [200]")
    p.add_argument("--rounds", type=int, default=3, help="rounds [3]")
    args = p.parse_args(argv)
    s = read_settings()
    choose_weights(s, print)
    log_dir = RESULTS_DIR / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    m = machine_info()
    print(f"machine: {m['cpu']}, {m['cores']} cores, GPU: {m['gpu'] or 'none'}; device "
          f"{s.device}, {s.model_type}, {s.weights} weights", flush=True)
    a, b = (b64(x) for x in distinct_images(2, size=64))
    body = {"pairs": [{"reference_image": a, "generated_image": b}]}
    times: dict[str, list[float]] = {name: [] for name in SETTINGS}
    with contextlib.ExitStack() as stack:
        env = s.service_env(1)
        predictor = stack.enter_context(run_predictor(
            env, log_dir / "model_identity-predictor.log", timeout_s=300, own_session=True))
        urls = {name: stack.enter_context(run_transformer(
            predictor.grpc, {**env, "MODEL_IDENTITY_MAX_AGE_S": age},
            log_dir / f"model_identity-transformer-{age}.log", own_session=True)).url
            for name, age in SETTINGS.items()}
        http = stack.enter_context(httpx.Client(timeout=120))
        for url in urls.values():  # the pair embedded once: every later image is cached
            r = http.post(f"{url}/similarity", json=body)
            r.raise_for_status()
        for round_ in range(args.rounds):
            order = list(urls) if round_ % 2 == 0 else list(reversed(urls))
            for name in order:
                for _ in range(args.requests):
                    started = time.perf_counter()
                    r = http.post(f"{urls[name]}/similarity", json=body)
                    times[name].append(time.perf_counter() - started)
                    r.raise_for_status()
    medians = {}
    for name, values in times.items():
        medians[name] = statistics.median(values)
        print(f"  MODEL_IDENTITY_MAX_AGE_S {name}: median {medians[name] * 1000:.2f} ms, "
              f"p90 {percentile(sorted(values), 90) * 1000:.2f} ms ({len(values)} requests)")
    every, default = medians["every request"], medians["default (5 s)"]
    print(f"  asking every request costs {(every - default) * 1000:.2f} ms a request "
          f"({every / default:.2f}x the default's median)")
    print(reproduce("bench.studies.model_identity", argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

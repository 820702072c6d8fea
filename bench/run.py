"""``make bench`` / ``python -m bench.run``: the service against upstream DreamSim, one run.

On the same weights and the same distinct photographs (``testing/photos.py``), measures:

1. the transformer's decode alone (``transformer.images.decode_image``), images/s, one
   thread and a thread pool;
2. the predictor's model alone, in process (``predictor.model.load_model`` + ``embed`` on
   uint8 batches), images/s at batch 1 and at a full batch;
3. the upstream ``dreamsim`` package used the naive way: per pair,
   ``preprocess(Image.open(file))`` on both images and ``model(a, b)``, one pair at a time,
   on the same device, always fp32;
4. the service end to end over HTTP (predictor + transformer as subprocesses on loopback,
   base64 pairs): one client with batches of 1, 10, 30 and 100 pairs (median of a few
   repeats), the same pairs again (what an embedding cache saves), one reference against
   many generated images (deduplication), several concurrent clients (pairs/s, p50/p95
   latency), and the predictor alone over gRPC.

Every request carries images never sent before, so no cache or deduplication flatters a
figure unless the row says so. Prints one table (speedup = upstream time / service time),
writes JSON (``--json``) and Markdown (``--markdown``). Configuration: DEVICE, PRECISION,
MODEL_TYPE, MODEL_CACHE_DIR and BATCH_SIZE_LIMIT as for the service (both sides), flags
or BENCH_* variables for the benchmark itself (``--help``; BENCH_WEIGHTS_DIR moves the
random-weight checkpoint from ``.cache/bench-weights``). The whole run is bounded by
``--time-limit``; the servers are stopped on exit, Ctrl-C and SIGTERM.

This module is the command line and the plan of a run; the pieces live beside it:
``settings`` (service settings, weights), ``machine``, ``http_client`` (requests, one
checked POST), ``components`` (decode, predictor in process and over gRPC), ``upstream``
(the baseline), ``concurrency`` (many clients), ``end_to_end`` (the service over HTTP),
``run_state`` and ``report`` (the table, JSON and Markdown).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.components import decoded, free_memory, measure_decode, measure_predictor
from bench.end_to_end import fidelity, measure_service, ref_n_of
from bench.http_client import BenchError, Deadline, Pool
from bench.machine import machine_info
from bench.report import write_outputs
from bench.run_state import Run
from bench.settings import RESULTS_DIR, Settings, choose_weights, env_or, int_list, read_settings
from bench.upstream import measure_upstream
from testing.photos import MAX_SIDE, MIN_SIDE, BenchImage, describe, make_images


class BenchTimeout(Exception):
    """The run went past ``--time-limit``."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__.split("\n\n")[0],
        epilog="auto: the default depends on the device (CPU: a run of a few minutes on 2 "
               "cores; CUDA: more repeats and rounds). Service settings come from DEVICE "
               "(default cuda, falls back to cpu), PRECISION (auto), MODEL_TYPE (dino_vitb16),"
               " MODEL_CACHE_DIR (./models) and BATCH_SIZE_LIMIT (64).")
    p.add_argument("--batches", type=int_list,
                   default=int_list(env_or("BENCH_BATCHES", "1,10,30,100")),
                   help="pairs per request, one client [BENCH_BATCHES, 1,10,30,100]")
    p.add_argument("--repeats", type=int, default=int(env_or("BENCH_REPEATS", "0")),
                   help="requests per batch size, the median is reported "
                        "[BENCH_REPEATS, auto: 3 on CPU, 5 on CUDA]")
    p.add_argument("--clients", type=int, default=int(env_or("BENCH_CLIENTS", "0")),
                   help="concurrent clients, -1 to skip [BENCH_CLIENTS, auto: 4 CPU, 8 CUDA]")
    p.add_argument("--client-pairs", type=int, default=int(env_or("BENCH_CLIENT_PAIRS", "30")),
                   help="pairs per request of each concurrent client [BENCH_CLIENT_PAIRS, 30]")
    p.add_argument("--rounds", type=int, default=int(env_or("BENCH_ROUNDS", "0")),
                   help="requests per concurrent client [BENCH_ROUNDS, auto: 2 CPU, 10 CUDA]")
    p.add_argument("--upstream-pairs", type=int, default=int(env_or("BENCH_UPSTREAM_PAIRS", "-1")),
                   help="pairs the upstream package runs one at a time; larger batches are "
                        "scaled from its time per pair; 0 skips upstream "
                        "[BENCH_UPSTREAM_PAIRS, auto: 20 on CPU, the largest batch on CUDA]")
    p.add_argument("--decode-images", type=int, default=int(env_or("BENCH_DECODE_IMAGES", "100")),
                   help="images decoded for the decode throughput, 0 skips "
                        "[BENCH_DECODE_IMAGES, 100]")
    p.add_argument("--decode-threads", type=int,
                   default=int(env_or("BENCH_DECODE_THREADS", str(os.cpu_count() or 2))),
                   help="thread pool size for the parallel decode figure "
                        "[BENCH_DECODE_THREADS, the number of cores]")
    p.add_argument("--predictor-images", type=int,
                   default=int(env_or("BENCH_PREDICTOR_IMAGES", "-1")),
                   help="images embedded for the predictor-alone figures (in process and over "
                        "gRPC), 0 skips [BENCH_PREDICTOR_IMAGES, auto: 32 CPU, 1024 CUDA]")
    p.add_argument("--no-extras", dest="extras", action="store_false",
                   help="skip the 'same pairs again' and 'one reference' rows")
    p.add_argument("--no-service", dest="service", action="store_false",
                   help="skip everything over HTTP/gRPC (components and upstream only)")
    p.add_argument("--min-side", type=int, default=int(env_or("BENCH_MIN_SIDE", str(MIN_SIDE))),
                   help=f"smallest image side in pixels [BENCH_MIN_SIDE, {MIN_SIDE}]")
    p.add_argument("--max-side", type=int, default=int(env_or("BENCH_MAX_SIDE", str(MAX_SIDE))),
                   help=f"largest image side in pixels [BENCH_MAX_SIDE, {MAX_SIDE}]")
    p.add_argument("--seed", type=int, default=int(env_or("BENCH_SEED", "0")),
                   help="seed of the image crops [BENCH_SEED, 0]")
    p.add_argument("--time-limit", type=int, default=int(env_or("BENCH_TIME_LIMIT", "1800")),
                   help="seconds the whole run may take, then it stops with what it has "
                        "[BENCH_TIME_LIMIT, 1800]")
    p.add_argument("--json", type=Path,
                   default=Path(env_or("BENCH_JSON", str(RESULTS_DIR / "latest.json"))),
                   help="write the results here [BENCH_JSON, bench/results/latest.json]")
    p.add_argument("--markdown", type=Path,
                   default=Path(env_or("BENCH_MARKDOWN", str(RESULTS_DIR / "latest.md"))),
                   help="write the tables as Markdown here [BENCH_MARKDOWN, "
                        "bench/results/latest.md]")
    p.add_argument("--log-dir", type=Path, default=RESULTS_DIR / "logs",
                   help="server logs [bench/results/logs]")
    args = p.parse_args(argv)
    if args.repeats < 0 or args.rounds < 0 or args.client_pairs < 1:
        p.error("--repeats and --rounds must be >= 0 (0: auto), --client-pairs >= 1")
    if args.min_side > args.max_side:
        p.error("--min-side must not exceed --max-side")
    return args


def resolve_auto(args: argparse.Namespace, cuda: bool) -> None:
    """Fill in the device-dependent defaults."""
    if args.repeats == 0:
        args.repeats = 5 if cuda else 3
    if args.clients == 0:
        args.clients = 8 if cuda else 4
    args.clients = max(args.clients, 0)
    if args.rounds == 0:
        args.rounds = 10 if cuda else 2
    if args.upstream_pairs < 0:
        args.upstream_pairs = max(args.batches) if cuda else 20
    if args.predictor_images < 0:
        args.predictor_images = 1024 if cuda else 32


def plan_image_count(args: argparse.Namespace, ref_n: int) -> int:
    pairs = sum(args.batches) * args.repeats if args.service else 0
    pairs = max(pairs, args.upstream_pairs)
    pairs += 2  # service warm-up (also upstream's warm-up pair)
    images = 2 * pairs
    if args.service and args.extras:
        images += ref_n + 1 + 2 * ref_n * args.repeats  # one reference; pipelining on/off
    if args.service and args.clients > 0:
        images += 2 * args.clients * args.rounds * args.client_pairs
    return max(images, args.decode_images, 1)


def execute(run: Run, s: Settings, deadline: Deadline) -> None:
    args, res = run.args, run.results
    batches = sorted(set(args.batches))
    ref_n = ref_n_of(batches)

    pool = Pool()
    n_images = plan_image_count(args, ref_n)
    pool.images = run.phase(f"making {n_images} distinct images",
                            lambda: make_images(n_images, seed=args.seed, min_side=args.min_side,
                                                max_side=args.max_side))
    res["images"] = describe(pool.images)

    # Requests, in pool order: the largest batch first, so that its first request holds the
    # pairs that upstream runs (their distances are compared at the end).
    plan: dict[tuple[int, int], list[tuple[BenchImage, BenchImage]]] = {}
    if args.service:
        for n in sorted(batches, reverse=True):
            for r in range(args.repeats):
                plan[(n, r)] = pool.pairs(n)
    if pool.cursor < 2 * args.upstream_pairs:
        pool.take(2 * args.upstream_pairs - pool.cursor)
    upstream_pairs = [(pool.images[2 * i], pool.images[2 * i + 1])
                      for i in range(args.upstream_pairs)]
    warm = pool.pairs(2)
    shared = pool.take(ref_n + 1) if args.service and args.extras else []
    overlap = ([pool.pairs(ref_n) for _ in range(args.repeats)]
               if args.service and args.extras else [])
    concurrent = [[pool.pairs(args.client_pairs) for _ in range(args.rounds)]
                  for _ in range(args.clients)] if args.service else []

    if args.decode_images > 0:
        res["decode"] = run.phase(
            f"decode alone ({args.decode_images} images, 1 and {args.decode_threads} threads)",
            lambda: measure_decode(pool.images[: args.decode_images], args.decode_threads))
    inputs = None
    if args.predictor_images > 0:
        inputs = decoded(pool.images, args.predictor_images)
        res["predictor"] = run.phase(
            f"predictor alone in process ({args.predictor_images} images)",
            lambda: measure_predictor(s, inputs))
        free_memory()
    if args.upstream_pairs > 0:
        res["upstream"] = run.phase(
            f"upstream dreamsim, naive, {args.upstream_pairs} pairs one at a time (fp32)",
            lambda: measure_upstream(s, upstream_pairs, warm[0]))
        free_memory()
    if args.service:
        run.phase("service over HTTP", lambda: measure_service(
            run, s, plan, batches, warm, shared, overlap, concurrent, inputs, deadline))
        fidelity(res, plan, batches, args)


def _on_alarm(signum: int, frame: Any) -> None:
    raise BenchTimeout("the run went past --time-limit")


def _on_term(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    run = Run(args)
    t_start = time.monotonic()
    deadline = Deadline(t_start + args.time_limit)
    in_main = threading.current_thread() is threading.main_thread()
    if in_main:
        signal.signal(signal.SIGALRM, _on_alarm)
        signal.signal(signal.SIGTERM, _on_term)
        signal.alarm(args.time_limit)
    res = run.results
    res.update({"started": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                "argv": argv, "complete": False})
    settings: Settings | None = None
    code = 1
    try:
        settings = read_settings()
        resolve_auto(args, settings.device.startswith("cuda"))
        res["config"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        res["machine"] = machine_info()
        run.phase("weights", lambda: choose_weights(settings, run.log))
        res["settings"] = {k: str(v) for k, v in vars(settings).items()}
        execute(run, settings, deadline)
        res["complete"] = True
        code = 0
    except BenchTimeout as e:
        run.log(f"stopped: {e} ({args.time_limit} s); partial results follow")
    except KeyboardInterrupt:
        run.log("interrupted; servers stopped")
        code = 130
    except BenchError as e:
        run.log(f"failed: {e}")
    except Exception as e:
        traceback.print_exc()
        run.log(f"failed: {type(e).__name__}: {e}")
    finally:
        if in_main:
            signal.alarm(0)
        res["total_s"] = time.monotonic() - t_start
    write_outputs(run, settings)
    return code


if __name__ == "__main__":
    sys.exit(main())

"""The service end to end over HTTP: batches from one client, the extras (the same pairs
again, one reference against many), decoding overlapped with inference or not, concurrent
clients, the predictor over gRPC, and the service's distances against upstream's."""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import httpx
import numpy as np

from bench.components import measure_grpc
from bench.concurrency import measure_concurrent
from bench.http_client import Deadline, post, request_body
from bench.run_state import Run
from bench.settings import PIPELINE_CHUNK, Settings
from testing.photos import BenchImage


def measure_service(run: Run, s: Settings, plan: dict[tuple[int, int], list[Any]],
                    batches: list[int], warm: list[Any], shared: list[BenchImage],
                    overlap: list[list[Any]], concurrent: list[list[list[Any]]],
                    inputs: np.ndarray | None, deadline: Deadline) -> None:
    from testing.procs import run_service

    args, res = run.args, run.results
    max_pairs = max([*batches, args.client_pairs, len(shared)])
    t0 = time.perf_counter()
    with run_service(s.service_env(max_pairs), args.log_dir) as svc, httpx.Client() as http:
        res["service"] = {"startup_s": time.perf_counter() - t0, "health": svc.health,
                          "logs": [str(p) for p in svc.logs], "pids": list(svc.pids)}
        run.log(f"service ready in {res['service']['startup_s']:.1f} s: {svc.health}")
        post(http, svc.url, request_body(warm), len(warm), deadline)  # warm-up
        rows: list[dict[str, Any]] = []
        first: dict[int, list[float]] = {}
        res["batches"] = rows  # filled as it goes: a stopped run still reports what it did
        res["_first_distances"] = first
        for n in batches:
            walls, server = [], []
            for r in range(args.repeats):
                body = request_body(plan[(n, r)])
                wall, ms, dist = post(http, svc.url, body, n, deadline)
                walls.append(wall)
                server.append(ms)
                if r == 0:
                    first[n] = dist
            rows.append({"pairs": n, "wall_s": statistics.median(walls), "walls_s": walls,
                         "server_ms": statistics.median(server)})
            run.log(f"  {n:>4} pairs: median {statistics.median(walls):.3f} s over {len(walls)}")
        if args.extras:
            ref_n = ref_n_of(batches)
            body = request_body(plan[(ref_n, 0)])
            wall, ms, _ = post(http, svc.url, body, ref_n, deadline)
            res["again"] = {"pairs": ref_n, "wall_s": wall, "server_ms": ms}
            ref, gens = shared[0], shared[1:]
            body = request_body([(ref, g) for g in gens])
            wall, ms, _ = post(http, svc.url, body, len(gens), deadline)
            res["one_reference"] = {"pairs": len(gens), "images": len(gens) + 1, "wall_s": wall,
                                    "server_ms": ms}
            run.log(f"  extras: same pairs again {res['again']['wall_s']:.3f} s, one reference "
                    f"x {len(gens)} {wall:.3f} s")
            if overlap:
                res["pipelining"] = compare_pipelining(run, s, svc, overlap, max_pairs,
                                                       deadline)
        if concurrent:
            bodies = [[request_body(req) for req in client] for client in concurrent]
            res["concurrent"] = measure_concurrent(svc.url, bodies, args.client_pairs, deadline)
            del bodies
            c = res["concurrent"]
            run.log(f"  {c['clients']} clients: {c['pairs_per_s']:.2f} pairs/s")
        if inputs is not None:
            res["grpc"] = measure_grpc(svc.grpc, inputs, s.batch_size_limit, deadline)


def compare_pipelining(run: Run, s: Settings, svc: Any, requests: list[list[Any]],
                       max_pairs: int, deadline: Deadline) -> dict[str, Any]:
    """The same fresh requests through the service's transformer and through a second one
    on the same predictor with the other PIPELINE_CHUNK_IMAGES: decoding overlapped with
    inference (chunks sent while the rest decode) against decoding all, then one call.
    Alternating which goes first; each transformer sees each request once (no cache hit).
    Both processes share this machine's cores here: ``python -m bench.studies.pipelining`` also
    measures them on separate cores, as separate pods run."""
    from testing.procs import run_transformer
    from transformer.settings import TransformerSettings

    chunk = TransformerSettings().pipeline_chunk_images
    other = 0 if chunk else PIPELINE_CHUNK
    env = {**s.service_env(max_pairs), "PIPELINE_CHUNK_IMAGES": str(other)}
    times: dict[int, list[float]] = {chunk: [], other: []}
    with run_transformer(svc.grpc, env, run.args.log_dir / f"transformer-chunk-{other}.log",
                         own_session=True) as transformer, httpx.Client() as http:
        url = transformer.url
        for r, pairs in enumerate(requests):
            body = request_body(pairs)
            order = [(svc.url, chunk), (url, other)]
            for target, key in (order if r % 2 == 0 else order[::-1]):
                times[key].append(post(http, target, body, len(pairs), deadline)[0])
    out: dict[str, Any] = {"pairs": len(requests[0]), "chunk_images": max(chunk, other),
                           "pipelined_s": times[max(chunk, other)], "single_call_s": times[0]}
    out["pipelined_median_s"] = statistics.median(times[max(chunk, other)])
    out["single_call_median_s"] = statistics.median(times[0])
    run.log(f"  pipelining: chunks of {out['chunk_images']} {out['pipelined_median_s']:.3f} s, "
            f"one call {out['single_call_median_s']:.3f} s")
    return out


def ref_n_of(batches: list[int]) -> int:
    return 30 if 30 in batches else max(batches)


def fidelity(res: dict[str, Any], plan: dict[tuple[int, int], list[Any]], batches: list[int],
             args: argparse.Namespace) -> None:
    """Service distances against upstream's on the pairs both computed."""
    first = res.pop("_first_distances", {})
    up = res.get("upstream")
    if not up or not first:
        return
    service = first[max(batches)]
    m = min(len(service), len(up["distances"]))
    if m == 0:
        return
    diff = np.abs(np.array(service[:m]) - np.array(up["distances"][:m]))
    res["fidelity"] = {"pairs": m, "max_abs_diff": float(diff.max()),
                       "mean_abs_diff": float(diff.mean())}


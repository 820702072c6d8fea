"""``make bench`` / ``python -m bench.run``: the service against upstream DreamSim, one run.

On the same weights and the same distinct photographs (``bench/images.py``), measures:

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
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import gc
import io
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.images import MAX_SIDE, MIN_SIDE, BenchImage, describe, make_images

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "bench" / "results"
WEIGHTS_DIR = Path(os.environ.get("BENCH_WEIGHTS_DIR") or REPO_ROOT / ".cache" / "bench-weights")
PIPELINE_CHUNK = 16  # compared against one call when the service runs with 0
RANDOM_WEIGHTS_NOTE = "random weights: same cost as the real ones, distances meaningless"


class BenchTimeout(Exception):
    """The run went past ``--time-limit``."""


class BenchError(Exception):
    """The service answered something other than a valid 200."""


# --- configuration --------------------------------------------------------------------------

def _env(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


def reproduce(module: str, argv: Sequence[str] | None) -> str:
    """The line that reruns ``python -m module`` as it was run: the service's environment
    settings that were set, then the arguments given (``sys.argv`` when ``argv`` is None)."""
    env = [f"{k}={os.environ[k]}" for k in ("DEVICE", "PRECISION", "MODEL_TYPE",
                                              "BATCH_SIZE_LIMIT") if k in os.environ]
    args = list(sys.argv[1:] if argv is None else argv)
    return "reproduce: " + " ".join([*env, "python", "-m", module, *args])


def _ints(text: str) -> list[int]:
    values = [int(v) for v in text.replace(" ", "").split(",") if v]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers like 1,10,30, got {text!r}")
    return values


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__.split("\n\n")[0],
        epilog="auto: the default depends on the device (CPU: a run of a few minutes on 2 "
               "cores; CUDA: more repeats and rounds). Service settings come from DEVICE "
               "(default cuda, falls back to cpu), PRECISION (auto), MODEL_TYPE (dino_vitb16),"
               " MODEL_CACHE_DIR (./models) and BATCH_SIZE_LIMIT (64).")
    p.add_argument("--batches", type=_ints, default=_ints(_env("BENCH_BATCHES", "1,10,30,100")),
                   help="pairs per request, one client [BENCH_BATCHES, 1,10,30,100]")
    p.add_argument("--repeats", type=int, default=int(_env("BENCH_REPEATS", "0")),
                   help="requests per batch size, the median is reported "
                        "[BENCH_REPEATS, auto: 3 on CPU, 5 on CUDA]")
    p.add_argument("--clients", type=int, default=int(_env("BENCH_CLIENTS", "0")),
                   help="concurrent clients, -1 to skip [BENCH_CLIENTS, auto: 4 CPU, 8 CUDA]")
    p.add_argument("--client-pairs", type=int, default=int(_env("BENCH_CLIENT_PAIRS", "30")),
                   help="pairs per request of each concurrent client [BENCH_CLIENT_PAIRS, 30]")
    p.add_argument("--rounds", type=int, default=int(_env("BENCH_ROUNDS", "0")),
                   help="requests per concurrent client [BENCH_ROUNDS, auto: 2 CPU, 10 CUDA]")
    p.add_argument("--upstream-pairs", type=int, default=int(_env("BENCH_UPSTREAM_PAIRS", "-1")),
                   help="pairs the upstream package runs one at a time; larger batches are "
                        "scaled from its time per pair; 0 skips upstream "
                        "[BENCH_UPSTREAM_PAIRS, auto: 20 on CPU, the largest batch on CUDA]")
    p.add_argument("--decode-images", type=int, default=int(_env("BENCH_DECODE_IMAGES", "100")),
                   help="images decoded for the decode throughput, 0 skips "
                        "[BENCH_DECODE_IMAGES, 100]")
    p.add_argument("--decode-threads", type=int,
                   default=int(_env("BENCH_DECODE_THREADS", str(os.cpu_count() or 2))),
                   help="thread pool size for the parallel decode figure "
                        "[BENCH_DECODE_THREADS, the number of cores]")
    p.add_argument("--predictor-images", type=int,
                   default=int(_env("BENCH_PREDICTOR_IMAGES", "-1")),
                   help="images embedded for the predictor-alone figures (in process and over "
                        "gRPC), 0 skips [BENCH_PREDICTOR_IMAGES, auto: 32 CPU, 1024 CUDA]")
    p.add_argument("--no-extras", dest="extras", action="store_false",
                   help="skip the 'same pairs again' and 'one reference' rows")
    p.add_argument("--no-service", dest="service", action="store_false",
                   help="skip everything over HTTP/gRPC (components and upstream only)")
    p.add_argument("--min-side", type=int, default=int(_env("BENCH_MIN_SIDE", str(MIN_SIDE))),
                   help=f"smallest image side in pixels [BENCH_MIN_SIDE, {MIN_SIDE}]")
    p.add_argument("--max-side", type=int, default=int(_env("BENCH_MAX_SIDE", str(MAX_SIDE))),
                   help=f"largest image side in pixels [BENCH_MAX_SIDE, {MAX_SIDE}]")
    p.add_argument("--seed", type=int, default=int(_env("BENCH_SEED", "0")),
                   help="seed of the image crops [BENCH_SEED, 0]")
    p.add_argument("--time-limit", type=int, default=int(_env("BENCH_TIME_LIMIT", "1800")),
                   help="seconds the whole run may take, then it stops with what it has "
                        "[BENCH_TIME_LIMIT, 1800]")
    p.add_argument("--json", type=Path,
                   default=Path(_env("BENCH_JSON", str(RESULTS_DIR / "latest.json"))),
                   help="write the results here [BENCH_JSON, bench/results/latest.json]")
    p.add_argument("--markdown", type=Path,
                   default=Path(_env("BENCH_MARKDOWN", str(RESULTS_DIR / "latest.md"))),
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


@dataclass
class Settings:
    """What the service and upstream run with (from the environment, as the service reads it)."""

    model_type: str
    device_requested: str
    device: str
    precision_requested: str
    precision: str
    batch_size_limit: int
    cache_dir: Path
    weights: str = ""  # "real" or "random"
    weights_dir: Path = Path()

    def service_env(self, max_pairs: int) -> dict[str, str]:
        env = {"MODEL_TYPE": self.model_type, "DEVICE": self.device_requested,
               "PRECISION": self.precision_requested,
               "BATCH_SIZE_LIMIT": str(self.batch_size_limit),
               "MODEL_CACHE_DIR": str(self.weights_dir)}
        # A 100-pair request takes a minute on 2 busy CPU cores: do not let the service's
        # 120 s default deadline for one predictor call end the measurement.
        env["PREDICTOR_TIMEOUT"] = _env("PREDICTOR_TIMEOUT", "900")
        current = int(os.environ.get("MAX_PAIRS_PER_REQUEST", "128") or 128)
        if max_pairs > current:
            env["MAX_PAIRS_PER_REQUEST"] = str(max_pairs)
        return env


def read_settings() -> Settings:
    import torch

    from predictor.model import resolve_device, resolve_dtype

    model_type = _env("MODEL_TYPE", "dino_vitb16")
    requested = _env("DEVICE", "cuda")
    device = resolve_device(requested)
    precision = _env("PRECISION", "auto")
    dtype = resolve_dtype(precision, device)
    names = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
    return Settings(model_type=model_type, device_requested=requested, device=str(device),
                    precision_requested=precision, precision=names[dtype],
                    batch_size_limit=int(_env("BATCH_SIZE_LIMIT", "64")),
                    cache_dir=Path(_env("MODEL_CACHE_DIR", "models")).expanduser().resolve())


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


def choose_weights(s: Settings, log: Callable[[str], None]) -> None:
    """Real weights when MODEL_CACHE_DIR is complete, else the random test checkpoint."""
    from predictor.checkpoint import WeightsError, check_files
    from predictor.layout import get_variant

    spec = get_variant(s.model_type)
    try:
        check_files(s.cache_dir, spec)
        s.weights, s.weights_dir = "real", s.cache_dir
        log(f"weights: {s.cache_dir} (complete cache for {s.model_type})")
        return
    except WeightsError:
        pass
    target = WEIGHTS_DIR / s.model_type
    try:
        check_files(target, spec)
        log(f"weights: no complete cache in {s.cache_dir}; using {target} ({RANDOM_WEIGHTS_NOTE})")
    except WeightsError:
        from tests.checkpoints import build_upstream_cache

        log(f"weights: no complete cache in {s.cache_dir}; building the random-weight test "
            f"checkpoint once into {target} ({RANDOM_WEIGHTS_NOTE})")
        tmp = target.with_name(f"{s.model_type}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        build_upstream_cache(tmp, s.model_type)
        try:  # another run may have finished the same build meanwhile: keep that one
            check_files(target, spec)
            shutil.rmtree(tmp, ignore_errors=True)
        except WeightsError:
            shutil.rmtree(target, ignore_errors=True)
            tmp.rename(target)
    s.weights, s.weights_dir = "random", target


def machine_info() -> dict[str, Any]:
    import PIL
    import torch

    cpu, flags = platform.processor() or "unknown", ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu in ("unknown", platform.processor()):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = line
    except OSError:
        pass
    mem_gib = None
    try:
        kb = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        mem_gib = round(kb / 2**20, 1)
    except (OSError, IndexError, ValueError):
        pass
    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "pillow": PIL.__version__}
    for name in ("dreamsim", "kserve"):
        try:
            from importlib.metadata import version

            versions[name] = version(name)
        except Exception:
            versions[name] = None
    gpu = None
    if torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(0)
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {"cpu": cpu, "cores": os.cpu_count(), "usable_cores": usable,
            "torch_threads": torch.get_num_threads(), "memory_gib": mem_gib,
            "avx512_bf16": " avx512_bf16" in flags, "gpu": gpu,
            "platform": platform.platform(), "versions": versions}


# --- images and requests --------------------------------------------------------------------

class Pool:
    """Hands out images in order; every request gets images nobody has seen yet."""

    def __init__(self) -> None:
        self.images: list[BenchImage] = []
        self.cursor = 0

    def take(self, n: int) -> list[BenchImage]:
        out = self.images[self.cursor : self.cursor + n]
        assert len(out) == n, "image pool too small (bug in the plan)"
        self.cursor += n
        return out

    def pairs(self, n: int) -> list[tuple[BenchImage, BenchImage]]:
        flat = self.take(2 * n)
        return [(flat[2 * i], flat[2 * i + 1]) for i in range(n)]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def request_body(pairs: Sequence[tuple[BenchImage, BenchImage]]) -> bytes:
    return json.dumps({"pairs": [
        {"reference_image": b64(a.data), "generated_image": b64(b.data), "pair_id": i}
        for i, (a, b) in enumerate(pairs)]}).encode()


@dataclass
class Deadline:
    at: float

    def left(self) -> float:
        return max(1.0, self.at - time.monotonic())


def post(client: httpx.Client, url: str, body: bytes, n: int, deadline: Deadline
         ) -> tuple[float, float, list[float]]:
    """One ``POST /similarity``: wall seconds, server ms, distances."""
    t0 = time.perf_counter()
    r = client.post(f"{url}/similarity", content=body, timeout=min(900.0, deadline.left()),
                    headers={"Content-Type": "application/json"})
    wall = time.perf_counter() - t0
    if r.status_code != 200:
        raise BenchError(f"POST /similarity ({n} pairs) answered {r.status_code}: {r.text[:500]}")
    data = r.json()
    scores = data.get("scores", [])
    if len(scores) != n or any(s.get("pair_id") != i for i, s in enumerate(scores)):
        raise BenchError(f"POST /similarity ({n} pairs): malformed answer {str(data)[:300]}")
    return wall, float(data.get("processing_time_ms", float("nan"))), \
        [float(s["distance"]) for s in scores]


# --- measurements ---------------------------------------------------------------------------

def measure_decode(images: list[BenchImage], threads: int) -> dict[str, Any]:
    """``decode_image`` alone: images/s per format, one thread and a pool."""
    from transformer.images import decode_image

    for im in images[:4]:  # warm-up (imports, first allocations)
        decode_image(im.data)
    out: dict[str, Any] = {"images": len(images), "threads": threads}
    groups = {"jpeg": [im for im in images if im.fmt == "JPEG"],
              "png": [im for im in images if im.fmt == "PNG"], "all": images}
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for name, group in groups.items():
            if not group:
                continue
            datas = [im.data for im in group]
            mpix = sum(im.width * im.height for im in group) / 1e6
            t0 = time.perf_counter()
            for d in datas:
                decode_image(d)
            single = time.perf_counter() - t0
            t0 = time.perf_counter()
            list(pool.map(decode_image, datas))
            multi = time.perf_counter() - t0
            out[name] = {"count": len(group), "single_images_per_s": len(group) / single,
                         "pool_images_per_s": len(group) / multi,
                         "single_mpix_per_s": mpix / single, "pool_mpix_per_s": mpix / multi}
    return out


def decoded(images: list[BenchImage], n: int) -> np.ndarray:
    """``n`` uint8 [3, 224, 224] inputs decoded from the images (cyclically)."""
    from transformer.images import decode_image

    base = [decode_image(im.data) for im in images[: min(n, len(images))]]
    return np.stack([base[i % len(base)] for i in range(n)])


def measure_predictor(s: Settings, batch: np.ndarray) -> dict[str, Any]:
    """``load_model`` + ``embed`` in this process: images/s at batch 1 and a full batch."""
    import torch

    from predictor.model import load_model

    loaded = load_model(cache_dir=s.weights_dir, variant=s.model_type, device=s.device_requested,
                        precision=s.precision_requested)
    embedder = loaded.embedder
    images = torch.from_numpy(batch)
    bs = min(s.batch_size_limit, len(images))
    embedder.embed(images[:bs], batch_size=bs)  # warm-up at the size measured
    embedder.embed(images[:1], batch_size=1)
    t0 = time.perf_counter()
    embedder.embed(images, batch_size=bs)
    full = time.perf_counter() - t0
    k = min(len(images), 4 if loaded.device.type == "cpu" else 32)
    t0 = time.perf_counter()
    for i in range(k):
        embedder.embed(images[i : i + 1], batch_size=1)
    one = time.perf_counter() - t0
    out = {"load_s": loaded.load_seconds, "device": loaded.device.type,
           "dtype": str(loaded.dtype).replace("torch.", ""), "batch": bs, "images": len(images),
           "batch_images_per_s": len(images) / full, "batch1_images": k,
           "batch1_images_per_s": k / one}
    return out


def free_memory() -> None:
    """Give back what an in-process model held before the next phase."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def measure_upstream(s: Settings, pairs: list[tuple[BenchImage, BenchImage]],
                     warm: tuple[BenchImage, BenchImage]) -> dict[str, Any]:
    """The upstream package the naive way, one pair at a time, fp32, same device."""
    import torch
    from dreamsim import dreamsim
    from PIL import Image

    from tests.checkpoints import hub_redirect

    device = s.device
    t0 = time.perf_counter()
    # torch.hub.load of the DINO backbone is redirected to dreamsim's own vendored ViT
    # built from the same cached file (no network); the architecture is the same.
    with hub_redirect(s.weights_dir):
        model, preprocess = dreamsim(pretrained=True, device=device,
                                     cache_dir=str(s.weights_dir), dreamsim_type=s.model_type)
    load_s = time.perf_counter() - t0

    def one(a: BenchImage, b: BenchImage) -> tuple[float, float, float]:
        t0 = time.perf_counter()
        xa = preprocess(Image.open(io.BytesIO(a.data))).to(device)
        xb = preprocess(Image.open(io.BytesIO(b.data))).to(device)
        t1 = time.perf_counter()
        d = float(model(xa, xb))  # .item(): waits for the device
        return d, t1 - t0, time.perf_counter() - t1

    with torch.no_grad():
        one(*warm)
        rows = [one(a, b) for a, b in pairs]
    per_pair = [p + m for _, p, m in rows]
    return {"load_s": load_s, "pairs": len(rows), "per_pair_s": per_pair,
            "distances": [d for d, _, _ in rows],
            "mean_per_pair_s": statistics.fmean(per_pair),
            "median_per_pair_s": statistics.median(per_pair),
            "mean_preprocess_s": statistics.fmean(p for _, p, _ in rows),
            "mean_model_s": statistics.fmean(m for _, _, m in rows)}


def upstream_time(up: dict[str, Any] | None, n: int) -> tuple[float | None, bool]:
    """Upstream time for ``n`` pairs: ``n`` x its mean time per pair (pairs run one at a
    time are independent, and the mean over all measured pairs is steadier than the first
    few alone); the flag says ``n`` is more pairs than were measured."""
    if not up or not up["pairs"]:
        return None, False
    return up["mean_per_pair_s"] * n, n > up["pairs"]


def measure_concurrent(url: str, bodies: list[list[bytes]], pairs_per_request: int,
                       deadline: Deadline) -> dict[str, Any]:
    """``len(bodies)`` clients, each sending its requests back to back."""
    clients = len(bodies)
    barrier = threading.Barrier(clients + 1)
    results: list[tuple[list[float], float]] = [([], 0.0)] * clients
    errors: list[BaseException] = []

    def client(c: int) -> None:
        lat: list[float] = []
        try:
            with httpx.Client() as http:
                barrier.wait()
                for body in bodies[c]:
                    wall, _, _ = post(http, url, body, pairs_per_request, deadline)
                    lat.append(wall)
            results[c] = (lat, time.perf_counter())
        except BaseException as e:  # reported by the main thread
            errors.append(e)
            with_barrier_abort(barrier)

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(clients)]
    for t in threads:
        t.start()
    try:
        barrier.wait()
    except threading.BrokenBarrierError:  # a client failed before the start: reported below
        pass
    t0 = time.perf_counter()
    for t in threads:
        while t.is_alive():  # short joins: the main thread stays responsive to signals
            t.join(timeout=0.2)
    if errors:
        raise errors[0]
    wall = max(end for _, end in results) - t0
    latencies = sorted(x for lat, _ in results for x in lat)
    total = sum(len(lat) for lat, _ in results) * pairs_per_request
    return {"clients": clients, "rounds": len(bodies[0]), "pairs_per_request": pairs_per_request,
            "pairs": total, "wall_s": wall, "pairs_per_s": total / wall,
            "latency_p50_s": percentile(latencies, 50), "latency_p95_s": percentile(latencies, 95),
            "latency_max_s": latencies[-1]}


def with_barrier_abort(barrier: threading.Barrier) -> None:
    try:
        barrier.abort()
    except Exception:
        pass


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile of an already sorted list."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = (len(sorted_values) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def measure_grpc(host: str, batch: np.ndarray, per_call: int, deadline: Deadline
                 ) -> dict[str, Any]:
    """The predictor over gRPC v2 (raw uint8 contents), one client, sequential calls."""
    import grpc
    from kserve import InferInput, InferRequest
    from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

    channel = grpc.insecure_channel(host, options=[("grpc.max_send_message_length", -1),
                                                   ("grpc.max_receive_message_length", -1)])
    stub = GRPCInferenceServiceStub(channel)

    def call(arr: np.ndarray) -> None:
        tensor = InferInput(name="image", shape=list(arr.shape), datatype="UINT8")
        tensor.set_data_from_numpy(np.ascontiguousarray(arr), binary_data=True)
        req = InferRequest(model_name="dreamsim", infer_inputs=[tensor], request_id="bench")
        resp = stub.ModelInfer(req.to_grpc(), timeout=min(600.0, deadline.left()))
        size = len(resp.raw_output_contents[0]) if resp.raw_output_contents else 0
        if size % (4 * len(arr)) or size == 0:
            raise BenchError(f"gRPC answer of {size} bytes for {len(arr)} images")

    try:
        call(batch[: min(per_call, len(batch))])  # warm-up at the size measured
        t0 = time.perf_counter()
        for start in range(0, len(batch), per_call):
            call(batch[start : start + per_call])
        wall = time.perf_counter() - t0
    finally:
        channel.close()
    return {"images": len(batch), "per_call": min(per_call, len(batch)),
            "images_per_s": len(batch) / wall}


# --- the run --------------------------------------------------------------------------------

@dataclass
class Run:
    args: argparse.Namespace
    results: dict[str, Any] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)

    def log(self, msg: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    def phase(self, name: str, fn: Callable[[], Any]) -> Any:
        self.log(f"{name} ...")
        t0 = time.perf_counter()
        out = fn()
        self.phases[name] = round(time.perf_counter() - t0, 1)
        return out


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


def measure_service(run: Run, s: Settings, plan: dict[tuple[int, int], list[Any]],
                    batches: list[int], warm: list[Any], shared: list[BenchImage],
                    overlap: list[list[Any]], concurrent: list[list[list[Any]]],
                    inputs: np.ndarray | None, deadline: Deadline) -> None:
    from bench.service import run_service

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
    Both processes share this machine's cores here: ``python -m bench.pipelining`` also
    measures them on separate cores, as separate pods run."""
    from bench.service import run_transformer
    from transformer.settings import TransformerSettings

    chunk = TransformerSettings().pipeline_chunk_images
    other = 0 if chunk else PIPELINE_CHUNK
    env = {**s.service_env(max_pairs), "PIPELINE_CHUNK_IMAGES": str(other)}
    times: dict[int, list[float]] = {chunk: [], other: []}
    with run_transformer(svc.grpc, env, run.args.log_dir / f"transformer-chunk-{other}.log"
                         ) as (url, _), httpx.Client() as http:
        for r, pairs in enumerate(requests):
            body = request_body(pairs)
            order = [(svc.url, chunk), (url, other)]
            for target, key in (order if r % 2 == 0 else order[::-1]):
                times[key].append(post(http, target, body, len(pairs), deadline)[0])
    out = {"pairs": len(requests[0]), "chunk_images": max(chunk, other),
           "pipelined_s": times[max(chunk, other)], "single_call_s": times[0]}
    out["pipelined_median_s"] = statistics.median(out["pipelined_s"])
    out["single_call_median_s"] = statistics.median(out["single_call_s"])
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


# --- report ---------------------------------------------------------------------------------

def _f(x: float | None, fmt: str = ".3f") -> str:
    return "n/a" if x is None else format(x, fmt)


def build_tables(run: Run, s: Settings) -> tuple[list[str], list[str]]:
    """(plain text lines, Markdown lines)."""
    res, args = run.results, run.args
    m = res["machine"]
    up = res.get("upstream")
    gpu = m["gpu"] or "none"
    head = [
        f"machine: {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), "
        f"{m['memory_gib']} GiB, torch threads {m['torch_threads']}, GPU: {gpu}",
        f"device: {s.device} (DEVICE={s.device_requested}), service precision {s.precision} "
        f"(PRECISION={s.precision_requested}), upstream fp32 (always), "
        f"MODEL_TYPE={s.model_type}, BATCH_SIZE_LIMIT={s.batch_size_limit}",
        "weights: " + (f"real, {s.weights_dir}" if s.weights == "real"
                       else f"random test checkpoint, {s.weights_dir} ({RANDOM_WEIGHTS_NOTE})"),
    ]
    im = res.get("images", {})
    if im.get("count"):
        head.append(
            f"images: {im['count']} distinct photographs cut from {len(im['sources'])} "
            f"scikit-image pictures, sides {im['min_side']}-{im['max_side']} px, "
            f"{im['mean_megapixels']} MP and {im['mean_kb']} KB on average, "
            f"{im['jpeg']} JPEG / {im['png']} PNG ({im['grey']} greyscale); "
            f"every request sends images not sent before")
    text = ["", "=" * 100, f"DreamSim benchmark, {res['started']}", *head, ""]
    md = [f"DreamSim benchmark, {res['started']}", "", *[f"- {h}" for h in head], ""]

    if up:
        note = (f"upstream naive: dreamsim {m['versions'].get('dreamsim')}, per pair "
                f"preprocess(Image.open(file)) x2 + model(a, b), one pair at a time, "
                f"fp32 on {s.device}; measured on {up['pairs']} pairs: "
                f"{up['mean_per_pair_s'] * 1000:.0f} ms per pair on average (preprocess "
                f"{up['mean_preprocess_s'] * 1000:.0f} ms, model {up['mean_model_s'] * 1000:.0f}"
                f" ms; median {up['median_per_pair_s'] * 1000:.0f} ms); upstream s = pairs x "
                f"that mean, * = more pairs than were run")
    else:
        note = "upstream naive: skipped"

    rows = res.get("batches", [])
    if rows:
        text.append(f"One client, sequential requests (median of {args.repeats}), "
                    "base64 pairs over HTTP")
        hdr = ("pairs", "service s", "ms/pair", "pairs/s", "server ms", "upstream s", "speedup")
        text.append(f"{hdr[0]:>7} {hdr[1]:>10} {hdr[2]:>9} {hdr[3]:>9} {hdr[4]:>10} "
                    f"{hdr[5]:>11} {hdr[6]:>8}")
        md += [f"One client, sequential requests (median of {args.repeats}):", "",
               "| " + " | ".join(hdr) + " |", "|" + "---:|" * len(hdr)]
        for row in rows:
            n, wall = row["pairs"], row["wall_s"]
            ut, scaled = upstream_time(up, n)
            row["upstream_s"], row["upstream_scaled"] = ut, scaled
            row["speedup"] = ut / wall if ut else None
            ustr = ("n/a" if ut is None else f"{ut:.2f}" + ("*" if scaled else ""))
            sp = _f(row["speedup"], ".2f") + ("x" if row["speedup"] else "")
            cells = (str(n), f"{wall:.3f}", f"{1000 * wall / n:.1f}", f"{n / wall:.2f}",
                     f"{row['server_ms']:.0f}", ustr, sp)
            text.append(f"{cells[0]:>7} {cells[1]:>10} {cells[2]:>9} {cells[3]:>9} "
                        f"{cells[4]:>10} {cells[5]:>11} {cells[6]:>8}")
            md.append("| " + " | ".join(c.replace("*", "\\*") for c in cells) + " |")
        text.append(note)
        md += ["", note.replace("*", "\\*"), ""]
        extra = []
        if "again" in res:
            a = res["again"]
            first = next((r["walls_s"][0] for r in rows if r["pairs"] == a["pairs"]), None)
            extra.append(f"the same {a['pairs']} pairs sent again (every image seen before: what "
                         f"an embedding cache saves): {a['wall_s']:.3f} s (first time "
                         f"{_f(first)} s)")
        if "one_reference" in res:
            o = res["one_reference"]
            extra.append(f"one reference x {o['pairs']} generated ({o['images']} distinct images "
                         f"instead of {2 * o['pairs']}: deduplication): {o['wall_s']:.3f} s")
        if "pipelining" in res:
            pl = res["pipelining"]
            extra.append(
                f"{pl['pairs']} pairs with decoding overlapped with inference (chunks of "
                f"{pl['chunk_images']} images sent while the rest decode): "
                f"{pl['pipelined_median_s']:.3f} s; decoding all, then one call "
                f"(PIPELINE_CHUNK_IMAGES=0): {pl['single_call_median_s']:.3f} s (medians of "
                f"{len(pl['pipelined_s'])}, same requests, alternating order; "
                f"{pl['single_call_median_s'] / pl['pipelined_median_s']:.2f}x; predictor and "
                f"transformer share the cores here: see python -m bench.pipelining)")
        if extra:
            text += ["", *extra]
            md += [f"- {e}" for e in extra] + [""]

    c = res.get("concurrent")
    if c:
        up_rate = 1 / up["mean_per_pair_s"] if up else None
        single = next((r for r in rows if r["pairs"] == c["pairs_per_request"]), None)
        single_rate = c["pairs_per_request"] / single["wall_s"] if single else None
        c["speedup_vs_upstream"] = c["pairs_per_s"] / up_rate if up_rate else None
        line = (f"{c['clients']} concurrent clients x {c['rounds']} requests x "
                f"{c['pairs_per_request']} pairs = {c['pairs']} pairs in {c['wall_s']:.1f} s: "
                f"{c['pairs_per_s']:.2f} pairs/s, latency p50 {c['latency_p50_s']:.2f} s, "
                f"p95 {c['latency_p95_s']:.2f} s; one client at {c['pairs_per_request']} pairs: "
                f"{_f(single_rate, '.2f')} pairs/s; upstream naive: {_f(up_rate, '.2f')} pairs/s "
                f"(speedup {_f(c['speedup_vs_upstream'], '.2f')}x)")
        text += ["", line]
        md += [f"- {line}", ""]

    comp = []
    d = res.get("decode")
    if d:
        parts = []
        for k in ("jpeg", "png", "all"):
            if k in d:
                parts.append(f"{k.upper() if k != 'all' else 'all'} "
                             f"{d[k]['single_images_per_s']:.1f} / "
                             f"{d[k]['pool_images_per_s']:.1f}")
        comp.append(f"transformer decode alone (decode_image, images/s, 1 thread / "
                    f"{d['threads']} threads): " + ", ".join(parts))
    p = res.get("predictor")
    if p:
        comp.append(f"predictor model alone, in process ({p['device']}, {p['dtype']}): "
                    f"{p['batch_images_per_s']:.2f} images/s at batch {p['batch']}, "
                    f"{p['batch1_images_per_s']:.2f} images/s at batch 1 "
                    f"(load {p['load_s']:.1f} s)")
    g = res.get("grpc")
    if g:
        comp.append(f"predictor over gRPC v2 (raw uint8, {g['per_call']} images a call): "
                    f"{g['images_per_s']:.2f} images/s")
    if up:
        comp.append(f"upstream model alone: {2 / up['mean_model_s']:.2f} images/s (batch 1, "
                    f"two images a call)")
    fid = res.get("fidelity")
    if fid:
        comp.append(f"service vs upstream distances on the same {fid['pairs']} pairs: max |diff| "
                    f"{fid['max_abs_diff']:.2e}, mean {fid['mean_abs_diff']:.2e} (service "
                    f"{s.precision}, upstream fp32)")
    if comp:
        text += ["", "Components", *[f"  {x}" for x in comp]]
        md += ["Components:", "", *[f"- {x}" for x in comp], ""]
    cmd = "make bench" + (f" BENCH_ARGS='{' '.join(res['argv'])}'" if res["argv"] else "")
    env = " ".join(f"{k}={os.environ[k]}" for k in ("DEVICE", "PRECISION", "MODEL_TYPE",
                                                    "BATCH_SIZE_LIMIT") if k in os.environ)
    repro = f"reproduce: {env + ' ' if env else ''}{cmd}  (total {res['total_s']:.0f} s)"
    text += ["", repro, "=" * 100]
    md += [f"Reproduce: `{env + ' ' if env else ''}{cmd}` (the run took {res['total_s']:.0f} s)."]
    return text, md


def write_outputs(run: Run, s: Settings | None, text_only: bool = False) -> None:
    args, res = run.args, run.results
    text: list[str] = []
    md: list[str] = []
    if s is not None and "machine" in res:
        try:
            text, md = build_tables(run, s)
        except Exception:  # a partial run: keep the JSON at least
            traceback.print_exc()
    if text:
        print("\n".join(text), flush=True)
    if text_only:
        return
    res["phases_s"] = run.phases
    for path in (args.json, args.markdown):
        path.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=2, default=str) + "\n")
    if md:
        args.markdown.write_text("\n".join(md) + "\n")
        print(f"results: {args.json}, {args.markdown}", flush=True)
    else:
        print(f"results: {args.json}", flush=True)


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

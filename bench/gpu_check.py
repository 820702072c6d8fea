"""``make gpu-check`` (``bench/gpu_check.sh``): the GPU path measured in one command.

Runs, each step under its own time cap (all together within 8 minutes), and writes
``summary.md`` (one file, for people) and ``figures.json`` (every figure) to ``--out``:

1. ``env``: Python, torch, its CUDA build, the GPU, the NVIDIA driver found and needed,
   packages missing for the service steps.
2. ``checkpoint``: the synthetic dino_vitb16 checkpoint in the upstream layout
   (testing/checkpoints.py; random weights, same cost as the real ones), reused if present.
3. ``gpu_tests``: the ``gpu``-marked tests (``pytest -m gpu``).
4. ``model``: images/s of the model alone per precision and batch size, eager and with
   CUDA graphs, as a percentage of the card's dense peak for that precision; the kernel
   launches of one eager forward (profiler) and the attention backend.
5. ``copies``: host-to-device copies from pinned against pageable memory, and the serving
   path (``StagedRunner``: pinned staging, streams, two in flight) against the plain
   synchronous ``embed`` on host arrays.
6. ``service``: predictor and transformer as processes on loopback: ``/health``; a
   60-image gRPC call straight to the predictor; 30-pair and 1-pair ``/similarity``
   latency end to end (fresh 224-px images every request: no cache hit); 16 clients'
   pairs/s; the CPU seconds per image of each process during that run.
7. ``fidelity``: distances on the device in fp32/fp16/bf16 against the CPU's fp32
   (ours and upstream ``dreamsim``).
8. ``summary``: the goals (30 pairs under 50 ms, >= 10,000 images/s, >= 50% of the bf16
   peak), and for a missed one the stage that holds it back (model, copies, gRPC,
   transformer CPU).

A step that fails or passes its cap is recorded as such and the next one runs.
``--dry-run`` prints the plan and checks the caps; ``--tiny`` shrinks every size (CPU mode:
``DEVICE=cpu make gpu-check GPU_CHECK_ARGS=--tiny`` runs it all here).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

TOTAL_CAP_S = 480  # the 8 minutes, environment set-up included
SETUP_RESERVE_S = 30  # bench/gpu_check.sh's environment set-up before this driver starts

# Dense (no sparsity) tensor-core peaks in TFLOP/s from NVIDIA's data sheets; fp32 is the
# non-tensor IEEE rate (PRECISION=fp32 disables TF32). Matched on the name torch reports.
PEAKS_TFLOPS: dict[str, dict[str, float]] = {
    "H200": {"bf16": 989.4, "fp16": 989.4, "fp32": 66.9},
    "H100 NVL": {"bf16": 835.0, "fp16": 835.0, "fp32": 60.0},
    "H100 PCIe": {"bf16": 756.0, "fp16": 756.0, "fp32": 51.2},
    "H100": {"bf16": 989.4, "fp16": 989.4, "fp32": 66.9},  # SXM5 (HBM3)
    "A100": {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5},
    "L40S": {"bf16": 362.0, "fp16": 362.0, "fp32": 91.6},
    "L4": {"bf16": 121.0, "fp16": 121.0, "fp32": 30.3},
}
GOAL_LATENCY_S = 0.050
GOAL_IMAGES_PER_S = 10_000
GOAL_PEAK_FRACTION = 0.5
SERVICE_MODULES = ("kserve", "grpc", "httpx", "fastapi", "pydantic_settings", "dreamsim",
                   "peft", "PIL", "skimage", "simplejpeg", "numba")


def vit_macs(*, tokens: int = 197, dim: int = 768, depth: int = 12, mlp: int = 3072,
             patch_macs: int = 196 * 768 * 768) -> int:
    """Multiply-accumulates of one dino_vitb16 forward as this model runs it (the last
    block computes the CLS token only, beside keys and values for every token)."""
    per_token_block = 4 * dim * dim + 2 * dim * mlp  # qkv + proj + MLP
    attention = 2 * tokens * tokens * dim  # QK^T and AV over all heads
    full = tokens * per_token_block + attention
    last = (2 * tokens * dim * dim  # keys and values for every token
            + dim * dim + dim * dim + 2 * dim * mlp  # the CLS query, proj, MLP
            + 2 * tokens * dim)  # one query against every key, and AV
    return patch_macs + (depth - 1) * full + last


FLOPS_PER_IMAGE = 2 * vit_macs()


def peak_tflops(gpu: str | None, precision: str) -> float | None:
    if not gpu:
        return None
    for key, peaks in PEAKS_TFLOPS.items():
        if key in gpu:
            return peaks.get(precision)
    return None


class StepTimeout(Exception):
    """A step passed its cap."""


@dataclass
class Step:
    name: str
    cap_s: float
    run: Callable[[Check], dict[str, Any]]
    what: str


@dataclass
class Check:
    """One gpu-check run: its settings and what the steps found."""

    out: Path
    device: str
    tiny: bool
    cache_dir: Path | None
    python: str = sys.executable
    figures: dict[str, Any] = field(default_factory=dict)
    status: dict[str, str] = field(default_factory=dict)
    log_lines: list[str] = field(default_factory=list)
    cap_s: float = 0.0  # the running step's cap

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    def log(self, line: str) -> None:
        print(line, flush=True)
        self.log_lines.append(line)


@contextlib.contextmanager
def time_cap(seconds: float) -> Iterator[None]:
    """Raise StepTimeout in the main thread after ``seconds`` (SIGALRM)."""
    def on_alarm(signum: int, frame: Any) -> None:
        raise StepTimeout(f"over its cap of {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# --- steps ----------------------------------------------------------------------------------


def step_env(c: Check) -> dict[str, Any]:
    import torch

    from predictor.device import driver_needed, driver_version

    info: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__,
        "torch_cuda_build": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
        "driver_found": driver_version(), "driver_needed": driver_needed(),
        "device": c.device, "cpus": os.cpu_count(), "machine": platform.machine(),
        "missing_for_service": [m for m in SERVICE_MODULES
                                if importlib.util.find_spec(m) is None]}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu_name=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    gpu_count=torch.cuda.device_count(), sm=f"{props.major}.{props.minor}")
    elif c.cuda:
        raise RuntimeError(f"DEVICE={c.device} but CUDA is not available (driver found: "
                           f"{info['driver_found']}, needed: {info['driver_needed']})")
    return info


def step_checkpoint(c: Check) -> dict[str, Any]:
    if c.cache_dir is not None and (c.cache_dir / "checkpoints").is_dir():
        return {"cache_dir": str(c.cache_dir), "built": False}
    from testing.checkpoints import build_upstream_cache

    cache = c.out / "cache" / "dino_vitb16"
    started = time.perf_counter()
    if not (cache / ".built").is_file():
        build_upstream_cache(cache, "dino_vitb16", seed=1)
        (cache / ".built").touch()
    c.cache_dir = cache
    return {"cache_dir": str(cache), "built": True,
            "seconds": round(time.perf_counter() - started, 1)}


def step_gpu_tests(c: Check) -> dict[str, Any]:
    cmd = [c.python, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
           "tests/predictor"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (
        str(Path.cwd()), os.environ.get("PYTHONPATH"))))}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=c.cap_s - 5,
                              env=env, check=False)
    except subprocess.TimeoutExpired as e:
        raise StepTimeout(f"pytest -m gpu over {c.cap_s - 5:.0f} s") from e
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or [""]
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|error|"
                                                r"deselected)", tail[0])}
    (c.out / "gpu_tests.log").write_text(proc.stdout + proc.stderr)
    result = {"returncode": proc.returncode, "counts": counts, "last_line": tail[0]}
    if proc.returncode not in (0, 5):  # 5: nothing collected; otherwise failures or no pytest
        c.figures["gpu_tests"] = result
        raise RuntimeError(f"pytest -m gpu exited {proc.returncode}: {tail[0]}")
    return result


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(fn: Callable[[], Any], device: Any, images: int, min_s: float,
          warmup: int = 2) -> float:
    """Images per second of ``fn`` (``images`` per call), after ``warmup`` calls; at least
    3 timed calls and ``min_s`` seconds (one call when ``min_s`` is 0: tiny mode)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    calls, started = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        if calls >= 3 or min_s <= 0:
            _sync(device)
            elapsed = time.perf_counter() - started
            if elapsed >= min_s or min_s <= 0:
                return images * calls / elapsed


def _precisions(c: Check) -> list[str]:
    return ["fp32"] if c.tiny and not c.cuda else ["bf16", "fp16", "fp32"]


def _batches(c: Check) -> list[int]:
    return [1, 2] if c.tiny else [1, 2, 4, 8, 16, 32, 64, 128, 256]


def step_model(c: Check) -> dict[str, Any]:
    import torch

    from predictor.model import load_model
    from predictor.runner import CudaOps, GraphForward

    assert c.cache_dir is not None
    gpu = c.figures.get("env", {}).get("gpu_name")
    rows: list[dict[str, Any]] = []
    extra: dict[str, Any] = {"flops_per_image": FLOPS_PER_IMAGE}
    min_s = 0.0 if c.tiny else 0.25
    for precision in _precisions(c):
        loaded = load_model(cache_dir=c.cache_dir, variant="dino_vitb16", device=c.device,
                            precision=precision, fallback=False)
        dev, emb = loaded.device, loaded.embedder
        extra[f"attention_{precision}"] = loaded.attention
        modes = ["eager", "graphs"] if dev.type == "cuda" else ["eager"]
        with torch.inference_mode():
            if dev.type == "cuda" and precision == "bf16":
                extra["kernels_per_forward_batch16"] = _kernel_count(emb, dev)
            for mode in modes:
                for b in _batches(c):
                    x = torch.randint(0, 256, (b, 3, 224, 224), dtype=torch.uint8, device=dev)
                    try:
                        if mode == "graphs":
                            graphs = GraphForward(emb, [b], CudaOps(dev))
                            rate = _rate(lambda: graphs(x, b), dev, b, min_s)  # noqa: B023
                            del graphs
                        else:
                            rate = _rate(lambda: emb(x), dev, b, min_s,  # noqa: B023
                                         warmup=1 if c.tiny else 2)
                    except torch.OutOfMemoryError:
                        rows.append({"precision": precision, "mode": mode, "batch": b,
                                     "error": "out of memory"})
                        break
                    peak = peak_tflops(gpu, precision)
                    tflops = rate * FLOPS_PER_IMAGE / 1e12
                    rows.append({"precision": precision, "mode": mode, "batch": b,
                                 "images_per_s": round(rate, 1), "tflops": round(tflops, 2),
                                 "pct_peak": round(100 * tflops / peak, 1) if peak else None})
                    c.log(f"  model {precision} {mode:>6} batch {b:>3}: {rate:9.1f} images/s"
                          + (f", {100 * tflops / peak:5.1f}% of peak" if peak else ""))
                    if dev.type == "cuda":
                        torch.cuda.empty_cache()
        del loaded
    return {"rows": rows, **extra}


def _kernel_count(embedder: Any, device: Any) -> int:
    """CUDA kernels launched by one eager forward of 16 images (torch.profiler)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    x = torch.zeros((16, 3, 224, 224), dtype=torch.uint8, device=device)
    embedder(x)
    torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        embedder(x)
        torch.cuda.synchronize(device)
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


def step_copies(c: Check) -> dict[str, Any]:
    import torch

    from predictor.model import load_model
    from predictor.runner import (
        CudaOps,
        EagerRunner,
        GraphForward,
        StagedRunner,
        bucket_sizes,
    )

    assert c.cache_dir is not None
    n = 1 if c.tiny else 64
    host = np.random.default_rng(0).integers(0, 256, (n, 3, 224, 224), dtype=np.uint8)
    out: dict[str, Any] = {"batch": n, "bytes": int(host.nbytes)}
    precision = "fp32" if not c.cuda else "bf16"
    loaded = load_model(cache_dir=c.cache_dir, variant="dino_vitb16", device=c.device,
                        precision=precision, fallback=False)
    dev = loaded.device
    if dev.type == "cuda":
        pageable = torch.from_numpy(host)
        pinned = torch.empty(host.shape, dtype=torch.uint8, pin_memory=True)
        for name, fn in (("pageable", lambda: pageable.to(dev)),
                         ("pinned", lambda: pinned.to(dev, non_blocking=True)),
                         ("pinned_incl_host_copy",
                          lambda: (pinned.numpy().__setitem__(slice(None), host),
                                   pinned.to(dev, non_blocking=True)))):
            rate = _rate(fn, dev, n, 0.2)
            out[f"h2d_{name}_gb_per_s"] = round(rate * host[0].nbytes / 1e9, 2)
        ops = CudaOps(dev)
        buckets = bucket_sizes(n)
        staged = StagedRunner(GraphForward(loaded.embedder, buckets, ops), loaded.embedder,
                              ops=ops, max_batch=n, slots=2)
        parts = [host]
        out["staged_graphs_images_per_s"] = round(_rate(lambda: staged.run(parts), dev, n,
                                                        0.5), 1)
        out["staged_graphs_two_threads_images_per_s"] = round(_two_threads(staged, host), 1)
    warmup = 0 if c.tiny else 2
    out["plain_embed_images_per_s"] = round(_rate(
        lambda: loaded.embedder.embed(torch.from_numpy(host), batch_size=n), dev, n,
        0.0 if c.tiny else 0.5, warmup), 1)
    if dev.type != "cuda":
        runner = EagerRunner(loaded.embedder, chunk=n)
        out["eager_runner_images_per_s"] = round(_rate(lambda: runner.run([host]), dev, n,
                                                       0.0, warmup), 1)
    return out


def _two_threads(staged: Any, host: np.ndarray, calls: int = 20) -> float:
    """Two callers at once, as the batcher's two batches in flight."""
    import threading

    def work() -> None:
        for _ in range(calls):
            staged.run([host])

    threads = [threading.Thread(target=work) for _ in range(2)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return 2 * calls * len(host) / (time.perf_counter() - started)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def step_service(c: Check) -> dict[str, Any]:
    import httpx

    from bench.concurrency import measure_concurrent
    from bench.http_client import Deadline, Pool, post, request_body
    from testing.photos import make_images
    from testing.procs import run_service

    assert c.cache_dir is not None
    pairs30, rounds, clients = (2, 1, 2) if c.tiny else (30, 5, 16)
    client_rounds = 1 if c.tiny else 3
    images_needed = 2 * (pairs30 * (rounds + 1) + rounds + 1
                         + clients * client_rounds * pairs30)
    pool = Pool()
    pool.images = make_images(images_needed + 8, seed=5, min_side=224, max_side=224)
    env = {"DEVICE": c.device, "MODEL_TYPE": "dino_vitb16",
           "MODEL_CACHE_DIR": str(c.cache_dir), "DEVICE_FALLBACK": "false",
           "LOG_LEVEL": "WARNING", "PYTHONPATH": str(Path.cwd())}
    out: dict[str, Any] = {"pairs_per_request": pairs30}
    deadline = Deadline(time.monotonic() + 600)
    with run_service(env, c.out / "service-logs") as svc:
        out["health"] = svc.health
        url = svc.url  # bench.http_client.post adds /similarity
        out["grpc_60_images_s"] = _grpc_call_seconds(svc.grpc, 2 * pairs30, 3 if c.tiny
                                                     else 10)
        with httpx.Client() as http:
            post(http, url, request_body(pool.pairs(pairs30)), pairs30, deadline)  # warm-up
            lat30 = [post(http, url, request_body(pool.pairs(pairs30)), pairs30,
                          deadline)[0] for _ in range(rounds)]
            lat1 = [post(http, url, request_body(pool.pairs(1)), 1, deadline)[0]
                    for _ in range(rounds)]
        out["latency_30_pairs_p50_s"] = statistics.median(lat30)
        out["latency_30_pairs_all_s"] = [round(x, 4) for x in lat30]
        out["latency_1_pair_p50_s"] = statistics.median(lat1)
        bodies = [[request_body(pool.pairs(pairs30)) for _ in range(client_rounds)]
                  for _ in range(clients)]
        cpu_before = [_cpu_seconds(pid) for pid in svc.pids]
        conc = measure_concurrent(url, bodies, pairs30, deadline)
        cpu_after = [_cpu_seconds(pid) for pid in svc.pids]
        images = 2 * conc["pairs"]
        out["clients"] = conc
        out["images_per_s"] = round(2 * conc["pairs_per_s"], 1)
        out["predictor_cpu_s_per_image"] = (cpu_after[0] - cpu_before[0]) / images
        out["transformer_cpu_s_per_image"] = (cpu_after[1] - cpu_before[1]) / images
    c.log(f"  service: 30 pairs p50 {out['latency_30_pairs_p50_s'] * 1000:.1f} ms, 1 pair "
          f"{out['latency_1_pair_p50_s'] * 1000:.1f} ms, {clients} clients "
          f"{conc['pairs_per_s']:.1f} pairs/s")
    return out


def _grpc_call_seconds(host: str, n: int, calls: int) -> float:
    """Median seconds of one ``n``-image call straight to the predictor (no transformer)."""
    from transformer.predictor_client import PredictorClient

    rng = np.random.default_rng(1)

    async def main() -> list[float]:
        client = PredictorClient(host, model_name="dreamsim", timeout_s=120)
        times = []
        try:
            for _ in range(calls + 1):
                batch = rng.integers(0, 256, (n, 3, 224, 224), dtype=np.uint8)
                started = time.perf_counter()
                await client.embed(batch)
                times.append(time.perf_counter() - started)
        finally:
            await client.close()
        return times[1:]

    return statistics.median(asyncio.run(main()))


def step_fidelity(c: Check) -> dict[str, Any]:
    from bench.gpu_check_fidelity import _images, measure

    assert c.cache_dir is not None
    u8 = _images(3 if c.tiny else 8)
    return measure(c.cache_dir, "dino_vitb16", u8, device=c.device, batch_check=not c.tiny,
                   precisions=("fp32",) if c.tiny and not c.cuda else None)


def _best(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    fit = [r for r in rows if "images_per_s" in r and all(r.get(k) == v
                                                          for k, v in match.items())]
    return max(fit, key=lambda r: r["images_per_s"]) if fit else None


def goals(f: dict[str, Any]) -> list[dict[str, Any]]:
    """Each goal: met or not, the figure, and for a miss the stage holding it back."""
    model_rows = f.get("model", {}).get("rows", [])
    svc = f.get("service", {})
    out: list[dict[str, Any]] = []

    lat = svc.get("latency_30_pairs_p50_s")
    entry: dict[str, Any] = {"goal": "30 pairs end to end under 50 ms", "figure": lat,
                             "met": lat is not None and lat < GOAL_LATENCY_S}
    if lat is not None and not entry["met"]:
        precision = (svc.get("health") or {}).get("precision")
        best60 = _best(model_rows, batch=64, precision=precision, mode="graphs") or _best(
            model_rows, batch=64, precision=precision) or _best(model_rows)
        model_s = 60 / best60["images_per_s"] if best60 else None
        grpc_s = svc.get("grpc_60_images_s")
        stages = {"model": model_s,
                  "copies and gRPC": (grpc_s - model_s) if grpc_s and model_s else None,
                  "transformer CPU": (lat - grpc_s) if grpc_s else None}
        entry["stages_s"] = stages
        known = {k: v for k, v in stages.items() if v is not None}
        entry["held_back_by"] = max(known, key=lambda k: known[k]) if known else "unknown"
    out.append(entry)

    rate = svc.get("images_per_s")
    entry = {"goal": ">= 10,000 images/s (5,000 pairs/s) per GPU", "figure": rate,
             "met": rate is not None and rate >= GOAL_IMAGES_PER_S}
    if rate is not None and not entry["met"]:
        best = _best(model_rows)
        copies = f.get("copies", {})
        staged = copies.get("staged_graphs_two_threads_images_per_s")
        capacity = {
            "model": best["images_per_s"] if best else None,
            "copies": staged,
            "predictor CPU (gRPC)": (1 / svc["predictor_cpu_s_per_image"]
                                     * (f.get("env", {}).get("cpus") or 1))
            if svc.get("predictor_cpu_s_per_image") else None,
            "transformer CPU": (1 / svc["transformer_cpu_s_per_image"])
            if svc.get("transformer_cpu_s_per_image") else None}
        entry["capacity_images_per_s"] = capacity
        known = {k: v for k, v in capacity.items() if v is not None}
        entry["held_back_by"] = min(known, key=lambda k: known[k]) if known else "unknown"
    out.append(entry)

    bf16 = _best(model_rows, precision="bf16")
    pct = bf16.get("pct_peak") if bf16 else None
    entry = {"goal": "model at >= 50% of the card's bf16 peak", "figure": pct,
             "met": pct is not None and pct >= 100 * GOAL_PEAK_FRACTION}
    if pct is not None and not entry["met"]:
        entry["held_back_by"] = "model"
    out.append(entry)
    return out


def _fmt(x: Any, spec: str = ".3g") -> str:
    return "n/a" if x is None else format(x, spec) if isinstance(x, float) else str(x)


def write_summary(c: Check, total_s: float) -> Path:
    f = c.figures
    f["goals"] = goals(f)
    f["status"] = c.status
    f["total_s"] = round(total_s, 1)
    (c.out / "figures.json").write_text(json.dumps(f, indent=1, default=str))
    env = f.get("env", {})
    lines = ["# gpu-check summary", "",
             f"Device {c.device} ({env.get('gpu_name', 'no GPU')}), torch {env.get('torch')} "
             f"(CUDA build {env.get('torch_cuda_build')}), driver {env.get('driver_found')} "
             f"(needed {env.get('driver_needed')}), {env.get('cpus')} CPUs; "
             f"{'tiny sizes' if c.tiny else 'full sizes'}; {total_s:.0f} s in all.", "",
             "| step | status |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in c.status.items()]
    lines += ["", "## Goals", "", "| goal | figure | met | held back by |", "|---|---|---|---|"]
    for g in f["goals"]:
        lines.append(f"| {g['goal']} | {_fmt(g['figure'])} | {'yes' if g['met'] else 'no'} | "
                     f"{g.get('held_back_by', '')} |")
    rows = f.get("model", {}).get("rows", [])
    if rows:
        lines += ["", "## Model alone (images/s, % of peak)", "",
                  "| precision | mode | batch | images/s | TFLOP/s | % peak |",
                  "|---|---|---:|---:|---:|---:|"]
        lines += [f"| {r['precision']} | {r['mode']} | {r['batch']} | "
                  f"{_fmt(r.get('images_per_s'))} | {_fmt(r.get('tflops'))} | "
                  f"{_fmt(r.get('pct_peak'))} |" for r in rows]
    for name in ("copies", "service", "fidelity", "gpu_tests"):
        if name in f:
            lines += ["", f"## {name}", "", "```json",
                      json.dumps(f[name], indent=1, default=str)[:4000], "```"]
    path = c.out / "summary.md"
    path.write_text("\n".join(lines) + "\n")
    return path


STEPS: list[Step] = [
    Step("env", 20, step_env, "Python, torch, GPU, driver, missing packages"),
    Step("checkpoint", 70, step_checkpoint, "synthetic dino_vitb16 checkpoint (reused)"),
    Step("gpu_tests", 80, step_gpu_tests, "pytest -m gpu"),
    Step("model", 100, step_model, "images/s per precision x batch 1-256, eager and graphs"),
    Step("copies", 25, step_copies, "pinned vs pageable, staged serving path"),
    Step("service", 90, step_service, "30-pair and 1-pair latency, 16 clients, CPU/image"),
    Step("fidelity", 50, step_fidelity, "device fp32/fp16/bf16 vs CPU fp32"),
    Step("summary", 5, lambda c: {}, "goals and the stage holding each back"),
]


def plan_ok(steps: list[Step]) -> tuple[bool, float]:
    total = sum(s.cap_s for s in steps)
    return total + SETUP_RESERVE_S <= TOTAL_CAP_S, total


def run(c: Check, steps: list[Step], *, caps_scale: float = 1.0) -> Path:
    c.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for step in steps:
        if step.name == "summary":
            continue
        cap = c.cap_s = step.cap_s * caps_scale
        t0 = time.perf_counter()
        c.log(f"[{step.name}] {step.what} (cap {cap:.0f} s)")
        try:
            with time_cap(cap):
                c.figures[step.name] = step.run(c)
            c.status[step.name] = f"ok ({time.perf_counter() - t0:.1f} s)"
        except StepTimeout as e:
            c.status[step.name] = f"timed out ({e})"
        except Exception as e:
            c.status[step.name] = f"failed: {type(e).__name__}: {str(e)[:200]}"
            (c.out / f"{step.name}.error.txt").write_text(traceback.format_exc())
        c.log(f"[{step.name}] {c.status[step.name]}")
    path = write_summary(c, time.perf_counter() - started)
    c.log(f"summary: {path}; figures: {c.out / 'figures.json'}")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench/results/gpu-check"))
    parser.add_argument("--device", default=os.environ.get("DEVICE", "cuda"))
    parser.add_argument("--tiny", action="store_true", help="smallest sizes (CPU mode, tests)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="an existing dino_vitb16 cache (else built under --out)")
    parser.add_argument("--steps", nargs="+", choices=[s.name for s in STEPS], default=None)
    parser.add_argument("--dry-run", action="store_true",
                        help="print the steps and their caps, check they fit 8 minutes")
    parser.add_argument("--missing", action="store_true",
                        help="print the service's modules this Python lacks, then exit")
    parser.add_argument("--caps-scale", type=float, default=1.0,
                        help="multiply every cap (CPU mode on a slow machine)")
    args = parser.parse_args(argv)
    if args.missing:
        print(" ".join(m for m in SERVICE_MODULES if importlib.util.find_spec(m) is None))
        return 0
    steps = [s for s in STEPS if args.steps is None or s.name in args.steps or
             s.name == "summary"]
    ok, total = plan_ok(STEPS)
    if args.dry_run:
        for s in steps:
            print(f"{s.name:<11} cap {s.cap_s:>5.0f} s  {s.what}")
        print(f"total {total:.0f} s of caps + {SETUP_RESERVE_S} s set-up "
              f"{'<=' if ok else '>'} {TOTAL_CAP_S} s")
        return 0 if ok else 1
    check = Check(out=args.out, device=args.device, tiny=args.tiny, cache_dir=args.cache_dir)
    run(check, steps, caps_scale=args.caps_scale)
    failed = [k for k, v in check.status.items() if not v.startswith("ok")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

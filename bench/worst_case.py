"""``python -m bench.worst_case``: the most expensive requests the default limits allow,
measured on the transformer: peak memory (the process's VmHWM) and time, for one such
request and for the default concurrency of them.

The most expensive request found: a body at ``MAX_REQUEST_BODY_MB`` made of distinct PNGs
at ``MAX_IMAGE_PIXELS`` (9459 x 9459 RGBA, all zeros: about 350 KB each compressed, 358 MB
decoded plus the RGB copy). Each costs seconds of decoding, so the request runs into
``REQUEST_TIMEOUT``; the pod-wide memory is bounded by ``DECODE_WORKERS`` images being
decoded plus the bodies (``MAX_BODIES_IN_FLIGHT_MB``). Header-expensive images are refused
by the walk in ``transformer/imageguard.py``, whose time is printed for 20 MB of each kind
(and Pillow's own time to open 1 MB of the same, for comparison).

Issue 19's classes (``--only images,floods``): the peak memory of one request per hostile
image kind (a 118-byte BMP, a 35-byte GIF with a huge canvas, a 16-bit RGBA PNG at the
pixel limit, a 2048 x 2048 progressive JPEG of 500 scans, a 20 kB request of 256
distinct such GIFs), each on a fresh transformer; and, under each flood (8 such requests at once,
for at most ``--flood-s`` seconds: hostile images, 31 MB bodies of 4,300-digit integers,
31 MB bodies of long strings, ``/embed`` of 256 identical images, one picture sent 36
ways), the latency of ``GET /health`` polled every 100 ms, and the peak memory. ``--code
DIR`` runs the transformer from another checkout (say, the code before a change) with
this script, so both are measured the same way.

Issue 19's connection classes (``--only connections``, ``bench/connection_floods.py``):
``MAX_CONNECTIONS`` connections dripping their headers a byte a second (how many are still
open after ``HEADER_TIMEOUT``, the transformer's file descriptors, what a new client's
``/health`` gets meanwhile); a head of 1,000,000 headers and one of four 16.8 MB values
(answer, CPU seconds, peak memory); 40 and 400 slow uploads beside a valid request every
second (its answers and latencies). Fairness between clients (item 5: slow URLs and costly
decodes beside a small request) has its own script, ``python -m bench.studies.fairness``.

The predictor is an instant stand-in (``testing/fake_predictor.py``, FAKE on
purpose: it answers constant embeddings at once over the same gRPC v2 protocol): the
predictor's own costs are bounded by the batch limits and measured by ``bench.run``. The
transformer runs with its default settings (``DECODE_WORKERS`` = the usable CPUs).
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import contextlib
import io
import json
import os
import statistics
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from bench import connection_floods
from bench.machine import machine_info
from bench.settings import RESULTS_DIR, reproduce
from testing.fake_predictor import fake_predictor
from testing.hostile_images import HOSTILE, MEMORY_HOSTILE, gif_huge_canvas, jpeg_many_scans
from testing.procs import free_port, run_transformer, running, transformer_cmd, wait_http_ok
from transformer.imageguard import why_refused
from transformer.settings import TransformerSettings

SIDE = 9459  # 9459^2 = 89,472,681 <= MAX_IMAGE_PIXELS (89,478,485)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data)))


def max_pixel_pngs(n: int) -> list[bytes]:
    """``n`` distinct RGBA PNGs of SIDE x SIDE (the pixels are the same; a text chunk makes
    the bytes differ, so neither the request's deduplication nor the cache skips one)."""
    row = b"\x00" * (1 + 4 * SIDE)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(SIDE)) + comp.flush()
    head = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", SIDE, SIDE, 8, 6,
                                                                 0, 0, 0))
    tail = _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    return [head + _chunk(b"tEXt", b"n\x00%d" % i) + tail for i in range(n)]


def header_walks() -> list[dict[str, Any]]:
    rows = []
    for name, build in sorted(HOSTILE.items()):
        big = build(20_000_000)
        start = time.perf_counter()
        for _ in range(3):
            reason = why_refused(big)
        walk_us = (time.perf_counter() - start) / 3 * 1e6
        small = build(1_000_000)
        start = time.perf_counter()
        try:
            with Image.open(io.BytesIO(small)) as img:
                img.load()
        except Exception:  # noqa: BLE001 (only the time counts)
            pass
        pillow_s = time.perf_counter() - start
        rows.append({"image": name, "walk_20MB_us": round(walk_us, 1),
                     "pillow_open_1MB_s": round(pillow_s, 2), "refused": reason})
        print(f"  {name:24s} walk of 20 MB: {walk_us:8.1f} us   Pillow on 1 MB: "
              f"{pillow_s:5.2f} s   -> {reason}", flush=True)
    return rows


def scenario(grpc: str, body: bytes, clients: int, log: Path) -> dict[str, Any]:
    """``clients`` concurrent copies of the request on a fresh transformer."""
    with run_transformer(grpc, {"EMBEDDING_CACHE_SIZE": "0"}, log, own_session=True) as t:
        url, pid = t.url, t.pid
        base_rss = connection_floods.memory(pid)[0]

        def post(_: int) -> tuple[int, float, str]:
            start = time.perf_counter()
            r = httpx.post(f"{url}/similarity", content=body, timeout=600,
                           headers={"Content-Type": "application/json"})
            return r.status_code, time.perf_counter() - start, r.text[:160]

        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            started = time.perf_counter()
            results = list(pool.map(post, range(clients)))
            wall = time.perf_counter() - started
        peak = connection_floods.memory(pid)[1]
    out = {"clients": clients, "body_MB": round(len(body) / 1e6, 1),
           "baseline_rss_MB": round(base_rss / 1e6), "peak_rss_MB": round(peak / 1e6),
           "wall_s": round(wall, 1),
           "answers": [{"status": s, "seconds": round(t, 1), "text": x} for s, t, x in results]}
    codes: dict[int, int] = {}
    for s, _, _ in results:
        codes[s] = codes.get(s, 0) + 1
    print(f"  {clients} client(s), body {len(body) / 1e6:.1f} MB: peak RSS "
          f"{peak / 1e6:.0f} MB (baseline {base_rss / 1e6:.0f} MB), wall {wall:.1f} s, "
          f"answers {codes}, slowest {max(t for _, t, _ in results):.1f} s", flush=True)
    return out


@contextlib.contextmanager
def transformer_at(code: Path | None, grpc: str, env: dict[str, str],
                   log: Path) -> Iterator[tuple[str, int]]:
    """A transformer with default settings (plus ``env``), from this checkout or from the
    checkout at ``code``; yields (URL, pid)."""
    if code is None:
        with run_transformer(grpc, env, log, own_session=True) as t:
            yield t.url, t.pid
        return
    port = free_port()
    cmd = ["env", f"--chdir={code}", *transformer_cmd(grpc, port)]
    with running(cmd, env={**env, "PYTHONPATH": str(code)}, log_path=log,
                 own_session=True) as proc:
        url = f"http://127.0.0.1:{port}"
        wait_http_ok(f"{url}/health", timeout_s=180, proc=proc, log_path=log)
        yield url, proc.pid


def _pairs(images: list[str]) -> bytes:
    return json.dumps({"pairs": [{"reference_image": images[i],
                                  "generated_image": images[(i + 1) % len(images)]}
                                 for i in range(0, len(images), 2)]}).encode()


def _distinct_gifs(n: int) -> list[bytes]:
    """``n`` distinct 35-byte GIFs with the largest canvas (their palettes differ)."""
    out = []
    for i in range(n):
        gif = bytearray(gif_huge_canvas())
        gif[13:16] = bytes((i & 255, (i >> 8) & 255, 7))
        out.append(bytes(gif))
    return out


def _photo_jpeg(side: int) -> bytes:
    rng = np.random.default_rng(side)
    img = Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _ways(data: bytes, n: int) -> list[str]:
    """The same image as ``n`` different strings: base64 wrapped at different widths, with
    and without padding, URL-safe, data URIs with different media types."""
    b64 = base64.b64encode(data).decode()
    out = [b64, f"data:image/jpeg;base64,{b64}",
           base64.urlsafe_b64encode(data).decode().rstrip("=")]
    width = 60
    while len(out) < n:
        out.append("\n".join(b64[j:j + width] for j in range(0, len(b64), width)))
        width += 4
    return out[:n]


def request_kinds() -> dict[str, tuple[str, bytes]]:
    """Name -> (route, body) of one request of each hostile kind."""
    ok = base64.b64encode(_photo_jpeg(64)).decode()
    kinds = {name: ("/similarity", _pairs([ok, base64.b64encode(build()).decode()]))
             for name, build in MEMORY_HOSTILE.items()}
    scans = jpeg_many_scans(0, side=2048, scans=500)
    kinds[f"jpeg-{len(scans) // 1000}kB-500-scans"] = ("/similarity", _pairs(
        [ok, base64.b64encode(scans).decode()]))
    kinds["gif-20kB-request"] = ("/similarity", _pairs(
        [base64.b64encode(g).decode() for g in _distinct_gifs(256)]))
    return kinds


def flood_kinds() -> dict[str, tuple[str, bytes]]:
    """Name -> (route, body) of the request each flood sends 8 of at once."""
    requests = request_kinds()
    kinds = {"gif-20kB-request": requests["gif-20kB-request"],
             "jpeg-500-scans": next(v for k, v in requests.items() if "500-scans" in k)}
    digits = "9" * 4299
    kinds["json-4300-digit-ints-31MB"] = ("/similarity", (
        '{"pairs":[' + ",".join([digits] * (31_000_000 // 4300)) + "]}").encode())
    kinds["json-long-strings-31MB"] = ("/similarity", json.dumps({"pairs": [
        {"reference_image": "A" * 15_499_000, "generated_image": "B" * 15_499_000}]}).encode())
    small = base64.b64encode(_photo_jpeg(64)).decode()
    kinds["embed-256-identical"] = ("/embed", json.dumps(
        {"images": [{"image": small, "id": i} for i in range(256)]}).encode())
    kinds["one-picture-36-ways"] = ("/similarity", _pairs(_ways(_photo_jpeg(800), 36)))
    return kinds


def _post(url: str, route: str, body: bytes, timeout: float) -> tuple[int, float, str]:
    start = time.perf_counter()
    try:
        r = httpx.post(f"{url}{route}", content=body, timeout=timeout,
                       headers={"Content-Type": "application/json"})
        return r.status_code, time.perf_counter() - start, r.text[:200]
    except httpx.HTTPError as e:
        return 0, time.perf_counter() - start, f"{type(e).__name__} (client gave up)"


def one_request(code: Path | None, grpc: str, name: str, route: str, body: bytes,
                log: Path) -> dict[str, Any]:
    """One request on a fresh transformer: its answer and the peak memory it cost."""
    with transformer_at(code, grpc, {"EMBEDDING_CACHE_SIZE": "0"}, log) as (url, pid):
        base = connection_floods.memory(pid)[0]
        status, seconds, text = _post(url, route, body, 300)
        peak = connection_floods.memory(pid)[1]
    row = {"request": name, "body_bytes": len(body), "status": status,
           "seconds": round(seconds, 1), "peak_minus_baseline_MB": round((peak - base) / 1e6),
           "answer": text}
    print(f"  {name:28s} {len(body):>11,d} B: {status} in {seconds:6.1f} s, peak RSS "
          f"+{(peak - base) / 1e6:,.0f} MB   {text[:110]}", flush=True)
    return row


def flood(code: Path | None, grpc: str, name: str, route: str, body: bytes, clients: int,
          window_s: float, log: Path) -> dict[str, Any]:
    """``clients`` copies of the request at once, on a fresh transformer, for at most
    ``window_s``: the probes' latency meanwhile, the answers, the peak memory."""
    with transformer_at(code, grpc, {}, log) as (url, pid):
        base = connection_floods.memory(pid)[0]
        probes: list[float] = []
        done = threading.Event()

        def probe() -> None:
            with httpx.Client(timeout=60) as client:
                while not done.is_set():
                    start = time.perf_counter()
                    try:
                        client.get(f"{url}/health")
                    except httpx.HTTPError:
                        pass
                    probes.append(time.perf_counter() - start)
                    time.sleep(0.1)

        prober = threading.Thread(target=probe, daemon=True)
        prober.start()
        pool = concurrent.futures.ThreadPoolExecutor(clients)
        started = time.perf_counter()
        futures = [pool.submit(_post, url, route, body, window_s) for _ in range(clients)]
        concurrent.futures.wait(futures, timeout=window_s + 5)
        wall = time.perf_counter() - started
        done.set()
        prober.join(65)
        peak = connection_floods.memory(pid)[1]
        pool.shutdown(wait=False, cancel_futures=True)
    answers = [f.result() if f.done() else (0, wall, "not answered") for f in futures]
    codes: dict[str, int] = {}
    for status, _, _ in answers:
        codes[str(status)] = codes.get(str(status), 0) + 1
    probe_ms = {"count": len(probes),
                "median": round(statistics.median(probes) * 1000) if probes else None,
                "max": round(max(probes) * 1000) if probes else None}
    row = {"flood": name, "clients": clients, "body_bytes": len(body),
           "wall_s": round(wall, 1), "answers": codes, "probe_ms": probe_ms,
           "peak_minus_baseline_MB": round((peak - base) / 1e6),
           "sample_answer": answers[0][2]}
    print(f"  {name:28s} {clients} x {len(body):>11,d} B: answers {codes} in {wall:5.1f} s; "
          f"/health median {probe_ms['median']} ms, max {probe_ms['max']} ms "
          f"({len(probes)} probes); peak RSS +{(peak - base) / 1e6:,.0f} MB", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.worst_case",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=0,
                   help="concurrent requests [MAX_CONCURRENT_REQUESTS, default 8]")
    p.add_argument("--only", default="walks,images,floods,connections,largest",
                   help="parts to run, comma-separated: walks (header walks), images (one "
                        "request per hostile kind), floods (probe latency), connections "
                        "(header drips, huge heads, slow uploads: bench/connection_floods.py), "
                        "largest (the most expensive request of distinct max-pixel PNGs) "
                        "[all]")
    p.add_argument("--drip-connections", type=int, default=0,
                   help="connections of the header-drip flood [MAX_CONNECTIONS, 1000]")
    p.add_argument("--slow-uploads", default="40,400",
                   help="slow-upload floods to run, comma-separated counts [40,400]")
    p.add_argument("--code", type=Path, default=None,
                   help="run the transformer from this checkout instead (before/after)")
    p.add_argument("--flood-s", type=float, default=40.0,
                   help="seconds each flood lasts at most [40]")
    p.add_argument("--flood", action="append", default=[],
                   help="run only this flood (repeatable) [all]")
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "worst_case.json")
    args = p.parse_args(argv)
    parts = set(args.only.split(","))
    settings = TransformerSettings()
    clients = args.clients or settings.max_concurrent_requests
    m = machine_info()
    print(f"machine: {m['cpu']}, {len(os.sched_getaffinity(0))} usable cores, load "
          f"{os.getloadavg()[0]:.1f}; transformer defaults, code "
          f"{args.code or 'of this checkout'}; predictor: an instant FAKE stand-in", flush=True)
    out: dict[str, Any] = {"machine": m, "code": str(args.code or "this checkout"),
                           "load_at_start": os.getloadavg()}
    log_dir = RESULTS_DIR / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    if "walks" in parts:
        print("header walk (imageguard) vs Pillow:", flush=True)
        out["header_walks"] = header_walks()
    with fake_predictor("described") as grpc:
        if "images" in parts:
            print("one request per hostile kind (fresh transformer each):", flush=True)
            out["requests"] = [one_request(args.code, grpc, name, route, body,
                                           log_dir / f"worst-case-{name}.log")
                               for name, (route, body) in request_kinds().items()]
        if "floods" in parts:
            print(f"floods: {clients} requests at once, /health every 100 ms:", flush=True)
            out["floods"] = [flood(args.code, grpc, name, route, body, clients, args.flood_s,
                                   log_dir / f"worst-case-flood-{name}.log")
                             for name, (route, body) in flood_kinds().items()
                             if not args.flood or name in args.flood]
        if "connections" in parts:
            out["connections"] = connections(args, grpc, settings, log_dir)
        if "largest" in parts:
            out["runs"] = largest(grpc, settings, clients, log_dir)
    out["load_at_end"] = os.getloadavg()
    line = reproduce("bench.worst_case", argv)
    print(line)
    out["reproduce"] = line
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"written: {args.out}")
    return 0


def connections(args: argparse.Namespace, grpc: str, settings: TransformerSettings,
                log_dir: Path) -> list[dict[str, Any]]:
    """Issue 19, items 1-2: header drips, huge heads, slow uploads, each on a fresh
    transformer at its defaults."""
    n = args.drip_connections or settings.max_connections
    print(f"connections (HEADER_TIMEOUT {settings.header_timeout:g} s, MAX_HEADER_BYTES "
          f"{settings.max_header_bytes}, MAX_HEADER_COUNT {settings.max_header_count}, "
          f"MAX_CONNECTIONS {settings.max_connections}, BODY_READ_TIMEOUT "
          f"{settings.body_read_timeout:g} s):", flush=True)
    rows = []
    with transformer_at(args.code, grpc, {}, log_dir / "worst-case-drip.log") as (url, pid):
        rows.append(connection_floods.header_drip(
            url, pid, n, settings.header_timeout, settings.header_timeout * 2 + 5))
    with transformer_at(args.code, grpc, {}, log_dir / "worst-case-heads.log") as (url, pid):
        rows += connection_floods.many_headers(url, pid)
    valid = _pairs([base64.b64encode(_photo_jpeg(64)).decode(),
                    base64.b64encode(_photo_jpeg(96)).decode()])
    for count in (int(c) for c in args.slow_uploads.split(",") if c):
        with transformer_at(args.code, grpc, {},
                            log_dir / f"worst-case-slow-{count}.log") as (url, pid):
            rows.append(connection_floods.slow_uploads(
                url, pid, count, settings.body_read_timeout * 2 + 4, valid))
    return rows


def largest(grpc: str, settings: TransformerSettings, clients: int,
            log_dir: Path) -> list[dict[str, Any]]:
    """The most expensive request found: distinct max-pixel PNGs up to the body limit."""
    one = max_pixel_pngs(1)[0]
    per_image = len(base64.b64encode(one)) + 40
    n = min(2 * settings.max_pairs_per_request, int(settings.max_body_bytes * 0.99) // per_image)
    n -= n % 2
    images = [base64.b64encode(x).decode() for x in max_pixel_pngs(n)]
    body = json.dumps({"pairs": [{"reference_image": images[2 * i],
                                  "generated_image": images[2 * i + 1]}
                                 for i in range(n // 2)]}).encode()
    print(f"most expensive request: {n // 2} pairs of distinct {SIDE}x{SIDE} RGBA PNGs "
          f"({len(one) / 1e3:.0f} KB each), body {len(body) / 1e6:.1f} MB "
          f"(MAX_REQUEST_BODY_MB {settings.max_request_body_mb:g}), REQUEST_TIMEOUT "
          f"{settings.request_timeout:g} s", flush=True)
    return [scenario(grpc, body, c, log_dir / f"worst-case-{c}.log") for c in (1, clients)]


if __name__ == "__main__":
    raise SystemExit(main())

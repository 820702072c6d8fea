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

The predictor is an instant stand-in (``tests/transformer/fake_predictor.py``, FAKE on
purpose: it answers constant embeddings at once over the same gRPC v2 protocol): the
predictor's own costs are bounded by the batch limits and measured by ``bench.run``. The
transformer runs with its default settings (``DECODE_WORKERS`` = the usable CPUs).
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import io
import json
import os
import struct
import time
import zlib
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from bench.machine import machine_info
from bench.service import run_transformer
from bench.settings import RESULTS_DIR, reproduce
from tests.fuzz.hostile_images import HOSTILE
from tests.transformer.fake_predictor import fake_predictor
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


def _memory(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` in bytes."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text()
                  .splitlines() if ":" in line)
    return (int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024)


def scenario(grpc: str, body: bytes, clients: int, log: Path) -> dict[str, Any]:
    """``clients`` concurrent copies of the request on a fresh transformer."""
    with run_transformer(grpc, {"EMBEDDING_CACHE_SIZE": "0"}, log) as (url, pid):
        base_rss = _memory(pid)[0]

        def post(_: int) -> tuple[int, float, str]:
            start = time.perf_counter()
            r = httpx.post(f"{url}/similarity", content=body, timeout=600,
                           headers={"Content-Type": "application/json"})
            return r.status_code, time.perf_counter() - start, r.text[:160]

        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            started = time.perf_counter()
            results = list(pool.map(post, range(clients)))
            wall = time.perf_counter() - started
        peak = _memory(pid)[1]
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.worst_case",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=0,
                   help="concurrent requests [MAX_CONCURRENT_REQUESTS, default 8]")
    args = p.parse_args(argv)
    settings = TransformerSettings()
    clients = args.clients or settings.max_concurrent_requests
    m = machine_info()
    print(f"machine: {m['cpu']}, {len(os.sched_getaffinity(0))} usable cores; transformer "
          "defaults; predictor: an instant FAKE stand-in", flush=True)
    print("header walk (imageguard) vs Pillow:", flush=True)
    walks = header_walks()

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
    log_dir = RESULTS_DIR / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    runs = []
    with fake_predictor("ok") as grpc:
        for c in (1, clients):
            runs.append(scenario(grpc, body, c, log_dir / f"worst-case-{c}.log"))
    line = reproduce("bench.worst_case", argv)
    print(line)
    out = RESULTS_DIR / "worst_case.json"
    out.write_text(json.dumps({"machine": m, "header_walks": walks, "runs": runs,
                               "reproduce": line}, indent=1))
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

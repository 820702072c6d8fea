"""``python -m bench.studies.fairness``: how long another client's small request takes while one
request of many slow URLs, or of many costly images, is in flight (issue 19, item 5).

Two scenarios on a transformer with its default settings (``DECODE_WORKERS`` = the usable
CPUs, ``URL_FETCH_CONCURRENCY`` 32):

- **slow URLs**: a request of ``--slow-urls`` URLs on a local host that trickles each
  answer for ``--drip`` seconds, then a one-URL request of another client (a fast URL);
- **costly decodes**: a request of ``--costly`` distinct 4000x4000 PNGs (small to send,
  about a third of a second each to decode and resize here), then a one-image request.

Printed: the small request's latency (a few runs: median and worst) and the heavy one's.
The predictor is an instant stand-in (``testing/fake_predictor.py``, FAKE on
purpose: the model's time is not what is measured), over the same gRPC v2 protocol.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import io
import json
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import numpy as np
from PIL import Image

from bench.machine import machine_info
from bench.settings import RESULTS_DIR, reproduce
from testing.fake_predictor import fake_predictor
from testing.http_host import image_host
from testing.procs import run_transformer


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


SMALL = _png(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))


def costly_pngs(n: int, side: int = 4000) -> list[bytes]:
    """``n`` distinct PNGs, small to send and slow to decode (one pixel differs)."""
    out = []
    for i in range(n):
        pixels = np.zeros((side, side, 3), np.uint8)
        pixels[0, 0] = (i % 256, i // 256, 7)
        out.append(_png(pixels))
    return out


@contextmanager
def slow_host(drip_s: float) -> Iterator[str]:
    """A local HTTP host on 127.0.0.2: ``/slow/...`` trickles a byte every half second for
    ``drip_s``; any other path answers a small PNG at once."""
    with image_host(default=SMALL, drip_every_s=0.5, drip_s=drip_s) as host:
        yield host.base


def _request(url: str, images: list[str]) -> tuple[int, float]:
    started = time.perf_counter()
    # Pairs of consecutive images; one image is paired with itself (embedded once).
    pairs = [{"reference_image": images[i], "generated_image": images[min(i + 1, len(images) - 1)]}
             for i in range(0, len(images), 2)]
    r = httpx.post(f"{url}/similarity", json={"pairs": pairs},
                   timeout=600)
    return r.status_code, time.perf_counter() - started


def scenario(url: str, heavy: list[str], small: str, *, runs: int, head_start_s: float
             ) -> dict[str, Any]:
    """``runs`` times: the heavy request, then (after ``head_start_s``) the small one."""
    small_s, heavy_s, codes = [], [], []
    for _ in range(runs):
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(_request, url, heavy)
            time.sleep(head_start_s)
            code, took = _request(url, [small])
            heavy_code, heavy_took = pending.result()
        small_s.append(took)
        heavy_s.append(heavy_took)
        codes.append((code, heavy_code))
    return {"small_s": [round(t, 2) for t in small_s], "heavy_s": [round(t, 1) for t in heavy_s],
            "codes": codes, "small_median_s": round(statistics.median(small_s), 2),
            "small_worst_s": round(max(small_s), 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.studies.fairness",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--slow-urls", type=int, default=40,
                   help="URLs of the heavy request (more than URL_FETCH_CONCURRENCY, 32)")
    p.add_argument("--drip", type=float, default=12.0, help="seconds each slow URL takes")
    p.add_argument("--costly", type=int, default=48, help="images of the heavy request")
    p.add_argument("--runs", type=int, default=2)
    args = p.parse_args(argv)
    m = machine_info()
    print(f"machine: {m['cpu']}; transformer defaults; predictor: an instant FAKE stand-in",
          flush=True)
    log_dir = RESULTS_DIR / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {"EMBEDDING_CACHE_SIZE": "0", "URL_ALLOWED_NETWORKS": "127.0.0.2/32",
           # The heavy request of slow URLs ends at its deadline (504) once measured.
           "URL_FETCH_TIMEOUT": str(args.drip + 30), "REQUEST_TIMEOUT": "30"}
    results: dict[str, Any] = {}
    costly = [base64.b64encode(x).decode() for x in costly_pngs(args.costly)]
    with fake_predictor("ok") as grpc, slow_host(args.drip) as host, \
            run_transformer(grpc, env, log_dir / "fairness.log", own_session=True) as t:
        url = t.url
        results["slow_urls"] = scenario(
            url, [f"{host}/slow/{i}" for i in range(args.slow_urls)], f"{host}/small.png",
            runs=args.runs, head_start_s=1.0)
        print(f"  one-URL request beside {args.slow_urls} URLs of {args.drip:g} s: median "
              f"{results['slow_urls']['small_median_s']} s, worst "
              f"{results['slow_urls']['small_worst_s']} s (heavy request "
              f"{results['slow_urls']['heavy_s']} s)", flush=True)
        results["costly_decodes"] = scenario(
            url, costly, base64.b64encode(SMALL).decode(), runs=args.runs, head_start_s=1.0)
        print(f"  one-image request beside {args.costly} costly images: median "
              f"{results['costly_decodes']['small_median_s']} s, worst "
              f"{results['costly_decodes']['small_worst_s']} s (heavy request "
              f"{results['costly_decodes']['heavy_s']} s)", flush=True)
    line = reproduce("bench.studies.fairness", argv)
    print(line)
    out = RESULTS_DIR / "fairness.json"
    out.write_text(json.dumps({"machine": m, "args": vars(args), **results,
                               "reproduce": line}, indent=1))
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

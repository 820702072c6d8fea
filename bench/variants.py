"""``python -m bench.variants``: every DreamSim variant on this machine's CPU, in one run.

For each variant, in a fresh process (so that memory figures are its own):

- memory: resident set size after ``load_model`` in fp32 (process total, and the part the
  model added over a process that had only imported torch), and the peak while loading;
- speed: images per second through the predictor's model (``DreamSimEmbedder.embed``), and
  CPU seconds per image, in fp32, bf16 and fp16 (where the CPU build of torch runs it),
  embedding ``--images`` real photographs (testing.photos, decoded exactly as the service
  decodes) after a warm-up;
- precision: the largest |distance(precision) - distance(fp32)| over every pair of them.

Weights: the variant's real weights when ``--cache-dir`` holds them, else a random-weight
cache in the upstream layout (testing/checkpoints.py; same cost as the real ones, built in
a temporary folder and deleted afterwards). The deviations of random weights are of the
same order as real ones but not equal to them: measure with real weights where you have
them.

Prints one table; ``--json`` adds one JSON line per variant.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

PRECISIONS = ("fp32", "bf16", "fp16")
DEFAULT_ORDER = ("dino_vitb16", "clip_vitb32", "open_clip_vitb32", "synclr_vitb16",
                 "dinov2_vitb14", "dino_vitb16_patch", "dinov2_vitb14_patch", "ensemble")


def _rss_mib(field: str = "VmRSS") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _images(n: int) -> np.ndarray:
    from testing.photos import make_images
    from transformer.images import decode_image

    return np.stack([decode_image(im.data) for im in make_images(n, seed=3)])


def _distances(emb: np.ndarray) -> np.ndarray:
    e = emb.astype(np.float64)
    i, j = np.triu_indices(len(e), k=1)
    return 1 - (e[i] * e[j]).sum(axis=1)


def _timed_embed(embedder: Any, images: Any, chunk: int) -> tuple[np.ndarray, float, float]:
    """Embeddings of ``images`` after a warm-up pass on the same batch, with images per
    second (wall clock) and CPU seconds per image (this process, all threads). The warm-up
    has the timed pass's shapes: oneDNN prepares its bf16/fp16 kernels per shape, and a
    first call at a new shape measured several times slower. On a shared machine the CPU
    time is the steadier figure."""
    embedder.embed(images, batch_size=chunk)
    wall, cpu = time.perf_counter(), time.process_time()
    emb = embedder.embed(images, batch_size=chunk).numpy()
    n = images.shape[0]
    return emb, n / (time.perf_counter() - wall), (time.process_time() - cpu) / n


def worker(variant: str, cache: Path, n_images: int, chunk: int) -> dict[str, Any]:
    """Measure one variant in this process (called in a fresh subprocess)."""
    import torch

    from predictor.model import load_model

    rss_torch = _rss_mib()
    images = torch.from_numpy(_images(n_images))
    result: dict[str, Any] = {"variant": variant, "threads": torch.get_num_threads()}
    reference: np.ndarray | None = None
    for precision in PRECISIONS:
        try:
            model = load_model(cache_dir=cache, variant=variant, device="cpu",
                               precision=precision)
            if precision == "fp32":
                result["rss_mib"] = round(_rss_mib())
                result["model_mib"] = round(_rss_mib() - rss_torch)
                result["peak_mib"] = round(_rss_mib("VmHWM"))
                result["dim"] = model.embedder.embedding_dim
                result["load_s"] = round(model.load_seconds, 1)
            emb, rate, cpu_s = _timed_embed(model.embedder, images, chunk)
            result[f"{precision}_images_per_s"] = round(rate, 2)
            result[f"{precision}_cpu_s_per_image"] = round(cpu_s, 3)
            del model  # free before the next precision loads
        except (RuntimeError, NotImplementedError) as exc:  # an op without a CPU kernel
            result[f"{precision}_error"] = f"{type(exc).__name__}: {str(exc)[:120]}"
            continue
        distances = _distances(emb)
        if reference is None:
            reference = distances
            result["distance_range"] = [round(float(distances.min()), 4),
                                        round(float(distances.max()), 4)]
        else:
            result[f"{precision}_max_deviation"] = float(np.abs(distances - reference).max())
    return result


def _weights(variant: str, cache_dir: Path | None, scratch: Path) -> tuple[Path, str]:
    from predictor.checkpoint import WeightsError, check_files
    from predictor.layout import get_variant

    if cache_dir is not None:
        try:
            check_files(cache_dir.resolve(), get_variant(variant))
            return cache_dir, "real weights"
        except WeightsError:
            pass
    from testing.checkpoints import build_upstream_cache

    return build_upstream_cache(scratch / variant, variant, seed=7), "random test weights"


def _row(r: dict[str, Any]) -> str:
    def speed(p: str) -> str:
        if f"{p}_images_per_s" not in r:
            return "n/a"
        return f"{r[f'{p}_images_per_s']:.2f} ({r[f'{p}_cpu_s_per_image']:.2f})"

    def dev(p: str) -> str:
        return f"{r[f'{p}_max_deviation']:.1e}" if f"{p}_max_deviation" in r else "n/a"

    return (f"| `{r['variant']}` | {r['dim']} | {speed('fp32')} | {speed('bf16')} | "
            f"{speed('fp16')} | {dev('bf16')} | {dev('fp16')} | {r['rss_mib']} | "
            f"{r['model_mib']} | {r['peak_mib']} |")


def main(argv: list[str] | None = None) -> int:
    from predictor.layout import VARIANTS

    parser = argparse.ArgumentParser(prog="python -m bench.variants", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS),
                        default=list(DEFAULT_ORDER),
                        help="default: all, cheapest first, the ensemble (three backbones) last")
    parser.add_argument("--cache-dir", type=Path,
                        default=Path(os.environ.get("MODEL_CACHE_DIR", "models")),
                        help="real weights, if there (default: $MODEL_CACHE_DIR or ./models)")
    parser.add_argument("--images", type=int, default=8,
                        help="photos: timed, and every pair's distance compared")
    parser.add_argument("--chunk", type=int, default=16, help="images per forward pass")
    parser.add_argument("--json", action="store_true", help="also print one JSON line each")
    parser.add_argument("--worker", nargs=2, metavar=("VARIANT", "CACHE"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        variant, cache = args.worker
        print(json.dumps(worker(variant, Path(cache), args.images, args.chunk)))
        return 0

    pairs = args.images * (args.images - 1) // 2
    print(f"# bench.variants: {platform.node()}, {os.cpu_count()} CPUs, python "
          f"{platform.python_version()}; {args.images} photos ({pairs} pairs), "
          f"chunk {args.chunk}", flush=True)
    rows = []
    for variant in args.variants:
        scratch = Path(tempfile.mkdtemp(prefix="bench-variants-"))
        try:
            cache, kind = _weights(variant, args.cache_dir, scratch)
            cmd = [sys.executable, "-m", "bench.variants", "--images", str(args.images),
                   "--chunk", str(args.chunk), "--worker", variant, str(cache)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        if proc.returncode != 0:
            print(f"{variant}: worker failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
            return 1
        result = json.loads(proc.stdout.strip().splitlines()[-1]) | {"weights": kind}
        rows.append(result)
        print(json.dumps(result) if args.json else _row(result), flush=True)
    print("\nimg/s: images per second, wall clock (CPU seconds per image, all threads)")
    print("\n| variant | dim | fp32 img/s | bf16 img/s | fp16 img/s | bf16 max dev | "
          "fp16 max dev | RSS MiB | model MiB | peak MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(_row(r))
    errors = {f"{r['variant']} {k}": v for r in rows for k, v in r.items() if k.endswith("_error")}
    for key, value in errors.items():
        print(f"{key}: {value}")
    print(f"weights: {', '.join(sorted({r['weights'] for r in rows}))}; "
          f"torch threads {rows[0]['threads'] if rows else '?'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

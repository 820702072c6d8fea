"""``python -m bench.studies.decode_modes``: what DECODE_MODE=fast (JPEG draft decoding) costs in
fidelity and buys in speed, on real photographs at realistic sizes.

Decodes the same JPEGs (400-1024 px) exactly as DreamSim does and with ``Image.draft``,
embeds both with the predictor's model, and prints the decode speed of each mode and the
deviation of the distances (exact vs fast) over pairs of different photographs, plus the
distance between each image's exact and fast version.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from predictor.checkpoint import WeightsError, check_files
from predictor.layout import get_variant
from predictor.model import load_model
from testing.photos import make_images
from transformer.images import decode_image


def _weights(model_type: str) -> tuple[Path, str]:
    real = Path("models")
    try:
        check_files(real.resolve(), get_variant(model_type))
        return real, "real weights"
    except WeightsError:
        from testing.checkpoints import build_upstream_cache

        cache = Path(".cache/bench-weights") / model_type
        if not (cache / "checkpoints").is_dir():
            build_upstream_cache(cache, model_type)
        return cache, "random test weights"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=40, help="JPEG photographs to use")
    parser.add_argument("--model-type", default="dino_vitb16")
    args = parser.parse_args(argv)
    jpegs = [im.data for im in make_images(3 * args.images, seed=7) if im.fmt == "JPEG"]
    jpegs = jpegs[: args.images]
    timings = {}
    arrays = {}
    for mode in ("exact", "fast"):
        started = time.perf_counter()
        arrays[mode] = np.stack([decode_image(j, fast=mode == "fast") for j in jpegs])
        timings[mode] = len(jpegs) / (time.perf_counter() - started)
    cache, kind = _weights(args.model_type)
    model = load_model(cache_dir=cache, variant=args.model_type, device="cpu",
                       precision="fp32").embedder
    emb = {mode: model.embed(torch.from_numpy(a), batch_size=16).double()
           for mode, a in arrays.items()}
    n = len(jpegs)
    a, b = torch.arange(n), torch.roll(torch.arange(n), 1)
    d_exact = 1 - (emb["exact"][a] * emb["exact"][b]).sum(1)
    d_fast = 1 - (emb["fast"][a] * emb["fast"][b]).sum(1)
    dev = (d_exact - d_fast).abs()
    self_dist = 1 - (emb["exact"] * emb["fast"]).sum(1)
    pixel = np.abs(arrays["exact"].astype(np.int16) - arrays["fast"].astype(np.int16))
    print(f"{n} JPEG photographs, 400-1024 px, {args.model_type} ({kind}), CPU fp32")
    print(f"decode images/s (1 thread): exact {timings['exact']:.1f}, fast {timings['fast']:.1f}"
          f" ({timings['fast'] / timings['exact']:.2f}x)")
    print(f"pixels, fast vs exact: mean |diff| {pixel.mean():.2f}, max {pixel.max()} (of 255)")
    print(f"distance deviation over {n} pairs, |d_fast - d_exact|: max {dev.max():.2e}, "
          f"mean {dev.mean():.2e} (distances {d_exact.min():.3f}..{d_exact.max():.3f})")
    print(f"distance between an image's exact and fast decode: max {self_dist.max():.2e}, "
          f"mean {self_dist.mean():.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Small images for tests and benchmarks: distinct photographs as bytes, small PNG files,
base64, and the contract check of a ``/similarity`` answer."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
from PIL import Image


def distinct_images(n: int, *, size: int = 512) -> list[bytes]:
    """``n`` distinct photographs (crops of scikit-image's), alternately PNG and JPEG."""
    from skimage import data

    sources = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(),
               np.stack([data.camera()] * 3, axis=-1)]
    out = []
    for i in range(n):
        src = Image.fromarray(sources[i % len(sources)])
        w, h = src.size
        step = i // len(sources)
        box = (step * 7 % (w // 4), step * 5 % (h // 4), w - (step * 3 % (w // 4)), h - 1)
        img = src.crop(box).resize((size, size * 3 // 4))
        buf = io.BytesIO()
        img.save(buf, "PNG" if i % 2 == 0 else "JPEG", **({} if i % 2 == 0 else {"quality": 90}))
        out.append(buf.getvalue())
    return out


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def check_response(body: dict, pairs: list[dict]) -> None:
    """Contract checks on a 200 answer for ``pairs``."""
    assert set(body) == {"scores", "processing_time_ms"}, body.keys()
    assert len(body["scores"]) == len(pairs)
    assert body["processing_time_ms"] > 0
    for score, pair in zip(body["scores"], pairs, strict=True):
        assert set(score) == {"distance", "similarity", "pair_id"}
        assert score["pair_id"] == pair.get("pair_id")
        assert score["distance"] >= 0
        assert abs(score["similarity"] - 1 / (1 + score["distance"])) < 1e-12


def image_files(folder: Path, n: int, *, size: int = 64, seed: int = 0) -> list[Path]:
    """``n`` distinct small PNGs (smooth gradients plus noise)."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        yy, xx = np.mgrid[0:size, 0:size]
        base = np.stack([(xx * (i + 3)) % 256, (yy * (2 * i + 1)) % 256,
                         ((xx + yy) * (i + 1)) % 256], axis=-1)
        pixels = np.clip(base + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8)
        path = folder / f"img{seed}-{i:03d}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths

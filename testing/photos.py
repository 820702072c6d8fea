"""Distinct real photographs at realistic sizes, JPEG and PNG, made in memory.

Every image is a different crop of one of scikit-image's bundled photographs (astronaut,
coffee, chelsea, rocket, camera, Hubble deep field, retina, ...), scaled so that both
sides are within ``[min_side, max_side]`` pixels, flipped or not, and encoded as JPEG
(quality 80-95) or PNG. No two images of a set have the same bytes, so neither an
embedding cache nor deduplication can hide work: every image costs a decode and a
forward pass.

PNGs are written with zlib level 1: about 20 % larger files than the default level, five
times faster to make, and the same cost to decode (inflate speed does not depend on the
level), which is what the benchmark measures.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image

MIN_SIDE = 400
MAX_SIDE = 1024
MAX_ASPECT = 1.8


@dataclass(frozen=True)
class BenchImage:
    """One encoded image.

    Attributes:
        data: the encoded file.
        fmt: ``JPEG`` or ``PNG``.
        width: pixels.
        height: pixels.
        mode: PIL mode of the encoded image (``RGB`` or ``L``).
        source: name of the scikit-image photograph it was cut from.
    """

    data: bytes
    fmt: str
    width: int
    height: int
    mode: str
    source: str


def _sources() -> dict[str, Callable[[], np.ndarray]]:
    from skimage import data

    return {
        "astronaut": data.astronaut,
        "coffee": data.coffee,
        "chelsea": data.chelsea,
        "rocket": data.rocket,
        "camera": data.camera,
        "hubble_deep_field": data.hubble_deep_field,
        "retina": data.retina,
        "immunohistochemistry": data.immunohistochemistry,
        "motorcycle_left": lambda: data.stereo_motorcycle()[0],
        "motorcycle_right": lambda: data.stereo_motorcycle()[1],
        "moon": data.moon,
        "cell": data.cell,
        "coins": data.coins,
    }


def load_photographs() -> dict[str, Image.Image]:
    """The scikit-image photographs that load here (bundled files; no download)."""
    out = {}
    for name, load in _sources().items():
        try:
            out[name] = Image.fromarray(load())
        except Exception:  # a build of scikit-image without this file: use the others
            continue
    if len(out) < 4:
        raise RuntimeError(f"only {len(out)} scikit-image photographs could be loaded")
    return out


def _one(index: int, photos: list[tuple[str, Image.Image]], seed: int, min_side: int,
         max_side: int, attempt: int) -> BenchImage:
    rng = random.Random(f"{seed}:{index}:{attempt}")
    name, photo = photos[index % len(photos)]
    # Target size: both sides in [min_side, max_side], aspect at most MAX_ASPECT.
    while True:
        width, height = rng.randint(min_side, max_side), rng.randint(min_side, max_side)
        if max(width, height) / min(width, height) <= MAX_ASPECT:
            break
    # The largest crop of the photograph with that aspect, shrunk by a random factor and
    # placed at a random position: a different view of the scene for every index.
    sw, sh = photo.size
    aspect = width / height
    cw, ch = (sw, round(sw / aspect)) if sw / sh <= aspect else (round(sh * aspect), sh)
    scale = rng.uniform(0.55, 1.0)
    cw, ch = max(32, round(cw * scale)), max(32, round(ch * scale))
    left, top = rng.randint(0, sw - cw), rng.randint(0, sh - ch)
    img = photo.crop((left, top, left + cw, top + ch))
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    img = img.resize((width, height), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    if (index // len(photos) + index % len(photos)) % 2 == 0:
        fmt = "JPEG"
        img.save(buf, fmt, quality=rng.randint(80, 95))
    else:
        fmt = "PNG"
        img.save(buf, fmt, compress_level=1)
    return BenchImage(buf.getvalue(), fmt, width, height, img.mode, name)


def make_images(n: int, *, seed: int = 0, min_side: int = MIN_SIDE, max_side: int = MAX_SIDE,
                threads: int | None = None) -> list[BenchImage]:
    """``n`` distinct encoded photographs (distinct bytes), half JPEG and half PNG."""
    if not 16 <= min_side <= max_side:
        raise ValueError(f"need 16 <= min_side <= max_side, got {min_side}, {max_side}")
    photos = sorted(load_photographs().items())
    workers = threads or os.cpu_count() or 2
    with ThreadPoolExecutor(max_workers=workers) as pool:  # Pillow releases the GIL
        images = list(pool.map(lambda i: _one(i, photos, seed, min_side, max_side, 0),
                               range(n)))
    seen: set[bytes] = set()
    for i, image in enumerate(images):
        attempt = 0
        while hashlib.sha256(image.data).digest() in seen:  # astronomically unlikely
            attempt += 1
            image = _one(i, photos, seed, min_side, max_side, attempt)
        images[i] = image
        seen.add(hashlib.sha256(image.data).digest())
    return images


def describe(images: list[BenchImage]) -> dict[str, object]:
    """Summary of a set of images, for the report."""
    if not images:
        return {"count": 0}
    sizes = [len(im.data) for im in images]
    return {
        "count": len(images),
        "distinct_bytes": len({hashlib.sha256(im.data).digest() for im in images}),
        "sources": sorted({im.source for im in images}),
        "jpeg": sum(im.fmt == "JPEG" for im in images),
        "png": sum(im.fmt == "PNG" for im in images),
        "grey": sum(im.mode == "L" for im in images),
        "min_side": min(min(im.width, im.height) for im in images),
        "max_side": max(max(im.width, im.height) for im in images),
        "mean_megapixels": round(float(np.mean([im.width * im.height for im in images])) / 1e6,
                                 3),
        "mean_kb": round(float(np.mean(sizes)) / 1024, 1),
        "total_mb": round(sum(sizes) / 2**20, 1),
    }

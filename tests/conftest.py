"""Shared fixtures: random-weight caches in the upstream layout, photographs, servers."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageFilter

from tests.checkpoints import build_upstream_cache


@pytest.fixture(scope="session")
def dino_weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MODEL_CACHE_DIR with random dino_vitb16 weights in the upstream layout."""
    return build_upstream_cache(tmp_path_factory.mktemp("weights-dino"), "dino_vitb16", seed=1)


@pytest.fixture(scope="session")
def ensemble_weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MODEL_CACHE_DIR with random ensemble weights in the upstream layout."""
    return build_upstream_cache(tmp_path_factory.mktemp("weights-ensemble"), "ensemble", seed=2)


def _photos() -> dict[str, Image.Image]:
    from skimage import data

    return {
        "astronaut": Image.fromarray(data.astronaut()),  # 512x512 RGB
        "coffee": Image.fromarray(data.coffee()),  # 600x400 RGB
        "chelsea": Image.fromarray(data.chelsea()),  # 451x300 RGB
        "rocket": Image.fromarray(data.rocket()),  # 640x427 RGB
        "camera": Image.fromarray(data.camera()),  # 512x512 L (grey)
    }


def _distortions(img: Image.Image) -> dict[str, Image.Image]:
    rgb = img.convert("RGB")
    w, h = rgb.size
    return {
        "blur": rgb.filter(ImageFilter.GaussianBlur(3)),
        "crop": rgb.crop((w // 8, h // 8, w - w // 8, h - h // 8)),
        "bright": ImageEnhance.Brightness(rgb).enhance(1.4),
        "jpeg10": Image.open(io.BytesIO(encode(rgb, "JPEG", quality=10))),
        "noise": Image.fromarray(np.clip(np.asarray(rgb).astype(np.int16)
                                         + np.random.default_rng(0).integers(-40, 40, (h, w, 3)),
                                         0, 255).astype(np.uint8)),
    }


def encode(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


@dataclass(frozen=True)
class Photo:
    name: str
    image: Image.Image


@pytest.fixture(scope="session")
def photos() -> list[Photo]:
    """Real photographs (scikit-image) and distorted versions of them."""
    out = []
    for name, img in _photos().items():
        out.append(Photo(name, img))
        if name in ("astronaut", "coffee", "chelsea"):
            out.extend(Photo(f"{name}-{d}", im) for d, im in _distortions(img).items())
    return out

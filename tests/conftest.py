"""Shared fixtures: random-weight caches in the upstream layout, photographs, servers."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageFilter

from testing.checkpoints import cached_upstream_cache
from testing.http_host import IMAGE_HOST_NETWORK, ImageHost
from testing.http_host import image_host as serve_images
from testing.procs import Predictor, run_predictor, run_transformer


def pytest_configure(config: pytest.Config) -> None:
    # Registered here, not in pyproject.toml: the Dockerfiles copy pyproject.toml before
    # installing the dependencies, so any edit to it rebuilds the multi-GB torch layer.
    config.addinivalue_line(
        "markers", "image: builds and runs the Docker images (make image-test); "
                   "runs only when selected with -m image")
    config.addinivalue_line(
        "markers", "bench: runs a benchmark script end to end at tiny sizes (make bench-test); "
                   "runs only when selected with -m bench")


# Markers whose tests run only when a -m expression names them, with the target that does.
OPT_IN_MARKERS = {"image": "make image-test", "bench": "make bench-test"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Image tests build multi-GB images and bench tests run the benchmark scripts (minutes
    each): they run only when asked for by ``-m image`` / ``-m bench`` (``make
    image-test`` / ``make bench-test``), never as part of a plain or ``-m 'not slow'`` run."""
    selected = config.getoption("-m") or ""
    for marker, target in OPT_IN_MARKERS.items():
        if marker in selected:
            continue
        skip = pytest.mark.skip(reason=f"{marker} tests run with `{target}` (pytest -m {marker})")
        for item in items:
            if item.get_closest_marker(marker):
                item.add_marker(skip)


@pytest.fixture(scope="session")
def dino_weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MODEL_CACHE_DIR with random dino_vitb16 weights in the upstream layout.

    Shared with every other test process through the checkpoint cache
    (``testing/checkpoints.py``): read it, never write into it (copy it first)."""
    return cached_upstream_cache("dino_vitb16", seed=1, scratch=tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def ensemble_weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MODEL_CACHE_DIR with random ensemble weights in the upstream layout (shared and
    read-only, like ``dino_weights_dir``)."""
    return cached_upstream_cache("ensemble", seed=2, scratch=tmp_path_factory.getbasetemp())


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


# --- servers on loopback -------------------------------------------------------------------


@pytest.fixture(scope="session")
def predictor_server(dino_weights_dir: Path, tmp_path_factory: pytest.TempPathFactory
                     ) -> Iterator[Predictor]:
    """The real predictor process on loopback, dino_vitb16 random weights, CPU."""
    log = tmp_path_factory.mktemp("logs") / "predictor.log"
    env = {"MODEL_CACHE_DIR": str(dino_weights_dir), "DEVICE": "cpu", "MODEL_TYPE": "dino_vitb16"}
    with run_predictor(env, log) as predictor:
        yield predictor


@contextlib.contextmanager
def start_transformer(predictor_grpc: str, log: Path, *, env: dict[str, str] | None = None,
                      wait_healthy: bool = True) -> Iterator[str]:
    """A real transformer process that may fetch from ``image_host``; yields its base URL."""
    env = {"URL_ALLOWED_NETWORKS": IMAGE_HOST_NETWORK, **(env or {})}
    with run_transformer(predictor_grpc, env, log, timeout_s=60,
                         wait_path="/health" if wait_healthy else "/v2/health/live") as t:
        yield t.url


@pytest.fixture(scope="session")
def service_url(predictor_server: Predictor, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[str]:
    """Transformer + predictor as separate processes, wired over gRPC v2, default settings."""
    log = tmp_path_factory.mktemp("logs") / "transformer.log"
    with start_transformer(predictor_server.grpc, log) as url:
        yield url


# The strict configuration's limits (tests read them from here rather than repeat them).
STRICT_ENV = {"MAX_PAIRS_PER_REQUEST": "4", "MAX_IMAGES_PER_REQUEST": "3",
              "MAX_IMAGE_SIZE_MB": "0.05", "URL_FETCH_TIMEOUT": "2",
              "MAX_CONCURRENT_REQUESTS": "1", "MAX_QUEUED_REQUESTS": "0"}


@pytest.fixture(scope="session")
def strict_url(predictor_server: Predictor, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[str]:
    """A transformer with small limits (``STRICT_ENV``): 4 pairs, 3 images, 50 kB images,
    2 s URL fetches, one request at a time and none queued. One process for every test of
    limits and admission (it was one per module)."""
    log = tmp_path_factory.mktemp("logs") / "strict-transformer.log"
    with start_transformer(predictor_server.grpc, log, env=STRICT_ENV) as url:
        yield url


@pytest.fixture(scope="session")
def image_host() -> Iterator[ImageHost]:
    """A local HTTP server for URL inputs (add files with ``image_host.add``)."""
    with serve_images() as host:
        yield host

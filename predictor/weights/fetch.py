"""Everything a variant needs, fetched into the cache dir: the one entry point for callers.

``ensure_weights`` is what ``python -m predictor.weights`` and ``make run`` call: it
fetches what is missing (release zip, then the torch.hub backbone where the variant has
one), verifies it, and leaves the rest alone.

Where the files come from: upstream's URLs (``predictor.layout``), or a mirror. A mirror
(``WEIGHTS_BASE_URL`` or ``--base-url``) serves every file under its upstream file name
side by side, e.g. ``<base>/dreamsim_dino_vitb16_checkpoint.zip`` and
``<base>/dino_vitbase16_pretrain.pth``: a folder of downloaded files behind any HTTP
server will do, which is also how the tests stand in for the release host.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import httpx

from predictor.layout import Variant, get_variant

from .download import TIMEOUT
from .hub_file import fetch_hub_file
from .release import fetch_release

BASE_URL_ENV = "WEIGHTS_BASE_URL"


@dataclass(frozen=True)
class Sources:
    """Where a variant's files are downloaded from.

    Attributes:
        release_url: the release zip.
        hub_url: the torch.hub backbone (None when the variant has none).
    """

    release_url: str
    hub_url: str | None


def _on_mirror(base_url: str, url: str) -> str:
    return f"{base_url.rstrip('/')}/{PurePosixPath(httpx.URL(url).path).name}"


def sources(variant: Variant, base_url: str | None = None) -> Sources:
    """Upstream's URLs for ``variant``, or the same file names under ``base_url``."""
    hub = variant.hub_file.url if variant.hub_file else None
    if not base_url:
        return Sources(release_url=variant.release_zip_url, hub_url=hub)
    return Sources(release_url=_on_mirror(base_url, variant.release_zip_url),
                   hub_url=_on_mirror(base_url, hub) if hub else None)


def fetch(
    *,
    model_type: str,
    cache_dir: Path,
    release_url: str | None = None,
    backbone_url: str | None = None,
    base_url: str | None = None,
    force: bool = False,
    progress: bool = True,
) -> None:
    """Fetch everything ``model_type`` needs into ``cache_dir``.

    Args:
        model_type: a ``MODEL_TYPE`` value.
        cache_dir: the cache dir (created if missing).
        release_url: the release zip; overrides ``base_url`` for this file.
        backbone_url: the torch.hub backbone; overrides ``base_url`` for this file.
        base_url: a mirror holding the files under their upstream names; None: upstream.
        force: refetch what is already present.
        progress: print download progress (bytes, rate, time left) to stderr.

    Raises:
        FetchError: on any expected failure.
        OSError: when the cache dir cannot be written.
        ValueError: an unknown ``model_type``.
    """
    variant = get_variant(model_type)
    where = sources(variant, base_url)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with httpx.Client(follow_redirects=True, timeout=TIMEOUT) as client:
        fetch_release(client, variant, cache_dir, release_url or where.release_url, force,
                      progress=progress)
        if variant.hub_file is not None:
            url = backbone_url or where.hub_url or variant.hub_file.url
            fetch_hub_file(client, cache_dir, variant.hub_file, url, force, progress=progress)


def ensure_weights(*, model_type: str, cache_dir: Path, progress: bool = True,
                   base_url: str | None = None) -> None:
    """Make ``cache_dir`` hold verified weights for ``model_type``, downloading what is missing.

    What is present and valid is not downloaded again; an interrupted download resumes.

    Args:
        model_type: a ``MODEL_TYPE`` value.
        cache_dir: MODEL_CACHE_DIR (created if missing).
        progress: print download progress (bytes, rate, time left) to stderr.
        base_url: a mirror; None reads ``$WEIGHTS_BASE_URL``, and upstream's URLs when unset.

    Raises:
        FetchError: offline, HTTP error, failed verification (message says what to do).
        OSError: when the cache dir cannot be written.
        ValueError: an unknown ``model_type``.
    """
    fetch(model_type=model_type, cache_dir=cache_dir, progress=progress,
          base_url=base_url if base_url is not None else os.environ.get(BASE_URL_ENV) or None)

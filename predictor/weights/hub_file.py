"""The backbone upstream downloads through ``torch.hub`` (DINO ViT-B/16, DINOv2 ViT-B/14).

It lands where torch.hub would put it (``<cache dir>/checkpoints/<file>``, upstream sets
the hub dir to the cache dir) and counts as present only once its keys and shapes match
``HubFile.expected_shapes``.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import torch

from predictor.layout import HubFile

from .download import download, part_path
from .errors import reject


def verify_hub_file(path: Path, hub: HubFile) -> None:
    """Check that ``path`` holds the state dict ``hub`` describes.

    Args:
        path: the backbone file (or its ``.part``).
        hub: which backbone it should be.

    Raises:
        FetchError: describing the problem; ``path`` is removed.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # whatever unpickling raises, the file is bad
        problem = f"does not load with torch.load ({type(exc).__name__}: {exc})"
        raise reject(path, problem) from None
    if not isinstance(state, dict):
        raise reject(path, f"holds a {type(state).__name__}, not a state dict")
    for key, shape in hub.expected_shapes.items():
        value = state.get(key)
        if not isinstance(value, torch.Tensor):
            raise reject(path, f"state dict lacks tensor {key!r}")
        if shape is not None and tuple(value.shape) != shape:
            raise reject(path, f"{key} has shape {list(value.shape)}, expected {list(shape)}")


def fetch_hub_file(client: httpx.Client, cache_dir: Path, hub: HubFile, url: str, force: bool,
                   *, progress: bool = True) -> None:
    """Download and verify the backbone unless a valid one is already present.

    Args:
        client: the HTTP client.
        cache_dir: the cache dir (the file goes to ``hub.path`` inside it).
        hub: which backbone.
        url: where to download it from (``hub.url`` or a mirror).
        force: fetch even if present.
        progress: print download progress to stderr.

    Raises:
        FetchError: on any failure; a file that failed verification has been removed.
    """
    dest = cache_dir / hub.path
    if force:
        part_path(dest).unlink(missing_ok=True)
    elif dest.exists():
        verify_hub_file(dest, hub)
        print(f"already present: {dest}")
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = download(client, url, dest, f"save it as {dest}", progress=progress)
    verify_hub_file(part, hub)
    part.replace(dest)
    print(f"fetched {dest}")

"""Fetch the official DreamSim weights into a cache dir, in the upstream layout.

Does what ``dreamsim.model.download_weights`` (dreamsim 0.2.1) and torch.hub do on first
use, as a separate step: the release zip of the variant is unpacked into the cache dir and
the torch.hub backbone (DINO ViT-B/16 or DINOv2 ViT-B/14, for the variants built on them)
lands where torch.hub would put it. Unlike upstream, downloads resume after an
interruption (HTTP ``Range``), everything is verified before it counts as present, and a
file that fails verification is removed so the next run fetches it again.

The pieces, one job each: ``download`` (resumable HTTP with progress), ``release`` (the
release zip), ``hub_file`` (the torch.hub backbone), ``fetch`` (what a variant needs, from
where: ``ensure_weights``), ``cli`` (``python -m predictor.weights``).

Usage::

    python -m predictor.weights --model-type dino_vitb16 --cache-dir /app/models
"""

from .cli import fetch_command, main
from .errors import FetchError, Unreachable
from .fetch import BASE_URL_ENV, ensure_weights, fetch, sources

__all__ = ["BASE_URL_ENV", "FetchError", "Unreachable", "ensure_weights", "fetch",
           "fetch_command", "main", "sources"]

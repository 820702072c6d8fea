"""The upstream ``dreamsim`` package used the naive way (one pair at a time, its own
preprocessing, fp32): the baseline every speedup is measured against."""

from __future__ import annotations

import io
import statistics
import time
from typing import Any

from bench.settings import Settings
from testing.photos import BenchImage


def measure_upstream(s: Settings, pairs: list[tuple[BenchImage, BenchImage]],
                     warm: tuple[BenchImage, BenchImage]) -> dict[str, Any]:
    """The upstream package the naive way, one pair at a time, fp32, same device."""
    import torch
    from dreamsim import dreamsim
    from PIL import Image

    from testing.checkpoints import hub_redirect

    device = s.device
    t0 = time.perf_counter()
    # torch.hub.load of the DINO backbone is redirected to dreamsim's own vendored ViT
    # built from the same cached file (no network); the architecture is the same.
    with hub_redirect(s.weights_dir):
        model, preprocess = dreamsim(pretrained=True, device=device,
                                     cache_dir=str(s.weights_dir), dreamsim_type=s.model_type)
    load_s = time.perf_counter() - t0

    def one(a: BenchImage, b: BenchImage) -> tuple[float, float, float]:
        t0 = time.perf_counter()
        xa = preprocess(Image.open(io.BytesIO(a.data))).to(device)
        xb = preprocess(Image.open(io.BytesIO(b.data))).to(device)
        t1 = time.perf_counter()
        d = float(model(xa, xb))  # .item(): waits for the device
        return d, t1 - t0, time.perf_counter() - t1

    with torch.no_grad():
        one(*warm)
        rows = [one(a, b) for a, b in pairs]
    per_pair = [p + m for _, p, m in rows]
    return {"load_s": load_s, "pairs": len(rows), "per_pair_s": per_pair,
            "distances": [d for d, _, _ in rows],
            "mean_per_pair_s": statistics.fmean(per_pair),
            "median_per_pair_s": statistics.median(per_pair),
            "mean_preprocess_s": statistics.fmean(p for _, p, _ in rows),
            "mean_model_s": statistics.fmean(m for _, _, m in rows)}


def upstream_time(up: dict[str, Any] | None, n: int) -> tuple[float | None, bool]:
    """Upstream time for ``n`` pairs: ``n`` x its mean time per pair (pairs run one at a
    time are independent, and the mean over all measured pairs is steadier than the first
    few alone); the flag says ``n`` is more pairs than were measured."""
    if not up or not up["pairs"]:
        return None, False
    return up["mean_per_pair_s"] * n, n > up["pairs"]


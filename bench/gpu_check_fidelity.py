"""``python -m bench.gpu_check_fidelity``: distance deviation per variant and precision.

For each variant, on its random-weight test cache (testing/checkpoints.py; the upstream
layout), and on ``--images`` real photographs (testing.photos, decoded as the service
decodes them), every pair's distance from:

- upstream ``dreamsim`` 0.2.1 in fp32 on the CPU (the oracle),
- this predictor's model (``predictor.model.load_model``) in fp32, bf16 and fp16 on
  ``--device`` (CPU by default; ``make gpu-check`` runs it on the GPU against CPU fp32),

and prints max and mean |deviation| against fp32 and against upstream. ``--batch-check``
also embeds the same images one at a time and in one batch, per precision, and reports
the largest embedding difference (batch-size dependence, README "Batch size and
embeddings"). Runs with any version of ``predictor.model`` that has ``load_model``
(``PYTHONPATH=<other checkout>`` measures another commit's model the same way).

One JSON line per variant with ``--json``; ``--out`` writes them all to a file.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

VARIANTS = ("dino_vitb16", "clip_vitb32", "open_clip_vitb32", "synclr_vitb16",
            "dinov2_vitb14", "dino_vitb16_patch", "dinov2_vitb14_patch", "ensemble")
PRECISIONS = ("fp32", "bf16", "fp16")


def _images(n: int) -> np.ndarray:
    from testing.photos import make_images
    from transformer.images import decode_image

    return np.stack([decode_image(im.data) for im in make_images(n, seed=3)])


def _pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    i, j = np.triu_indices(n, k=1)
    return i, j


def upstream_distances(cache: Path, variant: str, u8: np.ndarray) -> np.ndarray:
    """Upstream's distance for every pair (``PerceptualModel.forward`` for patch types,
    whose pooling happens there; ``embed`` once per image otherwise)."""
    import torch

    from testing.checkpoints import upstream_dreamsim

    model, _ = upstream_dreamsim(cache, variant)
    x = torch.from_numpy(u8).float() / 255  # exactly upstream's ToTensor of these pixels
    i, j = _pairs(len(u8))
    with torch.no_grad():
        if variant.endswith("_patch"):
            d = model(x[torch.from_numpy(i)], x[torch.from_numpy(j)])
        else:
            e = model.embed(x)
            d = 1 - torch.nn.functional.cosine_similarity(e[i], e[j], dim=-1)
    return d.double().numpy()


def measure(cache: Path, variant: str, u8: np.ndarray, *, device: str,
            batch_check: bool, precisions: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Deviations of ``variant`` on ``device`` in ``precisions`` (default all three)
    against its fp32 there, upstream fp32 on the CPU, and (off the CPU) ours in CPU fp32."""
    import torch

    from predictor.model import load_model

    i, j = _pairs(len(u8))
    result: dict[str, Any] = {"variant": variant, "images": len(u8), "pairs": len(i),
                              "device": device}
    started = time.perf_counter()
    upstream = upstream_distances(cache, variant, u8)
    result["upstream_s"] = round(time.perf_counter() - started, 1)
    images = torch.from_numpy(u8)
    references = {"upstream": upstream}
    if not device.startswith("cpu"):
        cpu = load_model(cache_dir=cache, variant=variant, device="cpu", precision="fp32")
        e = cpu.embedder.embed(images, batch_size=len(u8)).double().numpy()
        references["cpu_fp32"] = 1 - (e[i] * e[j]).sum(axis=1)
        del cpu
    fp32: np.ndarray | None = None
    for precision in precisions or PRECISIONS:
        started = time.perf_counter()
        model = load_model(cache_dir=cache, variant=variant, device=device,
                           precision=precision)
        emb = model.embedder.embed(images, batch_size=len(u8)).double().numpy()
        d = 1 - (emb[i] * emb[j]).sum(axis=1)
        if fp32 is None:
            fp32 = d
        for name, ref in (("fp32", fp32), *references.items()):
            if precision == "fp32" and name == "fp32":
                continue
            dev = np.abs(d - ref)
            result[f"{precision}_vs_{name}_max"] = float(dev.max())
            result[f"{precision}_vs_{name}_mean"] = float(dev.mean())
        if batch_check:
            one = torch.cat([model.embedder.embed(images[k:k + 1], batch_size=1)
                             for k in range(len(u8))]).double().numpy()
            result[f"{precision}_batch_dependence_max"] = float(np.abs(one - emb).max())
        result[f"{precision}_s"] = round(time.perf_counter() - started, 1)
        del model
    result["distance_range"] = [round(float(upstream.min()), 4), round(float(upstream.max()), 4)]
    return result


def _with_mean(r: dict[str, Any], key: str) -> str:
    return f"{r[key + '_max']:.1e} ({r[key + '_mean']:.1e})" if key + "_max" in r else "n/a"


def _max(r: dict[str, Any], key: str) -> str:
    return f"{r[key + '_max']:.1e}" if key + "_max" in r else "n/a"


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: max (mean) |deviation| in distance per variant and precision."""
    lines = ["| variant | bf16 vs fp32 max (mean) | fp16 vs fp32 max (mean) | fp32 vs upstream "
             "max | bf16 vs upstream max (mean) | fp16 vs upstream max (mean) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| `{r['variant']}` | {_with_mean(r, 'bf16_vs_fp32')} | "
                     f"{_with_mean(r, 'fp16_vs_fp32')} | {_max(r, 'fp32_vs_upstream')} | "
                     f"{_with_mean(r, 'bf16_vs_upstream')} | "
                     f"{_with_mean(r, 'fp16_vs_upstream')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check_fidelity",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=["dino_vitb16"])
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cache-root", type=Path, default=None,
                        help="reuse <root>/<variant> caches (built there when missing)")
    parser.add_argument("--batch-check", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    from testing.checkpoints import build_upstream_cache

    u8 = _images(args.images)
    scratch = Path(tempfile.mkdtemp(prefix="fidelity-"))
    rows = []
    try:
        for variant in args.variants:
            root = args.cache_root or scratch
            cache = root / variant
            if not (cache / ".built").is_file():
                build_upstream_cache(cache, variant, seed=11)
                (cache / ".built").touch()
            row = measure(cache, variant, u8, device=args.device, batch_check=args.batch_check)
            rows.append(row)
            if args.json:
                print(json.dumps(row), flush=True)
            if args.cache_root is None:
                shutil.rmtree(cache, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(table(rows))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

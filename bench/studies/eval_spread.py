"""How stable ``compare``'s figures are at n = 100, 1,000 and 10,000 images per set:
the spread over independent draws of synthetic embeddings, and the bootstrap's own spread
on one draw, for docs/evaluation.md.

    python -m bench.studies.eval_spread [--sizes 100,1000,10000] [--draws 5,5,2] [--boot 20,20,0]

The sets are synthetic DreamSim-like embeddings (768-d, per-row mean subtracted, unit
norm) from two fixed anisotropic Gaussians (a decaying spectrum, as real features have):
the "reference" one and a "generated" one, slightly wider and shifted. Since both
distributions are fixed, the spread over draws is the sampling spread a user sees from
having n images, and the change of the mean with n is the metric's bias.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from similarity_client import metrics as M

DIM = 768


def draw(rng: np.random.Generator, n: int, generated: bool) -> np.ndarray:
    scales = np.arange(1, DIM + 1, dtype=np.float64) ** -0.5
    z = rng.standard_normal((n, DIM))
    if generated:
        z = z * (1 + 0.15 * np.cos(np.arange(DIM))) + 0.4 * (np.arange(DIM) < 8)
    x = z * scales
    x -= x.mean(1, keepdims=True)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--draws", default="5,5,2", help="independent draws per size")
    parser.add_argument("--boot", default="20,20,0", help="bootstrap replicates per size (0: none)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    draws = [int(s) for s in args.draws.split(",")]
    boots = [int(s) for s in args.boot.split(",")]
    print(f"load average {os.getloadavg()[0]:.1f}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; dim {DIM}, k=5")
    rows: dict[str, list[str]] = {name: [] for name in M.METRIC_NAMES}
    for n, n_draws, n_boot in zip(sizes, draws, boots, strict=True):
        started = time.perf_counter()
        values: dict[str, list[float]] = {name: [] for name in M.METRIC_NAMES}
        boot_std: dict[str, float] = {}
        for d in range(n_draws):
            rng = np.random.default_rng([n, d])
            a, b = draw(rng, n, True), draw(rng, n, False)
            for name, v in M.all_metrics(a, b).items():
                values[name].append(v)
            if d == 0 and n_boot:
                reps = M.bootstrap(a, b, replicates=n_boot, seed=1)
                boot_std = {name: float(np.std([reps[r][name] for r in reps], ddof=1))
                            for name in M.METRIC_NAMES}
        for name in M.METRIC_NAMES:
            seen = np.array(values[name])
            rows[name].append(f"{seen.mean():.4f} ± {seen.std(ddof=1):.4f} "
                              f"(boot {boot_std.get(name, float('nan')):.4f})")
        print(f"n={n}: {n_draws} draws, {n_boot} bootstrap replicates, "
              f"{time.perf_counter() - started:.0f} s, load average "
              f"{os.getloadavg()[0]:.1f}", flush=True)
        for name in M.METRIC_NAMES:  # as it goes: a long run stopped keeps its rows
            print(f"  {name}: {rows[name][-1]}", flush=True)
    print("\nmean ± std over independent draws (bootstrap std on the first draw)\n")
    print("| metric | " + " | ".join(f"n = {n:,}" for n in sizes) + " |")
    print("|---" * (len(sizes) + 1) + "|")
    for name, cells in rows.items():
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

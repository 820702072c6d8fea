"""``python -m bench.studies.cpu_threads``: torch's own thread count against the predictor's, under
a CPU limit.

torch sizes its intra-op pool from the cores it sees; a container's CPU limit (the cgroup
quota) is not among them. The predictor sizes the pool from the CPUs it may use
(``predictor.threads``). This runs the predictor's model (DEVICE=cpu, PRECISION and
MODEL_TYPE as for the service; the random-weight test checkpoint unless MODEL_CACHE_DIR
holds real weights) on the same batches in one process, alternating round by round between
the two thread counts, and prints images/s and how often the kernel throttled the process
(cgroup ``cpu.stat``) for each.

Run it where the limit is, that is inside a container:

    python -m bench.studies.cpu_threads --docker IMAGE --cpus 1
    python -m bench.studies.cpu_threads --docker IMAGE --cpus 1 --cpuset-cpus 0

``--docker`` builds the test checkpoint here if needed, then runs this same module inside
``IMAGE`` (the predictor image: its torch, this checkout mounted read-only) with
``docker run --cpus/--cpuset-cpus``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.machine import machine_info
from bench.settings import choose_weights, read_settings, reproduce

REPO = Path(__file__).resolve().parents[2]


def _cpu_stat() -> dict[str, int]:
    """The process's cgroup ``cpu.stat`` counters (v2 or v1, at the container's root)."""
    for path in (Path("/sys/fs/cgroup/cpu.stat"), Path("/sys/fs/cgroup/cpu/cpu.stat")):
        try:
            return {k: int(v) for k, v in
                    (line.split() for line in path.read_text().splitlines())}
        except (OSError, ValueError):
            continue
    return {}


def _throttled(before: dict[str, int], after: dict[str, int]) -> tuple[int, float]:
    """Periods throttled and seconds throttled between two ``cpu.stat`` readings."""
    periods = after.get("nr_throttled", 0) - before.get("nr_throttled", 0)
    if "throttled_usec" in after:  # v2
        secs = (after["throttled_usec"] - before.get("throttled_usec", 0)) / 1e6
    else:  # v1, nanoseconds
        secs = (after.get("throttled_time", 0) - before.get("throttled_time", 0)) / 1e9
    return periods, secs


def measure(rounds: int, images: int, batch: int) -> dict[str, Any]:
    import torch

    from predictor.model import load_model
    from predictor.threads import plan_threads

    torch_default = torch.get_num_threads()  # what torch chose alone, before anything set it
    plan = plan_threads(torch_threads=int(os.environ.get("TORCH_THREADS", "0") or 0),
                        environ=os.environ)
    ours = plan.intra_op or torch_default
    s = read_settings()
    choose_weights(s, print)
    loaded = load_model(cache_dir=s.weights_dir, variant=s.model_type, device="cpu",
                        precision=s.precision_requested)
    x = torch.randint(0, 256, (images, 3, 224, 224), dtype=torch.uint8,
                      generator=torch.Generator().manual_seed(0))
    modes = {"torch default": torch_default, "predictor": ours}
    print(f"threads: torch default {torch_default}, predictor {ours} ({plan.reason}); "
          f"{images} images a round in batches of {batch}, {s.model_type} {s.precision}",
          flush=True)
    loaded.embedder.embed(x[:batch], batch_size=batch)  # warm-up
    results: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    for r in range(rounds):
        order = list(modes) if r % 2 == 0 else list(reversed(modes))
        for mode in order:
            torch.set_num_threads(modes[mode])
            before, t0 = _cpu_stat(), time.perf_counter()
            loaded.embedder.embed(x, batch_size=batch)
            secs = time.perf_counter() - t0
            periods, throttled = _throttled(before, _cpu_stat())
            results[mode].append({"images_per_s": images / secs, "throttled_periods": periods,
                                  "throttled_s": throttled})
            print(f"  round {r + 1} {mode:>13} ({modes[mode]} threads): "
                  f"{images / secs:6.2f} images/s, throttled {periods} periods / "
                  f"{throttled:.1f} s", flush=True)
    summary = {m: {"threads": modes[m],
                   "images_per_s": statistics.median(v["images_per_s"] for v in rows),
                   "throttled_s": statistics.median(v["throttled_s"] for v in rows)}
               for m, rows in results.items()}
    ratio = summary["predictor"]["images_per_s"] / summary["torch default"]["images_per_s"]
    print(f"medians of {rounds}: torch default {summary['torch default']['images_per_s']:.2f} "
          f"images/s ({torch_default} threads), predictor "
          f"{summary['predictor']['images_per_s']:.2f} images/s ({ours} threads): "
          f"{ratio:.2f}x", flush=True)
    return {"summary": summary, "ratio": ratio}


def run_in_docker(args: argparse.Namespace) -> int:
    """Build the test checkpoint here, then run this module inside ``args.docker``."""
    s = read_settings()
    choose_weights(s, print)
    # The image runs as uid 1000; a bind mount keeps host permissions, and safetensors
    # writes its files 0600.
    for path in [s.weights_dir, *s.weights_dir.rglob("*")]:
        path.chmod(path.stat().st_mode | (0o555 if path.is_dir() else 0o444))
    limits = []
    if args.cpus:
        limits += ["--cpus", args.cpus]
    if args.cpuset_cpus:
        limits += ["--cpuset-cpus", args.cpuset_cpus]
    env = ["-e", "DEVICE=cpu", "-e", f"MODEL_TYPE={s.model_type}",
           "-e", f"PRECISION={s.precision_requested}", "-e", "MODEL_CACHE_DIR=/weights",
           "-e", "PYTHONPATH=/src", "-e", "PYTHONDONTWRITEBYTECODE=1"]
    if os.environ.get("TORCH_THREADS"):
        env += ["-e", f"TORCH_THREADS={os.environ['TORCH_THREADS']}"]
    cmd = ["docker", "run", "--rm", *limits, *env, "--read-only", "--tmpfs", "/tmp",
           "-v", f"{REPO}:/src:ro", "-v", f"{s.weights_dir}:/weights:ro", "-w", "/src",
           "--entrypoint", "python", args.docker, "-m", "bench.studies.cpu_threads",
           "--rounds", str(args.rounds), "--images", str(args.images),
           "--batch", str(args.batch)]
    print(f"docker run {' '.join(limits)} {args.docker}", flush=True)
    return subprocess.run(cmd, check=False).returncode


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.studies.cpu_threads", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=4, help="alternating rounds [4]")
    p.add_argument("--images", type=int, default=32, help="images per round [32]")
    p.add_argument("--batch", type=int, default=16,
                   help="images per forward pass [16, the predictor's CPU_BATCH_SIZE]")
    p.add_argument("--docker", metavar="IMAGE", help="run inside this image (predictor image)")
    p.add_argument("--cpus", help="with --docker: docker run --cpus")
    p.add_argument("--cpuset-cpus", help="with --docker: docker run --cpuset-cpus")
    args = p.parse_args(argv)
    os.environ["DEVICE"] = "cpu"
    if args.docker:
        return run_in_docker(args)
    m = machine_info()
    print(f"machine: {m['cpu']}, {m['cores']} cores seen, {m['usable_cores']} in the "
          f"affinity", flush=True)
    measure(args.rounds, args.images, args.batch)
    print(reproduce("bench.studies.cpu_threads", argv if argv is not None else sys.argv[1:]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

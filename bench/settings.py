"""What a benchmark runs with: the service's settings as the service reads them from the
environment, the weights (the real ones when MODEL_CACHE_DIR holds them, else the
random-weight test checkpoint), and the line that reruns it. Shared by every ``bench``
script."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "bench" / "results"
WEIGHTS_DIR = Path(os.environ.get("BENCH_WEIGHTS_DIR") or REPO_ROOT / ".cache" / "bench-weights")
PIPELINE_CHUNK = 16  # compared against one call when the service runs with 0
RANDOM_WEIGHTS_NOTE = "random weights: same cost as the real ones, distances meaningless"


def env_or(name: str, default: str) -> str:
    """``$name``, or ``default`` when unset or blank."""
    value = os.environ.get(name, "").strip()
    return value or default


def reproduce(module: str, argv: Sequence[str] | None) -> str:
    """The line that reruns ``python -m module`` as it was run: the service's environment
    settings that were set, then the arguments given (``sys.argv`` when ``argv`` is None)."""
    env = [f"{k}={os.environ[k]}" for k in ("DEVICE", "PRECISION", "MODEL_TYPE",
                                              "BATCH_SIZE_LIMIT") if k in os.environ]
    args = list(sys.argv[1:] if argv is None else argv)
    return "reproduce: " + " ".join([*env, "python", "-m", module, *args])


def int_list(text: str) -> list[int]:
    """``1,10,30`` as a list of positive integers (an argparse type)."""
    values = [int(v) for v in text.replace(" ", "").split(",") if v]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers like 1,10,30, got {text!r}")
    return values


@dataclass
class Settings:
    """What the service and upstream run with (from the environment, as the service reads it)."""

    model_type: str
    device_requested: str
    device: str
    precision_requested: str
    precision: str
    batch_size_limit: int
    cache_dir: Path
    weights: str = ""  # "real" or "random"
    weights_dir: Path = Path()

    def service_env(self, max_pairs: int) -> dict[str, str]:
        env = {"MODEL_TYPE": self.model_type, "DEVICE": self.device_requested,
               "PRECISION": self.precision_requested,
               "BATCH_SIZE_LIMIT": str(self.batch_size_limit),
               "MODEL_CACHE_DIR": str(self.weights_dir)}
        # A 100-pair request takes a minute on 2 busy CPU cores: do not let the service's
        # 120 s default deadline for one predictor call end the measurement.
        env["PREDICTOR_TIMEOUT"] = env_or("PREDICTOR_TIMEOUT", "900")
        current = int(os.environ.get("MAX_PAIRS_PER_REQUEST", "128") or 128)
        if max_pairs > current:
            env["MAX_PAIRS_PER_REQUEST"] = str(max_pairs)
        return env


def read_settings() -> Settings:
    import torch

    from predictor.model import resolve_device, resolve_dtype

    model_type = env_or("MODEL_TYPE", "dino_vitb16")
    requested = env_or("DEVICE", "cuda")
    # as `make run` does: DEVICE=cuda without a GPU benchmarks the CPU, and says so
    device = resolve_device(requested, fallback=True)
    precision = env_or("PRECISION", "auto")
    dtype = resolve_dtype(precision, device)
    names = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
    return Settings(model_type=model_type, device_requested=requested, device=str(device),
                    precision_requested=precision, precision=names[dtype],
                    batch_size_limit=int(env_or("BATCH_SIZE_LIMIT", "64")),
                    cache_dir=Path(env_or("MODEL_CACHE_DIR", "models")).expanduser().resolve())


def choose_weights(s: Settings, log: Callable[[str], None]) -> None:
    """Real weights when MODEL_CACHE_DIR is complete, else the random test checkpoint."""
    from predictor.checkpoint import WeightsError, check_files
    from predictor.layout import get_variant

    spec = get_variant(s.model_type)
    try:
        check_files(s.cache_dir, spec)
        s.weights, s.weights_dir = "real", s.cache_dir
        log(f"weights: {s.cache_dir} (complete cache for {s.model_type})")
        return
    except WeightsError:
        pass
    target = WEIGHTS_DIR / s.model_type
    try:
        check_files(target, spec)
        log(f"weights: no complete cache in {s.cache_dir}; using {target} ({RANDOM_WEIGHTS_NOTE})")
    except WeightsError:
        from testing.checkpoints import build_upstream_cache

        log(f"weights: no complete cache in {s.cache_dir}; building the random-weight test "
            f"checkpoint once into {target} ({RANDOM_WEIGHTS_NOTE})")
        tmp = target.with_name(f"{s.model_type}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        build_upstream_cache(tmp, s.model_type)
        try:  # another run may have finished the same build meanwhile: keep that one
            check_files(target, spec)
            shutil.rmtree(tmp, ignore_errors=True)
        except WeightsError:
            shutil.rmtree(target, ignore_errors=True)
            tmp.rename(target)
    s.weights, s.weights_dir = "random", target


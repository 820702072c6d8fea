"""``python -m bench.studies.compile``: does torch.compile (and, on CUDA, CUDA graphs) beat eager?

The predictor runs its model eagerly. This measures, on the device and precision the
service would use (DEVICE, PRECISION, MODEL_TYPE as for the service; the random-weight
test checkpoint unless MODEL_CACHE_DIR holds real weights), the model's images/s at fixed
batch sizes:

- ``eager``: what the predictor does;
- ``compile``: ``torch.compile(model, dynamic=False)`` (inductor), a fresh graph per batch
  size;
- ``cudagraphs`` (CUDA only): ``torch.compile(mode="reduce-overhead")``, which replays CUDA
  graphs (a fixed-size bucket per batch size);
- on CUDA, also a host-to-device copy of a batch from pageable and from pinned memory.

It prints, per mode and batch size, images/s, the first call's time (compilation), and the
largest difference from eager's embeddings. Nothing here is used by the service: an option
earns a place there only if these figures show that it helps.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from bench.machine import machine_info
from bench.settings import Settings, choose_weights, int_list, read_settings, reproduce


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable[[], Any], device: torch.device, repeats: int) -> tuple[float, Any]:
    """Median seconds of ``fn`` over ``repeats`` calls, and its last result."""
    out, times = None, []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def measure(s: Settings, batches: list[int], repeats: int, modes: list[str]
            ) -> list[dict[str, Any]]:
    from predictor.model import load_model

    loaded = load_model(cache_dir=s.weights_dir, variant=s.model_type, device=s.device,
                        precision=s.precision_requested)
    model, device = loaded.embedder, loaded.device
    gen = torch.Generator().manual_seed(0)
    rows = []
    for mode in modes:
        if mode == "cudagraphs" and device.type != "cuda":
            continue
        for n in batches:
            # A fresh graph per batch size (a bucket): a recompilation for a second shape
            # would otherwise switch to dynamic shapes.
            torch._dynamo.reset()
            fn: Callable[[torch.Tensor], torch.Tensor] = model
            if mode == "compile":
                fn = torch.compile(model, dynamic=False)
            elif mode == "cudagraphs":
                fn = torch.compile(model, mode="reduce-overhead", dynamic=False)
            x = torch.randint(0, 256, (n, 3, 224, 224), dtype=torch.uint8, generator=gen)
            x = x.to(device)
            with torch.inference_mode():
                reference = model(x).float().cpu()
                first, _ = _time(lambda: fn(x), device, 1)  # noqa: B023 (used at once)
                _time(lambda: fn(x), device, 1)  # noqa: B023
                seconds, out = _time(lambda: fn(x), device, repeats)  # noqa: B023
            diff = float((out.float().cpu() - reference).abs().max())
            rows.append({"mode": mode, "batch": n, "images_per_s": n / seconds,
                         "first_call_s": first, "max_abs_diff_vs_eager": diff})
            print(f"  {mode:>10} batch {n:>4}: {n / seconds:8.1f} images/s, first call "
                  f"{first:6.1f} s, max |diff| vs eager {diff:.1e}", flush=True)
    if device.type == "cuda":
        rows += measure_copies(device, max(batches), repeats)
    return rows


def measure_copies(device: torch.device, n: int, repeats: int) -> list[dict[str, Any]]:
    """Host-to-device copy of ``n`` uint8 images: pageable against pinned memory."""
    host = torch.randint(0, 256, (n, 3, 224, 224), dtype=torch.uint8)
    pinned = host.pin_memory()
    rows = []
    for name, src in (("pageable", host), ("pinned", pinned)):
        seconds, _ = _time(lambda: src.to(device, non_blocking=True), device,  # noqa: B023
                           max(repeats, 5))
        rows.append({"mode": f"copy {name}", "batch": n, "images_per_s": n / seconds,
                     "gb_per_s": host.numel() / seconds / 1e9})
        print(f"  copy {name:>8} batch {n:>4}: {host.numel() / seconds / 1e9:6.1f} GB/s",
              flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.studies.compile", description=__doc__)
    p.add_argument("--batches", type=int_list, default=int_list("1,16"),
                   help="batch sizes [1,16; on a GPU try 1,8,32,64]")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per batch size [3]")
    p.add_argument("--modes", default="eager,compile,cudagraphs",
                   help="which of eager, compile, cudagraphs [all; cudagraphs on CUDA only]")
    args = p.parse_args(argv)
    s = read_settings()
    choose_weights(s, print)
    m = machine_info()
    print(f"machine: {m['cpu']}, {m['cores']} cores, torch threads {m['torch_threads']}, "
          f"GPU: {m['gpu'] or 'none'}; device {s.device}, precision {s.precision}, "
          f"{s.model_type}, {s.weights} weights in {s.weights_dir}",
          flush=True)
    measure(s, args.batches, args.repeats, [x.strip() for x in args.modes.split(",")])
    print(reproduce("bench.studies.compile", argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


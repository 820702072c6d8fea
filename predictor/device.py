"""Where the model runs, and how strictly: device checks, the TF32 policy, fatal errors.

Kept apart from the model math so that each decision is a small function tested on the
CPU (``torch.cuda`` stubbed where a test needs a GPU):

- :func:`resolve_device`: ``DEVICE=cuda[:N]`` is honoured or refused at start-up. Without
  a usable GPU, ``DEVICE_FALLBACK=true`` (``make run``) falls back to the CPU with a
  warning; ``false`` (the predictor image, hence the chart's GPU deployments) fails with
  one line naming the NVIDIA driver found and the one torch's CUDA build needs, so that a
  GPU pod never reports ready while serving at CPU speed. An index past the GPU count is
  always an error; the index is made torch's current device.
- :func:`precision_policy`: TF32 and reduced-precision reductions set explicitly per
  precision (``fp32`` is IEEE fp32 everywhere: cuDNN's TF32 is on by default otherwise).
- :func:`is_fatal_device_error`: a CUDA error other than out-of-memory leaves the CUDA
  context unusable ("sticky"): the server goes not-ready and exits on it.
- :func:`attention_backend`: which ``scaled_dot_product_attention`` kernel serves the
  model's shapes, for ``/health``.
"""

from __future__ import annotations

import logging
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

# Minimum NVIDIA driver per CUDA major version of torch's build (NVIDIA's CUDA toolkit
# release notes, "CUDA Toolkit and Corresponding Driver Versions", Linux x86-64).
MIN_DRIVER = {13: "580", 12: "525", 11: "450"}
_PROC_DRIVER = Path("/proc/driver/nvidia/version")


class DeviceError(RuntimeError):
    """DEVICE cannot be honoured: no usable GPU (and no fallback), or no such index."""


def driver_version(proc_file: Path = _PROC_DRIVER) -> str | None:
    """The NVIDIA kernel driver's version, or None where there is none.

    Read from ``/proc/driver/nvidia/version`` (the kernel module's own line; present in
    a container given a GPU), else from ``nvidia-smi``.
    """
    try:
        m = re.search(r"Kernel Module\s+(?:for \S+\s+)?(\d+(?:\.\d+)+)", proc_file.read_text())
        if m:
            return m.group(1)
    except OSError:
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    first = out.stdout.strip().splitlines()[:1]
    return first[0].strip() if out.returncode == 0 and first else None


def driver_needed(cuda_version: str | None = None) -> str:
    """``>= 580`` for torch's CUDA 13 build, and so on; what the driver must be."""
    cuda = cuda_version if cuda_version is not None else torch.version.cuda
    if not cuda:
        return "none (this torch is a CPU-only build: install a CUDA build)"
    major = int(cuda.split(".")[0])
    return f">= {MIN_DRIVER.get(major, '?')} (torch {torch.__version__} is built for CUDA {cuda})"


def _unavailable_reason() -> str:
    """Why CUDA is not usable, as torch says it (``torch.cuda.init`` raises the reason)."""
    if not torch.backends.cuda.is_built():
        return "this torch has no CUDA support"
    try:
        torch.cuda.init()
    except Exception as e:  # "Found no NVIDIA driver", "driver too old (found version ...)"
        return " ".join(str(e).split())[:300]
    return "torch.cuda.is_available() is false"


def resolve_device(requested: str, *, fallback: bool,
                   driver: Callable[[], str | None] = driver_version) -> torch.device:
    """The device to run on, checked; ``cuda:N`` becomes torch's current device.

    Args:
        requested: DEVICE: ``cpu``, ``cuda`` or ``cuda:N``.
        fallback: without a usable GPU, run on the CPU (with a warning) instead of failing.
        driver: how to read the installed driver's version (tests pass their own).

    Raises:
        DeviceError: no usable GPU and no fallback (the message names the driver found
            and the one needed), or ``cuda:N`` past the GPUs present.
    """
    if not requested.startswith("cuda"):
        return torch.device(requested)
    if not torch.cuda.is_available():
        found = driver() or "none"
        msg = (f"DEVICE={requested} but no usable GPU: {_unavailable_reason()}; NVIDIA driver "
               f"found: {found}, needed: {driver_needed()}")
        if not fallback:
            raise DeviceError(msg + ". Fix the node's driver, or set DEVICE=cpu (or "
                              "DEVICE_FALLBACK=true to run on the CPU anyway)")
        log.warning("%s; running on CPU (DEVICE_FALLBACK=true)", msg)
        return torch.device("cpu")
    count = torch.cuda.device_count()
    index = int(requested.split(":", 1)[1]) if ":" in requested else 0
    if index >= count:
        raise DeviceError(f"DEVICE={requested} but this machine has {count} GPU"
                          f"{'s' if count != 1 else ''} (cuda:0 .. cuda:{count - 1}); "
                          f"check DEVICE and the pod's nvidia.com/gpu count")
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


@dataclass(frozen=True)
class PrecisionPolicy:
    """The float policy in force on CUDA (what :func:`precision_policy` set)."""

    matmul_tf32: bool
    cudnn_tf32: bool
    float32_matmul_precision: str
    fp16_reduced_reduction: bool
    bf16_reduced_reduction: bool

    def describe(self) -> str:
        return (f"TF32 matmul {'on' if self.matmul_tf32 else 'off'}, cuDNN TF32 "
                f"{'on' if self.cudnn_tf32 else 'off'}, float32 matmul precision "
                f"{self.float32_matmul_precision}, fp16/bf16 reduced-precision reductions "
                f"{'on' if self.fp16_reduced_reduction else 'off'}/"
                f"{'on' if self.bf16_reduced_reduction else 'off'}")


def precision_policy(dtype: torch.dtype) -> PrecisionPolicy:
    """Set torch's process-wide float policy for a model in ``dtype``; returns it.

    - fp32: IEEE fp32 everywhere: no TF32 in matmuls (``allow_tf32=False``,
      ``set_float32_matmul_precision("highest")``) nor in cuDNN convolutions (the patch
      embedding; cuDNN's TF32 is on by default). What ``PRECISION=fp32`` promises.
    - fp16 / bf16: the weights and activations are half precision; the few fp32 ops left
      (embedding normalisation) stay IEEE as well (TF32 off). Half-precision GEMMs keep
      torch's default of reduced-precision reductions (on: cuBLAS's fast path, within the
      documented fp16/bf16 deviation).

    The flags are global and apply on CPU builds too (where they change nothing).
    """
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = True
    torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = True
    return current_policy()


def current_policy() -> PrecisionPolicy:
    """What torch's flags say now."""
    m = torch.backends.cuda.matmul
    return PrecisionPolicy(
        matmul_tf32=bool(m.allow_tf32), cudnn_tf32=bool(torch.backends.cudnn.allow_tf32),
        float32_matmul_precision=torch.get_float32_matmul_precision(),
        fp16_reduced_reduction=bool(m.allow_fp16_reduced_precision_reduction),
        bf16_reduced_reduction=bool(m.allow_bf16_reduced_precision_reduction))


_FATAL_MARKERS = ("CUDA error", "CUBLAS_STATUS", "cuDNN error", "CUDNN_STATUS",
                  "illegal memory access", "device-side assert", "unspecified launch failure",
                  "CUDA driver", "NVML")


def is_fatal_device_error(error: BaseException) -> bool:
    """A CUDA error after which the process cannot serve again (everything but OOM).

    After an illegal memory access, a device-side assert or a launch failure, the CUDA
    context is broken and every later call fails: only a new process recovers. torch
    raises them as ``torch.AcceleratorError`` (a RuntimeError) or, from cuBLAS/cuDNN, as
    RuntimeErrors naming the library's status.
    """
    if isinstance(error, torch.OutOfMemoryError):
        return False
    accelerator_error = getattr(torch, "AcceleratorError", None)
    if accelerator_error is not None and isinstance(error, accelerator_error):
        return True
    return isinstance(error, RuntimeError) and any(m in str(error) for m in _FATAL_MARKERS)


_BACKENDS = ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH")


def attention_backend(device: torch.device, dtype: torch.dtype, *, tokens: int = 197,
                      heads: int = 12, head_dim: int = 64) -> str:
    """The SDPA kernel the model's attention uses on ``device`` in ``dtype``.

    Tries each backend alone, in torch's default priority order (flash, memory-efficient,
    cuDNN, math), on the model's own shapes and layout (q, k, v as head-transposed views
    of one qkv projection): the first that runs is the one the unrestricted call picks.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    qkv = torch.zeros((1, tokens, 3, heads, head_dim), dtype=dtype, device=device)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    for name in _BACKENDS:
        backend = getattr(SDPBackend, name, None)
        if backend is None:
            continue
        try:
            with sdpa_kernel([backend]):
                F.scaled_dot_product_attention(q, k, v)
        except RuntimeError:
            continue
        return name.lower().removesuffix("_attention")
    return "unknown"


def gpu_name(device: torch.device) -> str | None:
    """The GPU's name (``NVIDIA H100 80GB HBM3``), None on CPU."""
    if device.type != "cuda":
        return None
    return str(torch.cuda.get_device_name(device))

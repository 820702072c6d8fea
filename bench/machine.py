"""The machine a benchmark ran on (CPU, cores usable, memory, GPU, library versions), for
the report: figures mean little without it."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


def machine_info() -> dict[str, Any]:
    import PIL
    import torch

    cpu, flags = platform.processor() or "unknown", ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu in ("unknown", platform.processor()):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = line
    except OSError:
        pass
    mem_gib = None
    try:
        kb = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        mem_gib = round(kb / 2**20, 1)
    except (OSError, IndexError, ValueError):
        pass
    versions: dict[str, str | None] = {
        "python": platform.python_version(), "torch": torch.__version__,
        "pillow": PIL.__version__}
    for name in ("dreamsim", "kserve"):
        try:
            from importlib.metadata import version

            versions[name] = version(name)
        except Exception:
            versions[name] = None
    gpu = None
    if torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(0)
    usable: int | None
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {"cpu": cpu, "cores": os.cpu_count(), "usable_cores": usable,
            "torch_threads": torch.get_num_threads(), "memory_gib": mem_gib,
            "avx512_bf16": " avx512_bf16" in flags, "gpu": gpu,
            "platform": platform.platform(), "versions": versions}


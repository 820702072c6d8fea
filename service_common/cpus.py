"""How many CPUs this process may really use.

``os.cpu_count()`` sees the node's cores, not the container's share: a pod limited to
2 CPUs on a 64-core node would start 64 decode threads (transformer) or 64 torch
threads (predictor) and be throttled by the kernel's CFS quota. The answer here is the
process's CPU affinity (``--cpuset-cpus``, Kubernetes' static CPU manager) capped by the
cgroup CPU quota (``--cpus``, a pod's CPU limit), rounded up.

The quota is looked up where the process's own cgroup is (``/proc/self/cgroup``) and in
every cgroup above it, the smallest winning, as the kernel applies them; inside a
container the own cgroup is usually mounted at the root (cgroup namespace or Docker's
bind mount), which is looked at too.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


def usable_cpus(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> int:
    """CPUs this process can use: its CPU affinity, capped by a cgroup CPU quota (a
    container's CPU limit, which ``os.cpu_count()`` does not see), rounded up; at least 1."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)
    quota = cgroup_cpu_quota(cgroup_root, proc_cgroup)
    if quota is not None:
        count = min(count, math.ceil(quota))
    return max(1, count)


def cgroup_cpu_quota(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> float | None:
    """The smallest CPU quota, in CPUs, over this process's cgroup and its ancestors
    (cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``); None when there is none or none can
    be read."""
    quotas = [q for d in _cgroup_dirs(root, proc_cgroup) if (q := _quota_in(d)) is not None]
    return min(quotas) if quotas else None


def _cgroup_dirs(root: Path, proc_cgroup: Path) -> list[Path]:
    """Directories that may hold this process's CPU controller files: its own cgroup and
    each ancestor, under the v2 root and the v1 ``cpu`` mount, plus the mounts' roots."""
    dirs = [root, root / "cpu"]
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return dirs
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        parts = [p for p in path.strip().split("/") if p]
        if controllers == "":
            base = root  # cgroup v2 (unified)
        elif "cpu" in controllers.split(","):
            base = root / "cpu"  # cgroup v1, cpu controller
        else:
            continue
        dirs += [base.joinpath(*parts[:n]) for n in range(len(parts), 0, -1)]
    return dirs


def _quota_in(directory: Path) -> float | None:
    try:
        fields = (directory / "cpu.max").read_text().split()
        return None if fields[0] == "max" else int(fields[0]) / int(fields[1])
    except (OSError, ValueError, IndexError, ZeroDivisionError):
        pass
    try:
        quota = int((directory / "cpu.cfs_quota_us").read_text())
        period = int((directory / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


FAST_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def fast_bf16_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str]:
    """Which of the CPU features that run bf16 matrix work natively (AVX-512 BF16, AMX)
    this CPU has; an empty list means torch emulates bf16 here, slower than fp32."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return []
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return [f for f in FAST_BF16_FLAGS if f in flags]

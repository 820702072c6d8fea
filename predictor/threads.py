"""Torch's CPU threads, sized from the CPUs the predictor may really use.

torch sizes its intra-op pool from the cores it sees, and a container's CPU limit (the
cgroup quota) is not among what it looks at: a predictor limited to 2 CPUs on a 64-core
node would run 64 threads, burn its quota in a fraction of each period and be throttled
by the kernel for the rest. The predictor sets the pool from
:func:`service_common.cpus.usable_cpus` (affinity capped by the quota) unless
``TORCH_THREADS`` or ``OMP_NUM_THREADS`` says otherwise, and keeps the inter-op pool at
one thread: forward passes run one at a time (``predictor.batching``), so nothing forks
work between operators.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from service_common.cpus import CGROUP_ROOT, usable_cpus

log = logging.getLogger("predictor")

INTEROP_THREADS = 1


@dataclass(frozen=True)
class ThreadPlan:
    """Intra-op threads to use (None: leave torch's own choice) and why."""

    intra_op: int | None
    reason: str


def plan_threads(*, torch_threads: int, environ: Mapping[str, str],
                 cgroup_root: Path = CGROUP_ROOT) -> ThreadPlan:
    """Decide the intra-op thread count.

    Args:
        torch_threads: the ``TORCH_THREADS`` setting; 0 means automatic.
        environ: the process environment (``OMP_NUM_THREADS`` is honoured as torch does).
        cgroup_root: where the cgroup CPU controller files are (tests point it elsewhere).
    """
    if torch_threads > 0:
        return ThreadPlan(torch_threads, "TORCH_THREADS")
    if environ.get("OMP_NUM_THREADS", "").strip():
        return ThreadPlan(None, "OMP_NUM_THREADS (torch reads it itself)")
    return ThreadPlan(usable_cpus(cgroup_root),
                      "CPUs usable: affinity capped by the container's CPU limit")


def apply_threads(plan: ThreadPlan) -> int:
    """Set torch's pools from ``plan``; returns the intra-op thread count now in force."""
    if plan.intra_op is not None:
        torch.set_num_threads(plan.intra_op)
    try:
        torch.set_num_interop_threads(INTEROP_THREADS)
    except RuntimeError:  # already set, or inter-op work has started: keep what is there
        pass
    threads = torch.get_num_threads()
    log.info("torch threads: %d intra-op (%s), %d inter-op", threads, plan.reason,
             torch.get_num_interop_threads())
    return threads


def configure_torch_threads(torch_threads: int) -> int:
    """Plan from this process's environment and cgroup, apply, return the count."""
    return apply_threads(plan_threads(torch_threads=torch_threads, environ=os.environ))

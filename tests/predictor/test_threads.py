"""The predictor's torch threads follow the CPUs it may use, not the node's cores."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from predictor.threads import plan_threads
from testing.procs import REPO_ROOT

CPUS = len(os.sched_getaffinity(0))


def _quota(tmp_path: Path, cpus: float) -> Path:
    (tmp_path / "cpu.max").write_text(f"{int(cpus * 100000)} 100000\n")
    return tmp_path


def test_the_container_limit_sizes_the_pool(tmp_path: Path) -> None:
    plan = plan_threads(torch_threads=0, environ={}, cgroup_root=_quota(tmp_path, 1))
    assert plan.intra_op == 1
    assert plan_threads(torch_threads=0, environ={}, cgroup_root=tmp_path / "none").intra_op \
        == CPUS


def test_explicit_settings_win(tmp_path: Path) -> None:
    root = _quota(tmp_path, 1)
    assert plan_threads(torch_threads=6, environ={"OMP_NUM_THREADS": "3"},
                        cgroup_root=root).intra_op == 6
    omp = plan_threads(torch_threads=0, environ={"OMP_NUM_THREADS": "3"}, cgroup_root=root)
    assert omp.intra_op is None and "OMP_NUM_THREADS" in omp.reason


def _threads_in_a_process(env: dict[str, str], cpus: set[int] | None = None) -> tuple[int, int]:
    """(intra-op, inter-op) torch threads of a fresh process that configured itself as the
    predictor does, with the given environment and CPU affinity."""
    code = ("from predictor.threads import configure_torch_threads; import torch; "
            "configure_torch_threads(int(__import__('os').environ.get('TORCH_THREADS', '0')));"
            "print(torch.get_num_threads(), torch.get_num_interop_threads())")
    full_env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS",
                                                                  "TORCH_THREADS")}
    full_env.update(env)
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=full_env, check=True,
        capture_output=True, text=True, timeout=120,
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
    intra, inter = out.stdout.split()
    return int(intra), int(inter)


@pytest.mark.skipif(CPUS < 2, reason="needs 2 CPUs to restrict the process to one")
def test_a_real_process_uses_what_it_is_given() -> None:
    assert _threads_in_a_process({}, cpus={0}) == (1, 1)
    assert _threads_in_a_process({}) == (CPUS, 1)
    assert _threads_in_a_process({"TORCH_THREADS": "3"}, cpus={0}) == (3, 1)
    assert _threads_in_a_process({"OMP_NUM_THREADS": "2"}, cpus={0})[0] == 2


CPU_CGROUP_V1 = Path("/sys/fs/cgroup/cpu")


@pytest.mark.skipif(CPUS < 2 or not os.access(CPU_CGROUP_V1 / "cgroup.procs", os.W_OK),
                    reason="needs 2 CPUs and a writable cgroup v1 cpu controller (root)")
def test_a_real_cgroup_quota_sizes_the_pool() -> None:
    """The case torch gets wrong by itself: a CPU limit (CFS quota) of one CPU, all cores
    in the affinity. A real cgroup made for the test, the process started inside it."""
    group = CPU_CGROUP_V1 / f"image-similarity-test-{os.getpid()}"
    group.mkdir()
    try:
        (group / "cpu.cfs_period_us").write_text("100000")
        (group / "cpu.cfs_quota_us").write_text("100000")

        def enter() -> None:
            (group / "cgroup.procs").write_text(str(os.getpid()))

        code = ("import torch; print(torch.get_num_threads()); "
                "from predictor.threads import configure_torch_threads; "
                "print(configure_torch_threads(0))")
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS",
                                                                 "TORCH_THREADS")}
        out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, check=True,
                             capture_output=True, text=True, timeout=120, preexec_fn=enter)
        torch_default, configured = (int(x) for x in out.stdout.split())
        assert torch_default == CPUS  # torch alone ignores the limit
        assert configured == 1
    finally:
        group.rmdir()

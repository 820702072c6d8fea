"""CPUs a process may use: affinity capped by the container's cgroup CPU quota."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from service_common.cpus import fast_bf16_flags, usable_cpus

AFFINITY = len(os.sched_getaffinity(0))


def _cgroup(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


@pytest.mark.parametrize(("files", "expected"), [
    ({}, AFFINITY),  # no cgroup files: the affinity
    ({"cpu.max": "max 100000\n"}, AFFINITY),  # v2, no limit
    ({"cpu.max": "50000 100000\n"}, 1),  # v2, half a CPU: at least one thread
    ({"cpu.max": "100000 100000\n"}, 1),
    ({"cpu.max": "150000 100000\n"}, min(2, AFFINITY)),  # rounded up, capped by affinity
    ({"cpu.max": "6400000 100000\n"}, AFFINITY),  # a limit above the cores: the cores
    ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),  # v1
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, AFFINITY),
    ({"cpu.max": "garbage"}, AFFINITY),  # unreadable: ignored
])
def test_usable_cpus_honours_the_container_limit(tmp_path: Path, files: dict[str, str],
                                                 expected: int) -> None:
    assert usable_cpus(_cgroup(tmp_path, files)) == expected


def test_the_quota_of_the_own_cgroup_and_its_ancestors(tmp_path: Path) -> None:
    """Without a cgroup namespace the process's cgroup is a sub-directory, named in
    /proc/self/cgroup; the smallest quota on the way up applies."""
    proc = tmp_path / "proc_cgroup"
    proc.write_text("0::/kubepods/pod1/ctr\n")
    _cgroup(tmp_path, {"kubepods/pod1/cpu.max": "300000 100000\n",
                       "kubepods/pod1/ctr/cpu.max": "max 100000\n"})
    assert usable_cpus(tmp_path, proc) == min(3, AFFINITY)
    proc.write_text("4:memory:/x\n3:cpu,cpuacct:/docker/abc\n")
    _cgroup(tmp_path, {"cpu/docker/cpu.cfs_quota_us": "100000\n",
                       "cpu/docker/cpu.cfs_period_us": "100000\n"})
    assert usable_cpus(tmp_path, proc) == 1


def test_fast_bf16_flags(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile\n"
                    "processor\t: 1\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile\n")
    assert fast_bf16_flags(info) == ["avx512_bf16"]
    info.write_text("flags\t\t: fpu avx2 amx_bf16 avx512_bf16\n")
    assert fast_bf16_flags(info) == ["avx512_bf16", "amx_bf16"]
    info.write_text("flags\t\t: fpu avx2\n")
    assert fast_bf16_flags(info) == []
    assert fast_bf16_flags(tmp_path / "missing") == []

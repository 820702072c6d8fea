"""Transformer settings: decode threads follow the CPUs a container may really use."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from transformer.settings import TransformerSettings, usable_cpus

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


def test_decode_workers_default_and_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DECODE_WORKERS", raising=False)
    assert TransformerSettings().decode_workers == usable_cpus()
    monkeypatch.setenv("DECODE_WORKERS", "7")
    assert TransformerSettings().decode_workers == 7

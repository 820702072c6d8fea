"""Transformer settings: decode threads follow the CPUs a container may really use."""

from __future__ import annotations

import pytest

from service_common.cpus import usable_cpus
from transformer.settings import TransformerSettings


def test_decode_workers_default_and_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DECODE_WORKERS", raising=False)
    assert TransformerSettings().decode_workers == usable_cpus()
    monkeypatch.setenv("DECODE_WORKERS", "7")
    assert TransformerSettings().decode_workers == 7

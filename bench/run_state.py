"""What one benchmark run carries through its phases: its arguments, the results as they
come in (a stopped run still reports them), and the time of each phase."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Run:
    """One run: ``phase`` times a step and logs it; ``results`` is what the report reads."""

    args: argparse.Namespace
    results: dict[str, Any] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)

    def log(self, msg: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    def phase(self, name: str, fn: Callable[[], Any]) -> Any:
        self.log(f"{name} ...")
        t0 = time.perf_counter()
        out = fn()
        self.phases[name] = round(time.perf_counter() - t0, 1)
        return out


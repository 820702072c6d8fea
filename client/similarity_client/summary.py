"""The end-of-run summary: what was scored, what failed and why, and the distances."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .models import PairResult


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), ``q`` in [0, 100]."""
    assert values, "percentile of nothing"
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass(frozen=True)
class DistanceStats:
    count: int
    mean: float
    median: float
    p95: float
    min: float
    max: float

    @classmethod
    def of(cls, distances: Sequence[float]) -> DistanceStats | None:
        if not distances:
            return None
        return cls(len(distances), sum(distances) / len(distances), percentile(distances, 50),
                   percentile(distances, 95), min(distances), max(distances))


def distances_of(records: Iterable[dict[str, Any]]) -> list[float]:
    return [float(r["distance"]) for r in records
            if not r.get("error") and isinstance(r.get("distance"), int | float)]


@dataclass
class RunSummary:
    """Counts of one run of the CLI, and the distances over the whole output file."""

    total: int = 0  # pairs in PAIRS
    already_done: int = 0  # found in OUT before this run
    scored: int = 0
    failed: Counter[str] = field(default_factory=Counter)  # reason -> pairs (written)
    not_scored: Counter[str] = field(default_factory=Counter)  # retryable, not written
    examples: dict[str, Any] = field(default_factory=dict)  # reason -> a pair_id
    wall_s: float = 0.0
    interrupted: bool = False
    stats: DistanceStats | None = None
    errors_in_out: int = 0  # pairs of PAIRS with an error line in OUT (this run or before)

    def add(self, result: PairResult) -> None:
        if result.ok:
            self.scored += 1
            return
        reason = f"{result.field}: {result.error}" if result.field else str(result.error)
        (self.not_scored if result.retryable else self.failed)[reason] += 1
        self.examples.setdefault(reason, result.pair_id)

    @property
    def missing(self) -> int:
        return self.total - self.already_done - self.scored - sum(self.failed.values())

    def format(self, *, out: str, max_reasons: int = 8) -> str:
        done = self.scored + sum(self.failed.values())
        rate = done / self.wall_s if self.wall_s > 0 else 0.0
        lines = [("interrupted" if self.interrupted else "done")
                 + f" in {self.wall_s:.1f} s: {self.scored} pair(s) scored, "
                 f"{sum(self.failed.values())} failed ({rate:.1f} pairs/s)"]
        if self.already_done:
            earlier = max(0, self.errors_in_out - sum(self.failed.values()))
            lines.append(f"  {self.already_done} pair(s) were already in {out} (resumed)"
                         + (f", {earlier} of them error lines" if earlier else ""))
        for title, counter in (("failed (written as error lines)", self.failed),
                               ("not scored (service unavailable; run again to retry)",
                                self.not_scored)):
            if not counter:
                continue
            lines.append(f"  {title}:")
            for reason, n in counter.most_common(max_reasons):
                lines.append(f"    {n} x {reason}  (e.g. pair {self.examples[reason]!r})")
            if len(counter) > max_reasons:
                lines.append(f"    ... and {len(counter) - max_reasons} other reason(s)")
        if self.missing > 0:
            lines.append(f"  {self.missing} pair(s) still missing from {out}: run the same "
                         "command again to resume")
        if self.errors_in_out:
            lines.append(f"  {self.errors_in_out} pair(s) in {out} have an error line, not a "
                         "score: fix their inputs and run again with --retry-errors")
        s = self.stats
        if s is not None:
            lines.append(f"  distance over {s.count} scored pair(s) in {out}: mean {s.mean:.4f}, "
                         f"median {s.median:.4f}, p95 {s.p95:.4f}, "
                         f"min {s.min:.4f}, max {s.max:.4f}")
        return "\n".join(lines)

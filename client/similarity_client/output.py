"""The output file: one line per pair, JSONL or CSV by extension, safe to resume.

Each result is written as one whole line and flushed at once, so a run stopped by Ctrl-C
leaves a valid file, and a run killed in the middle of a write leaves at most a partial
last line, which the next run cuts off before appending. Opening an existing file reads the
``pair_id`` of every line: those pairs are not scored again, so no pair ever gets two
lines. The file is fsynced when the run ends (and every few seconds while it runs).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from pathlib import Path
from typing import Any

from .models import PairResult

CSV_COLUMNS = ("pair_id", "reference", "generated", "distance", "similarity", "error", "field")
_JSONL_SUFFIXES = (".jsonl", ".ndjson")
FSYNC_EVERY_S = 5.0


class OutputError(Exception):
    """The output file cannot be used (wrong extension, or content this tool did not write)."""


def output_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in _JSONL_SUFFIXES:
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    raise OutputError(f"{path}: OUT must end in .jsonl (one JSON object per line) or .csv")


def _repair_tail(path: Path) -> int:
    """Cut a partial last line (a kill in the middle of a write); returns bytes removed."""
    size = path.stat().st_size
    if size == 0:
        return 0
    with path.open("rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return 0
        # Walk back to the last newline (files can be large: read blocks from the end).
        pos, block = size, 65536
        while pos > 0:
            start = max(0, pos - block)
            f.seek(start)
            data = f.read(pos - start)
            nl = data.rfind(b"\n")
            if nl >= 0:
                keep = start + nl + 1
                break
            pos = start
        else:
            keep = 0
        f.truncate(keep)
        return size - keep


def _float(value: str) -> float | None:
    return float(value) if value not in ("", None) else None


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every line of an output file as a dict (``distance``/``similarity`` as floats).

    Raises:
        OutputError: a line that is not what this tool writes.
    """
    fmt = output_format(path)
    records: list[dict[str, Any]] = []
    record: dict[str, Any]
    if not path.exists():
        return records
    if fmt == "jsonl":
        with path.open(encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    if not line.endswith("\n"):  # a partial last line: not a result yet
                        break
                    raise OutputError(f"{path}, line {line_no}: not valid JSON; not a file "
                                      "this tool wrote? (move it away or pick another OUT)"
                                      ) from None
                if not isinstance(record, dict) or "pair_id" not in record:
                    raise OutputError(f"{path}, line {line_no}: no pair_id")
                records.append(record)
        return records
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None:
            return records
        if tuple(reader.fieldnames) != CSV_COLUMNS:
            raise OutputError(f"{path}: the header is not {','.join(CSV_COLUMNS)}; not a file "
                              "this tool wrote?")
        for row in reader:
            if None in row or any(v is None for v in row.values()):
                continue  # a partial last line
            record = dict(row)
            record["distance"] = _float(row["distance"])
            record["similarity"] = _float(row["similarity"])
            if not row["error"]:
                del record["error"], record["field"]
            records.append(record)
    return records


class ResultWriter:
    """Appends results to ``path``; knows which ``pair_id``s are already there.

    Args:
        path: the output file (``.jsonl`` or ``.csv``); created if missing.
        retry_errors: drop the existing ``error`` lines first, so those pairs are scored
            again (the file is rewritten atomically).
    """

    def __init__(self, path: Path, *, retry_errors: bool = False) -> None:
        self.path = path
        self.format = output_format(path)
        self.repaired_bytes = 0
        if path.exists():
            self.repaired_bytes = _repair_tail(path)
        records = read_records(path)
        self.dropped_errors = 0
        if retry_errors:
            kept = [r for r in records if not r.get("error")]
            self.dropped_errors = len(records) - len(kept)
            if self.dropped_errors:
                self._rewrite(kept)
                records = kept
        self.done: set[str] = {str(r["pair_id"]) for r in records}
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("a", encoding="utf-8", newline="")
        self._synced = time.monotonic()
        if self.format == "csv" and self._file.tell() == 0:
            self._write_line(self._csv_line(dict(zip(CSV_COLUMNS, CSV_COLUMNS, strict=True))))

    def _rewrite(self, records: list[dict[str, Any]]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w", encoding="utf-8", newline="") as f:
            if self.format == "csv":
                f.write(self._csv_line(dict(zip(CSV_COLUMNS, CSV_COLUMNS, strict=True))))
            for record in records:
                f.write(self._line(record))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    @staticmethod
    def _csv_line(record: dict[str, Any]) -> str:
        buf = io.StringIO()
        row = []
        for key in CSV_COLUMNS:
            value = record.get(key)
            row.append("" if value is None else repr(value) if isinstance(value, float)
                       else str(value))
        csv.writer(buf, lineterminator="\n").writerow(row)
        return buf.getvalue()

    def _line(self, record: dict[str, Any]) -> str:
        if self.format == "csv":
            return self._csv_line(record)
        for key in ("distance", "similarity"):
            value = record.get(key)
            if isinstance(value, float) and not math.isfinite(value):
                record = {**record, key: None}
        return json.dumps(record, ensure_ascii=False) + "\n"

    def _write_line(self, line: str) -> None:
        self._file.write(line)  # one whole line per write, flushed: never half a result
        self._file.flush()
        if time.monotonic() - self._synced > FSYNC_EVERY_S:
            os.fsync(self._file.fileno())
            self._synced = time.monotonic()

    def write(self, result: PairResult) -> None:
        key = str(result.pair_id)
        assert key not in self.done, f"pair_id {result.pair_id!r} is already in {self.path}"
        self._write_line(self._line(result.record()))
        self.done.add(key)

    def close(self) -> None:
        if self._file.closed:
            return
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""Reading a set of images: a folder, a CSV/JSONL list, or a Parquet file of paths/URLs.

Each image gets an ``id`` (unique in its set): the path relative to the folder, or the
list's ``id`` column (default: the row's position). Paths in a list are relative to the
list's file; http(s) URLs and data URIs are kept as they are (the service fetches them).
A list names its images in a column ``image`` (or ``path``, ``url``, ``reference``,
``generated``: the first one present).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .extras import require
from .pairs import IMAGE_SUFFIXES, PairsError, _resolve

IMAGE_KEYS = ("image", "path", "url", "reference", "generated")


@dataclass(frozen=True)
class ImageRef:
    """One image of a set: its id and where it is (a path, URL or data URI)."""

    id: str
    source: str


def _from_rows(rows: list[dict[str, Any]], where: Path) -> list[ImageRef]:
    out = []
    for i, row in enumerate(rows):
        value = next((row[k] for k in IMAGE_KEYS
                      if isinstance(row.get(k), str) and row[k].strip()), None)
        if value is None:
            raise PairsError(f"{where}, row {i}: no image (a column named one of "
                             f"{', '.join(IMAGE_KEYS)} with a path or URL)")
        image_id = row.get("id")
        out.append(ImageRef(str(i) if image_id in (None, "") else str(image_id),
                            _resolve(value.strip(), where.parent)))
    return out


def _read_list(path: Path) -> list[ImageRef]:
    suffix = path.suffix.lower()
    rows: list[dict[str, Any]] = []
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            if not any(k in (reader.fieldnames or []) for k in IMAGE_KEYS):
                raise PairsError(f"{path}: the header must name an image column (one of "
                                 f"{', '.join(IMAGE_KEYS)}); found: "
                                 f"{', '.join(reader.fieldnames or []) or 'nothing'}")
            rows = list(reader)
    elif suffix in (".jsonl", ".ndjson"):
        with path.open(encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as e:
                    raise PairsError(f"{path}, line {line_no}: not valid JSON ({e})") from None
                if isinstance(row, str):
                    row = {"image": row}
                if not isinstance(row, dict):
                    raise PairsError(f"{path}, line {line_no}: expected a JSON object")
                rows.append(row)
    elif suffix == ".parquet":
        pq = require("pyarrow.parquet", f"reading {path.name}")
        table = pq.read_table(path)
        columns = [c for c in ("id", *IMAGE_KEYS) if c in table.column_names]
        if not any(c in IMAGE_KEYS for c in columns):
            raise PairsError(f"{path}: no image column (one of {', '.join(IMAGE_KEYS)}); "
                             f"found: {', '.join(table.column_names)}")
        rows = table.select(columns).to_pylist()
    else:
        raise PairsError(f"{path}: expected a folder, or a .csv, .jsonl or .parquet list")
    return _from_rows(rows, path)


def read_images(source: Path) -> list[ImageRef]:
    """The images of one side of ``nearest``/``compare``.

    Raises:
        PairsError: missing, unreadable or malformed, or an id used twice.
    """
    if source.is_dir():
        images = [ImageRef(p.relative_to(source).as_posix(), str(p))
                  for p in sorted(source.rglob("*"))
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not any(part.startswith(".") for part in p.relative_to(source).parts)]
    elif source.is_file():
        images = _read_list(source)
    else:
        raise PairsError(f"not found: {source}")
    seen: set[str] = set()
    for image in images:
        if image.id in seen:
            raise PairsError(f"{source}: id {image.id!r} is used twice (ids must be unique: "
                             "results and resuming rely on them)")
        seen.add(image.id)
    return images

"""Reading the pairs to score: a CSV or JSONL file, or two folders matched by file name.

Paths in a file are relative to that file (so a data set and its pair list move together);
http(s) URLs and data URIs are kept as they are. Every pair needs a ``pair_id`` that is
unique in the set, because resuming finds what is already done by ``pair_id``: a missing
one defaults to the row's position (0-based) in a file, and to the file name's stem for
folders.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from .inputs import is_passthrough
from .models import Pair

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
_REFERENCE_KEYS = ("reference", "reference_image")
_GENERATED_KEYS = ("generated", "generated_image")


class PairsError(Exception):
    """The pairs cannot be read (the message says where and why)."""


@dataclass(frozen=True)
class PairSet:
    pairs: list[Pair]
    warnings: list[str]


def _resolve(value: str, base: Path) -> str:
    if is_passthrough(value):
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else base / path)


def _row_pair(row: dict[str, object], index: int, where: str, base: Path) -> Pair:
    def pick(keys: tuple[str, ...]) -> str:
        for key in keys:
            value = row.get(key)
            if isinstance(value, str) and value.strip():
                return value.strip()
        raise PairsError(f"{where}: no '{keys[0]}' (a path or URL)")

    pair_id = row.get("pair_id")
    if pair_id is None or pair_id == "":
        pair_id = index
    elif isinstance(pair_id, bool) or not isinstance(pair_id, str | int):
        raise PairsError(f"{where}: pair_id must be a string or an integer, not {pair_id!r}")
    return Pair(_resolve(pick(_REFERENCE_KEYS), base), _resolve(pick(_GENERATED_KEYS), base),
                pair_id)


def read_csv(path: Path) -> list[Pair]:
    """Columns ``reference``, ``generated`` and optionally ``pair_id`` (header required)."""
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        if not any(k in fields for k in _REFERENCE_KEYS) or not any(
                k in fields for k in _GENERATED_KEYS):
            raise PairsError(f"{path}: the header must name 'reference' and 'generated' "
                             f"columns (found: {', '.join(fields) or 'nothing'})")
        pairs = []
        for i, row in enumerate(reader):
            where = f"{path}, line {reader.line_num}"
            if None in row:
                raise PairsError(f"{where}: more values than the header has columns (quote "
                                 'values that contain commas: "data:image/png;base64,...")')
            pairs.append(_row_pair(row, i, where, path.parent))
        return pairs


def read_jsonl(path: Path) -> list[Pair]:
    """One JSON object per line: ``reference``, ``generated``, optional ``pair_id``."""
    pairs: list[Pair] = []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {line_no}"
            try:
                row = json.loads(line)
            except ValueError as e:
                raise PairsError(f"{where}: not valid JSON ({e})") from None
            if not isinstance(row, dict):
                raise PairsError(f"{where}: expected a JSON object")
            pairs.append(_row_pair(row, len(pairs), where, path.parent))
    return pairs


def _images_by_stem(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file() or (
                path.suffix.lower() not in IMAGE_SUFFIXES):
            continue
        if path.stem in found:
            raise PairsError(f"{folder}: {found[path.stem].name} and {path.name} have the same "
                             "name: cannot tell which one to match")
        found[path.stem] = path
    return found


def read_folders(reference_dir: Path, generated_dir: Path) -> PairSet:
    """Images in two folders paired by file name (the extension may differ: ``001.png``
    with ``001.jpg``); ``pair_id`` is the name without extension."""
    refs, gens = _images_by_stem(reference_dir), _images_by_stem(generated_dir)
    warnings = []
    for folder, mine, other in ((reference_dir, refs, gens), (generated_dir, gens, refs)):
        alone = sorted(set(mine) - set(other))
        if alone:
            shown = ", ".join(mine[s].name for s in alone[:5])
            warnings.append(f"{len(alone)} image(s) in {folder} have no match and are skipped: "
                            f"{shown}{', ...' if len(alone) > 5 else ''}")
    pairs = [Pair(str(refs[s]), str(gens[s]), s) for s in sorted(set(refs) & set(gens))]
    return PairSet(pairs, warnings)


def read_pairs(sources: list[Path]) -> PairSet:
    """The pairs named on the command line: one CSV/JSONL file, or two folders.

    Raises:
        PairsError: unreadable, malformed, or a ``pair_id`` used twice.
    """
    if len(sources) == 2 and all(s.is_dir() for s in sources):
        result = read_folders(*sources)
    elif len(sources) == 1 and sources[0].is_file():
        path = sources[0]
        suffix = path.suffix.lower()
        if suffix == ".csv":
            pairs = read_csv(path)
        elif suffix in (".jsonl", ".ndjson", ".json"):
            pairs = read_jsonl(path)
        else:
            raise PairsError(f"{path}: expected a .csv or .jsonl file")
        result = PairSet(pairs, [])
    else:
        missing = [str(s) for s in sources if not s.exists()]
        if missing:
            raise PairsError(f"not found: {', '.join(missing)}")
        raise PairsError("PAIRS is one .csv/.jsonl file, or two folders (reference images, "
                         "generated images) matched by file name")
    seen: dict[str, int] = {}
    for i, pair in enumerate(result.pairs):
        key = str(pair.pair_id)
        if key in seen:
            raise PairsError(f"pair_id {pair.pair_id!r} is used by pairs {seen[key]} and {i}: "
                             "pair ids must be unique (resuming relies on them)")
        seen[key] = i
    return result

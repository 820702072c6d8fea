"""The upstream release zip of a variant: verified, unpacked, its result checked.

``dreamsim.model.download_weights`` (dreamsim 0.2.1) unzips the same archive into the
cache dir and checks the same list of names (``Variant.release_files``); here the archive
is verified first (CRCs, member names, contents) and removed once unpacked.
"""

from __future__ import annotations

import json
import sys
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any

import httpx

from predictor.layout import ADAPTER_WEIGHT_FILES, Variant

from .download import download, part_path
from .errors import FetchError, reject

LORA_CONFIG_KEYS = ("r", "lora_alpha", "target_modules")


def _unsafe_member(name: str) -> bool:
    path = PurePosixPath(name.replace("\\", "/"))
    return path.is_absolute() or ".." in path.parts or (name[1:2] == ":")


def _has_member(names: set[str], wanted: str) -> bool:
    """Whether the archive holds ``wanted`` as a file or as a folder with contents."""
    return wanted in names or any(n.startswith(wanted.rstrip("/") + "/") for n in names)


def verify_archive(path: Path, variant: Variant) -> None:
    """Check the release zip: readable, CRCs good, safe member names, expected contents.

    Args:
        path: the zip (or its ``.part``).
        variant: what it should contain.

    Raises:
        FetchError: describing the first problem; ``path`` is removed.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
            names = archive.namelist()
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
        raise reject(path, f"not a readable zip archive ({exc})") from None
    if bad is not None:
        raise reject(path, f"corrupt archive: bad CRC in member {bad!r}")
    unsafe = [n for n in names if _unsafe_member(n)]
    if unsafe:
        raise reject(path, f"refusing archive with member(s) outside the cache dir: {unsafe}")
    members, lora = set(names), variant.lora_dir
    wanted = [*variant.release_files, f"{lora}/adapter_config.json"]
    missing = [w for w in wanted if not _has_member(members, w)]
    if not any(_has_member(members, f"{lora}/{w}") for w in ADAPTER_WEIGHT_FILES):
        missing.append(f"{lora}/{' or '.join(ADAPTER_WEIGHT_FILES)}")
    if missing:
        raise reject(path, f"archive lacks {', '.join(missing)}")


def extract_archive(path: Path, cache_dir: Path) -> None:
    """Unpack ``path`` into ``cache_dir``, refusing members that would land outside it."""
    root = cache_dir.resolve()
    with zipfile.ZipFile(path) as archive:
        for member in archive.infolist():
            target = (root / member.filename).resolve()
            if target != root and root not in target.parents:
                raise reject(path, f"member {member.filename!r} would land outside {root}")
            archive.extract(member, root)


def check_release(cache_dir: Path, variant: Variant) -> None:
    """Check what the release zip left in ``cache_dir``.

    Args:
        cache_dir: the cache dir.
        variant: the variant whose files to check.

    Raises:
        FetchError: naming the missing or broken file.
    """
    missing = [f for f in variant.release_files if not (cache_dir / f).exists()]
    if missing:
        raise FetchError(f"missing in {cache_dir}: {', '.join(missing)}")
    lora = cache_dir / variant.lora_dir
    if not any((lora / w).is_file() for w in ADAPTER_WEIGHT_FILES):
        raise FetchError(f"{lora} has none of {', '.join(ADAPTER_WEIGHT_FILES)}")
    _check_adapter_config(lora / "adapter_config.json")


def _check_adapter_config(path: Path) -> None:
    try:
        config: Any = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FetchError(f"{path} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FetchError(f"{path} is not valid JSON: {exc}") from None
    absent = [k for k in LORA_CONFIG_KEYS if not isinstance(config, dict) or k not in config]
    if absent:
        raise FetchError(f"{path} lacks {', '.join(absent)}")


def release_present(cache_dir: Path, variant: Variant) -> bool:
    """Whether the release zip's files are in ``cache_dir`` and pass ``check_release``."""
    try:
        check_release(cache_dir, variant)
    except FetchError:
        return False
    return True


def fetch_release(client: httpx.Client, variant: Variant, cache_dir: Path, url: str,
                  force: bool, *, progress: bool = True) -> None:
    """Download, verify and unpack the release zip unless its files are already present.

    Args:
        client: the HTTP client.
        variant: the variant to fetch.
        cache_dir: where to unpack.
        url: the release zip URL.
        force: fetch even if present.
        progress: print download progress to stderr.

    Raises:
        FetchError: on any failure; a file that failed verification has been removed.
    """
    if not force and release_present(cache_dir, variant):
        print(f"already present: {', '.join(variant.release_files)} in {cache_dir}")
        return
    zip_name = PurePosixPath(httpx.URL(url).path).name or f"dreamsim_{variant.name}.zip"
    zip_path = cache_dir / zip_name
    if force:
        part_path(zip_path).unlink(missing_ok=True)
        zip_path.unlink(missing_ok=True)
    if zip_path.exists():  # left behind only when unpacking was interrupted
        try:
            verify_archive(zip_path, variant)
        except FetchError as exc:
            print(exc, file=sys.stderr)
    if not zip_path.exists():
        part = download(client, url, zip_path, f"unpack it into {cache_dir}", progress=progress)
        verify_archive(part, variant)
        part.replace(zip_path)
    extract_archive(zip_path, cache_dir)
    try:
        check_release(cache_dir, variant)
    except FetchError as exc:
        raise reject(zip_path, f"unpacked, but {exc}") from None
    # Unpacked and checked: the archive would only double the disk (and image) size.
    zip_path.unlink()
    print(f"unpacked {zip_path.name} into {cache_dir}")

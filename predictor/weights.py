"""Fetch the official DreamSim weights into a cache dir, in the upstream layout.

Does what ``dreamsim.model.download_weights`` (dreamsim 0.2.1) and torch.hub do on first
use, as a separate step: the release zip of the variant is unpacked into the cache dir and
the DINO ViT-B/16 backbone lands where torch.hub would put it
(``predictor.layout.DINO_BACKBONE_FILE``). Unlike upstream, downloads resume after an
interruption (HTTP ``Range``), everything is verified before it counts as present, and a
file that fails verification is removed so the next run fetches it again.

Usage::

    python -m predictor.weights --model-type dino_vitb16 --cache-dir /app/models
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import shlex
import sys
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import httpx
import torch

from predictor.layout import (
    ADAPTER_WEIGHT_FILES,
    DINO_BACKBONE_FILE,
    DINO_BACKBONE_URL,
    VARIANTS,
    Variant,
    get_variant,
)

PROGRESS_STEPS = 10
# Without a Content-Length there is no percentage; report every this many bytes instead.
PROGRESS_UNKNOWN_TOTAL_EVERY = 64 << 20
TIMEOUT = httpx.Timeout(60.0, connect=15.0)
LORA_CONFIG_KEYS = ("r", "lora_alpha", "target_modules")
# Keys and shapes of the DINO ViT-B/16 state dict that identify it (768 wide, 12 blocks,
# 16x16 patches); a ViT-S or a training checkpoint fails here.
BACKBONE_EXPECTED_SHAPES: dict[str, tuple[int, ...] | None] = {
    "cls_token": None,
    "pos_embed": None,
    "patch_embed.proj.weight": (768, 3, 16, 16),
    "blocks.11.attn.qkv.weight": (2304, 768),
}
README_HINT = "see README 'Getting the weights'"


class FetchError(Exception):
    """An expected failure: reported as one message and exit code 1, no traceback."""


def fetch_command(model_type: str, cache_dir: str) -> str:
    """The shell command that fetches the weights of ``model_type`` into ``cache_dir``.

    Args:
        model_type: a ``MODEL_TYPE`` value (``dino_vitb16`` or ``ensemble``).
        cache_dir: the cache dir the predictor reads.

    Returns:
        A command line, e.g.
        ``python -m predictor.weights --model-type dino_vitb16 --cache-dir /app/models``.
    """
    return (
        f"python -m predictor.weights --model-type {shlex.quote(model_type)} "
        f"--cache-dir {shlex.quote(cache_dir)}"
    )


# ---------------------------------------------------------------------------- download


def part_path(dest: Path) -> Path:
    """Where the download of ``dest`` is kept until it has been verified."""
    return dest.with_name(dest.name + ".part")


def _host(url: str) -> str:
    parsed = httpx.URL(url)
    return f"{parsed.host}:{parsed.port}" if parsed.port else parsed.host


def _unreachable(url: str, exc: Exception, manual_step: str) -> FetchError:
    return FetchError(
        f"could not reach {_host(url)}: {exc or type(exc).__name__}; this machine may have "
        f"no internet access: download {url} elsewhere and {manual_step} ({README_HINT})"
    )


class _Progress:
    """Prints ``name: 40% (x MB / y MB)`` to stderr about every 10%, not every chunk."""

    def __init__(self, name: str, start: int, total: int | None) -> None:
        self.name = name
        self.total = total
        self.next_report = self._next_after(start)

    def _next_after(self, done: int) -> int:
        if self.total:
            step = max(self.total // PROGRESS_STEPS, 1)
        else:
            step = PROGRESS_UNKNOWN_TOTAL_EVERY
        return (done // step + 1) * step

    def update(self, done: int) -> None:
        if done < self.next_report and done != self.total:
            return
        if self.total:
            print(
                f"{self.name}: {100 * done // self.total}% "
                f"({done / 1e6:.1f} MB / {self.total / 1e6:.1f} MB)",
                file=sys.stderr,
            )
        else:
            print(f"{self.name}: {done / 1e6:.1f} MB", file=sys.stderr)
        self.next_report = self._next_after(done)


def _content_range_start(response: httpx.Response) -> int | None:
    """Start offset of a ``Content-Range: bytes a-b/n`` header, None if absent or odd."""
    value = response.headers.get("content-range", "")
    unit, _, spec = value.partition(" ")
    start, _, _ = spec.partition("-")
    return int(start) if unit == "bytes" and start.isdigit() else None


def _total_size(response: httpx.Response, offset: int) -> int | None:
    length = response.headers.get("content-length")
    return offset + int(length) if length and length.isdigit() else None


def download(client: httpx.Client, url: str, dest: Path, manual_step: str) -> Path:
    """Download ``url`` into ``dest``'s ``.part`` file, resuming a previous attempt.

    An existing ``.part`` is continued with ``Range: bytes=<size>-``: on 206 the body is
    appended, on 200 (server ignores ranges) the download starts over, on 416 the part is
    taken as complete (the caller verifies it).

    Args:
        client: the HTTP client (follows redirects).
        url: what to download.
        dest: final path; the data goes to ``dest`` + ``.part``.
        manual_step: how to place the file by hand, for the no-network message.

    Returns:
        The ``.part`` path, complete as far as HTTP can tell, not yet verified.

    Raises:
        FetchError: unreachable host, HTTP error status or interrupted transfer.
    """
    part = part_path(dest)
    offset = part.stat().st_size if part.exists() else 0
    # identity: byte counts and Range offsets must refer to the file itself, not a gzip of it
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        print(f"resuming {part.name} at {offset / 1e6:.1f} MB", file=sys.stderr)
    try:
        with client.stream("GET", url, headers=headers) as response:
            if response.status_code == 416 and offset:
                return part
            if response.status_code not in (200, 206):
                where = f" (redirected to {response.url})" if str(response.url) != url else ""
                raise FetchError(
                    f"HTTP {response.status_code} {response.reason_phrase} for {url}{where}"
                )
            if response.status_code == 200:
                offset = 0  # the server ignored the Range header: start over
            elif _content_range_start(response) != offset:
                part.unlink(missing_ok=True)
                raise FetchError(
                    f"{url} answered a request for bytes {offset}- with Content-Range "
                    f"{response.headers.get('content-range')!r}; removed the partial "
                    "download, run again to start over"
                )
            _write_body(response, part, offset, _total_size(response, offset))
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
        raise FetchError(f"cannot download {url!r}: {exc}") from None
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        raise _unreachable(url, exc, manual_step) from None
    except httpx.TransportError as exc:
        have = part.stat().st_size if part.exists() else 0
        raise FetchError(
            f"download of {url} interrupted after {have / 1e6:.1f} MB: "
            f"{exc or type(exc).__name__}; run the same command again to resume"
        ) from None
    return part


def _write_body(response: httpx.Response, part: Path, offset: int, total: int | None) -> None:
    """Append the response body to ``part`` from ``offset`` (0 truncates)."""
    progress = _Progress(part.name.removesuffix(".part"), offset, total)
    done = offset
    with part.open("ab" if offset else "wb") as out:
        for chunk in response.iter_raw():
            out.write(chunk)
            done += len(chunk)
            progress.update(done)
    if total is not None and done != total:
        raise FetchError(f"{part}: got {done} bytes, expected {total}; run again to resume")


def _reject(path: Path, problem: str) -> FetchError:
    """Remove a file that failed verification and describe why."""
    path.unlink(missing_ok=True)
    return FetchError(f"{path}: {problem}; removed it so that the next run fetches it again")


# ----------------------------------------------------------------------- release zip


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
        raise _reject(path, f"not a readable zip archive ({exc})") from None
    if bad is not None:
        raise _reject(path, f"corrupt archive: bad CRC in member {bad!r}")
    unsafe = [n for n in names if _unsafe_member(n)]
    if unsafe:
        raise _reject(path, f"refusing archive with member(s) outside the cache dir: {unsafe}")
    members, lora = set(names), variant.lora_dir
    wanted = [*variant.release_files, f"{lora}/adapter_config.json"]
    missing = [w for w in wanted if not _has_member(members, w)]
    if not any(_has_member(members, f"{lora}/{w}") for w in ADAPTER_WEIGHT_FILES):
        missing.append(f"{lora}/{' or '.join(ADAPTER_WEIGHT_FILES)}")
    if missing:
        raise _reject(path, f"archive lacks {', '.join(missing)}")


def extract_archive(path: Path, cache_dir: Path) -> None:
    """Unpack ``path`` into ``cache_dir``, refusing members that would land outside it."""
    root = cache_dir.resolve()
    with zipfile.ZipFile(path) as archive:
        for member in archive.infolist():
            target = (root / member.filename).resolve()
            if target != root and root not in target.parents:
                raise _reject(path, f"member {member.filename!r} would land outside {root}")
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


def fetch_release(
    client: httpx.Client, variant: Variant, cache_dir: Path, url: str, force: bool
) -> None:
    """Download, verify and unpack the release zip unless its files are already present.

    Args:
        client: the HTTP client.
        variant: the variant to fetch.
        cache_dir: where to unpack.
        url: the release zip URL.
        force: fetch even if present.

    Raises:
        FetchError: on any failure; a file that failed verification has been removed.
    """
    if not force and _release_present(cache_dir, variant):
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
        part = download(client, url, zip_path, f"unpack it into {cache_dir}")
        verify_archive(part, variant)
        part.replace(zip_path)
    extract_archive(zip_path, cache_dir)
    try:
        check_release(cache_dir, variant)
    except FetchError as exc:
        raise _reject(zip_path, f"unpacked, but {exc}") from None
    # Unpacked and checked: the archive would only double the disk (and image) size.
    zip_path.unlink()
    print(f"unpacked {zip_path.name} into {cache_dir}")


def _release_present(cache_dir: Path, variant: Variant) -> bool:
    try:
        check_release(cache_dir, variant)
    except FetchError:
        return False
    return True


# -------------------------------------------------------------------------- backbone


def verify_backbone(path: Path) -> None:
    """Check that ``path`` holds the DINO ViT-B/16 state dict.

    Args:
        path: the backbone file (or its ``.part``).

    Raises:
        FetchError: describing the problem; ``path`` is removed.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # whatever unpickling raises, the file is bad
        problem = f"does not load with torch.load ({type(exc).__name__}: {exc})"
        raise _reject(path, problem) from None
    if not isinstance(state, dict):
        raise _reject(path, f"holds a {type(state).__name__}, not a state dict")
    for key, shape in BACKBONE_EXPECTED_SHAPES.items():
        value = state.get(key)
        if not isinstance(value, torch.Tensor):
            raise _reject(path, f"state dict lacks tensor {key!r}")
        if shape is not None and tuple(value.shape) != shape:
            raise _reject(path, f"{key} has shape {list(value.shape)}, expected {list(shape)}")


def fetch_backbone(client: httpx.Client, cache_dir: Path, url: str, force: bool) -> None:
    """Download and verify the DINO backbone unless a valid one is already present.

    Args:
        client: the HTTP client.
        cache_dir: the cache dir (the file goes to ``DINO_BACKBONE_FILE`` inside it).
        url: where to download it from.
        force: fetch even if present.

    Raises:
        FetchError: on any failure; a file that failed verification has been removed.
    """
    dest = cache_dir / DINO_BACKBONE_FILE
    if force:
        part_path(dest).unlink(missing_ok=True)
    elif dest.exists():
        verify_backbone(dest)
        print(f"already present: {dest}")
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = download(client, url, dest, f"save it as {dest}")
    verify_backbone(part)
    part.replace(dest)
    print(f"fetched {dest}")


# ------------------------------------------------------------------------------- CLI


def fetch(
    *,
    model_type: str,
    cache_dir: Path,
    release_url: str | None = None,
    backbone_url: str = DINO_BACKBONE_URL,
    force: bool = False,
) -> None:
    """Fetch everything ``model_type`` needs into ``cache_dir``.

    Args:
        model_type: a ``MODEL_TYPE`` value.
        cache_dir: the cache dir (created if missing).
        release_url: the release zip; defaults to the variant's upstream URL.
        backbone_url: the DINO backbone; defaults to the upstream URL.
        force: refetch what is already present.

    Raises:
        FetchError: on any expected failure.
        OSError: when the cache dir cannot be written.
    """
    variant = get_variant(model_type)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with httpx.Client(follow_redirects=True, timeout=TIMEOUT) as client:
        fetch_release(client, variant, cache_dir, release_url or variant.release_zip_url, force)
        fetch_backbone(client, cache_dir, backbone_url, force)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m predictor.weights",
        description="Fetch the official DreamSim weights into a cache dir (upstream layout).",
    )
    model_type = os.environ.get("MODEL_TYPE")
    cache_dir = os.environ.get("MODEL_CACHE_DIR")
    parser.add_argument(
        "--model-type",
        choices=sorted(VARIANTS),
        default=model_type,
        required=model_type is None,
        help="DreamSim variant (default: $MODEL_TYPE)",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(cache_dir) if cache_dir else None,
        required=cache_dir is None,
        help="where the weights go (default: $MODEL_CACHE_DIR)",
    )
    parser.add_argument("--release-url", help="release zip URL (default: upstream release)")
    parser.add_argument(
        "--backbone-url", default=DINO_BACKBONE_URL, help="DINO backbone URL (default: upstream)"
    )
    parser.add_argument("--force", action="store_true", help="refetch what is already present")
    return parser


def _os_error_message(exc: OSError) -> str:
    where = f" {exc.filename}" if exc.filename else ""
    if exc.errno == errno.ENOSPC:
        return f"disk full while writing{where}"
    return f"cannot access{where}: {exc.strerror or exc}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Args:
        argv: arguments without the program name; ``sys.argv[1:]`` when None.

    Returns:
        0 on success, 1 on an expected failure (reported on stderr), as the exit code.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if args.model_type not in VARIANTS:  # only possible through a bad $MODEL_TYPE
        parser.error(f"unsupported MODEL_TYPE {args.model_type!r}")
    try:
        fetch(
            model_type=args.model_type,
            cache_dir=args.cache_dir,
            release_url=args.release_url,
            backbone_url=args.backbone_url,
            force=args.force,
        )
    except FetchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {_os_error_message(exc)}", file=sys.stderr)
        return 1
    print(f"weights for {args.model_type} are ready in {args.cache_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

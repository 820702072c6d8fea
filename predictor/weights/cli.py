"""``python -m predictor.weights``: the command line around ``predictor.weights.fetch``."""

from __future__ import annotations

import argparse
import errno
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from predictor.layout import VARIANTS

from .errors import FetchError
from .fetch import BASE_URL_ENV, fetch


def fetch_command(model_type: str, cache_dir: str) -> str:
    """The shell command that fetches the weights of ``model_type`` into ``cache_dir``.

    Args:
        model_type: a ``MODEL_TYPE`` value.
        cache_dir: the cache dir the predictor reads.

    Returns:
        A command line, e.g.
        ``python -m predictor.weights --model-type dino_vitb16 --cache-dir /app/models``.
    """
    return (
        f"python -m predictor.weights --model-type {shlex.quote(model_type)} "
        f"--cache-dir {shlex.quote(cache_dir)}"
    )


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
    parser.add_argument(
        "--base-url",
        default=os.environ.get(BASE_URL_ENV) or None,
        help="a mirror serving every file under its upstream file name "
             f"(default: ${BASE_URL_ENV}, else upstream's URLs)",
    )
    parser.add_argument("--release-url", help="release zip URL (default: upstream release)")
    parser.add_argument(
        "--backbone-url",
        help="torch.hub backbone URL, for the variants that have one (default: upstream)",
    )
    parser.add_argument("--force", action="store_true", help="refetch what is already present")
    parser.add_argument("--quiet", action="store_true", help="no download progress lines")
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
            base_url=args.base_url,
            force=args.force,
            progress=not args.quiet,
        )
    except FetchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {_os_error_message(exc)}", file=sys.stderr)
        return 1
    print(f"weights for {args.model_type} are ready in {args.cache_dir}")
    return 0

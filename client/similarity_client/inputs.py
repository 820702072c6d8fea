"""One side of a pair as the API wants it: base64 of the file's bytes, or a URL/data URI.

URLs and data URIs are passed through untouched: the service fetches URLs itself (with its
own SSRF policy), so the client never downloads anything. Local files are read as they are
(no re-encoding, so the service decodes exactly the file); PIL images are sent as PNG,
which is lossless.
"""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path
from typing import Any

from .models import ImageInput

_PASSTHROUGH = ("http://", "https://", "data:")


class InputError(Exception):
    """One side of a pair cannot be sent (missing file, unreadable, unsupported type)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def is_passthrough(value: str) -> bool:
    """True for what the service reads itself: http(s) URLs and data URIs."""
    return value[:8].lower().startswith(_PASSTHROUGH)


def _is_pil(value: Any) -> bool:
    return hasattr(value, "save") and hasattr(value, "mode") and hasattr(value, "size")


def label(value: ImageInput) -> str:
    """How a side is named in results: its path or URL, else a short description."""
    if isinstance(value, str):
        if value[:5].lower() == "data:":
            return f"{value[:30]}... ({len(value)} chars)"
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes>"
    if _is_pil(value):
        return f"<PIL image {value.size[0]}x{value.size[1]} {value.mode}>"
    return f"<{type(value).__name__}>"


def encode(value: ImageInput) -> str:
    """The string the API accepts for ``value``.

    Raises:
        InputError: the file is missing, unreadable or empty, or the type is not supported.
    """
    if isinstance(value, str) and is_passthrough(value):
        return value
    if isinstance(value, str | os.PathLike):
        path = Path(value)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise InputError("file not found") from None
        except IsADirectoryError:
            raise InputError("is a directory, not a file") from None
        except OSError as e:
            raise InputError(f"cannot read the file: {e.strerror or e}") from None
        if not data:
            raise InputError("the file is empty")
        return base64.b64encode(data).decode("ascii")
    if isinstance(value, bytes | bytearray | memoryview):
        if not len(value):
            raise InputError("no bytes given")
        return base64.b64encode(value).decode("ascii")
    if _is_pil(value):
        buf = io.BytesIO()
        try:
            value.save(buf, "PNG")
        except (OSError, ValueError) as e:
            raise InputError(f"cannot encode the PIL image as PNG: {e}") from None
        return base64.b64encode(buf.getvalue()).decode("ascii")
    raise InputError(f"unsupported input type {type(value).__name__} (expected a path, "
                     "bytes, a PIL image or an http(s) URL)")

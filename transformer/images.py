"""Decode client image inputs into the exact pixels DreamSim sees.

Reference: ``dreamsim`` 0.2.1, ``dreamsim/model.py``, the ``preprocess`` closure returned by
``dreamsim()``::

    t = transforms.Compose([
        transforms.Resize((224, 224), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.ToTensor(),
    ])
    preprocess = lambda pil_img: t(pil_img.convert("RGB")).unsqueeze(0)

This module does the same steps (Pillow ``convert("RGB")``, then the resize torchvision
0.29 performs on a PIL image, which is ``img.resize((w, h), Image.BICUBIC)``: Pillow's
antialiased bicubic) and stops before ``ToTensor``: it returns uint8 ``[3, 224, 224]``.
``ToTensor``'s division by 255 happens in the predictor, so sending uint8 is lossless and a
quarter of the float32 size. The output is bit-identical to DreamSim's preprocess
(``tests/test_preprocessing.py`` checks this against the upstream package).

Parity notes:
- EXIF orientation is NOT applied: DreamSim does not call ``ImageOps.exif_transpose``, so a
  rotated-by-EXIF photo is compared as stored.
- Animated images (GIF, APNG, WebP) use their first frame, as ``Image.open`` does.

It also classifies request strings (:func:`parse_image_input`): http(s) URL, ``data:`` URI or
raw base64 (standard or URL-safe alphabet, whitespace and missing padding tolerated).

Everything here is a pure function with no shared mutable state and no lock, so it is
safe to call from a thread pool. Only the formats of :mod:`transformer.imageguard` are opened,
after its cheap walk of their block structure.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import re
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from io import BytesIO
from typing import Literal
from urllib.parse import urlsplit

import numpy as np
import pybase64
from PIL import Image

from service_common.wire import IMAGE_SIZE

from .decodebudget import OverBudget, decode_bytes
from .decoders import native_pixels
from .imageguard import ACCEPTED, ALLOWED_FORMATS, why_refused
from .resize import matches_pillow, resize_bicubic

DecodeImpl = Literal["native", "pillow"]
"""``native``: faster decoders and resize, proven byte-identical (:mod:`.decoders`,
:mod:`.resize`); ``pillow``: Pillow for every step, the reference they are checked against."""

# IMAGE_SIZE (service_common.wire): side of the square DreamSim input
# (``dreamsim_args["img_size"]``), imported above.

DEFAULT_MAX_PIXELS = 89_478_485
"""Largest ``width * height`` accepted by default: Pillow's ``Image.MAX_IMAGE_PIXELS``."""

_MB = 1_000_000
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]{0,31}):")  # bounded: no 100 MB scan
# Base64 in either alphabet, '=' padding, and whitespace (removed before decoding).
_B64_INVALID_RE = re.compile(r"[^A-Za-z0-9+/=\-_\s]")
_WHITESPACE_RE = re.compile(r"\s+")
_URLSAFE_TO_STD = str.maketrans("-_", "+/")
_BOMB_SIZE_RE = re.compile(r"Image size \((\d+) pixels\)")  # Pillow's bomb message

# Pillow warns above MAX_IMAGE_PIXELS and raises above twice that. Its limit is applied by
# our own check after `Image.open` (whatever the process's warning filters say: a filter
# can be changed by any library), so the warning is only noise. It used to be made an
# error per call with `warnings.catch_warnings`, which swaps the process-wide filter list
# and needed a lock that serialised every header parse.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class ImageInputError(ValueError):
    """A client-side problem with one image input; `reason` is a short human sentence."""

    def __init__(self, reason: str) -> None:
        """Store the reason.

        Args:
            reason: Short human-readable sentence, safe to return to the client.
        """
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ImageRef:
    """What a request string refers to: exactly one of `url` and `data` is set.

    Attributes:
        url: The http(s) URL to fetch, or None.
        data: The decoded bytes of a base64 / data URI input, or None.
    """

    url: str | None
    data: bytes | None


def parse_image_input(value: str, *, max_bytes: int) -> ImageRef:
    """Classify a request string as an http(s) URL, a base64 data URI or raw base64.

    Args:
        value: The string from the request.
        max_bytes: Largest accepted decoded size for base64 inputs. URLs are not fetched
            here; the fetcher applies its own limit.

    Returns:
        An :class:`ImageRef` with `url` set for http(s) URLs, `data` set otherwise.

    Raises:
        ImageInputError: Empty string, unsupported URL scheme, malformed data URI, invalid
            base64, or decoded size over `max_bytes`.
    """
    if not isinstance(value, str):
        raise ImageInputError(f"image must be a string, not {type(value).__name__}")
    text = value.strip()
    if not text:
        raise ImageInputError("empty image string")
    offset = len(value) - len(value.lstrip())  # so error positions refer to `value`

    match = _SCHEME_RE.match(text)
    if match is None:  # base64 has no ':', so anything else with a scheme is a URI
        return ImageRef(url=None, data=_decode_base64(text, offset, max_bytes))

    scheme = match.group(1).lower()
    if scheme in ("http", "https"):
        try:
            host = urlsplit(text).hostname
        except ValueError as e:  # e.g. "Invalid IPv6 URL" for http://[::1/x
            raise ImageInputError(f"malformed URL: {e}") from None
        if not host:
            raise ImageInputError("URL has no host")
        return ImageRef(url=text, data=None)
    if scheme == "data":
        header, comma, payload = text[len("data:") :].partition(",")
        if not comma:
            raise ImageInputError("data URI has no ',' between its header and its data")
        # data:[<mediatype>][;param=value]*[;base64],<data>; the media type is ignored
        # because the decoder sniffs the bytes.
        if header.split(";")[-1].strip().lower() != "base64":
            raise ImageInputError(
                "data URI is not base64-encoded; use 'data:<media type>;base64,<data>'"
            )
        if not payload.strip():
            raise ImageInputError("empty image string")
        start = offset + len("data:") + len(header) + 1
        return ImageRef(url=None, data=_decode_base64(payload, start, max_bytes))
    raise ImageInputError(f"unsupported URL scheme '{scheme}'; use http(s), a data URI or base64")


def _decode_base64(text: str, offset: int, max_bytes: int) -> bytes:
    """Decode lenient base64 (whitespace, URL-safe alphabet, missing padding).

    Args:
        text: The base64 payload.
        offset: Position of `text` in the client's string, for error messages.
        max_bytes: Largest accepted decoded size.

    Returns:
        The decoded bytes.

    Raises:
        ImageInputError: Invalid base64 or too large.
    """
    # Cheap bound on the raw length first so a huge string is neither copied nor decoded;
    # whitespace can only make the real size smaller, so allow generous MIME line breaks.
    if len(text) * 3 // 4 > max_bytes * 2:
        raise ImageInputError(
            f"image is about {len(text) * 3 / 4 / _MB:.1f} MB decoded, "
            f"over the {max_bytes / _MB:g} MB limit"
        )
    # Fast path: canonical base64 (standard alphabet, padded, no whitespace), as clients
    # write it, goes straight to the C decoder (strict: any other character, misplaced
    # padding or excess data fails it). Anything else takes the lenient path below, which
    # also says what is wrong. Measured: 6.8 ms -> 0.9 ms for a 400 KB string.
    # The size is the decoded one: a string over the limit only by its length goes on to
    # the lenient path, which sizes it without its whitespace (MIME base64 wraps lines at
    # 76 characters: a 19.7 MB image was refused here as 20.2 MB).
    if (len(text) % 4 == 0 and text.find("=", 0, len(text) - 2) == -1
            and len(text) // 4 * 3 - text.endswith("=") - text.endswith("==") <= max_bytes):
        try:
            # pybase64 (SIMD): the same bytes as base64.b64decode, about 4x faster
            # (2.2 -> 0.5 ms for 680 KB); stricter, and what it refuses takes the lenient
            # path below, which gives the standard library's answer.
            return pybase64.b64decode(text, validate=True)
        except ValueError:  # binascii.Error, or a non-ASCII character
            pass
    bad = _B64_INVALID_RE.search(text)
    if bad is not None:
        raise ImageInputError(
            f"not valid base64 (invalid character at position {offset + bad.start()})"
        )
    compact = _WHITESPACE_RE.sub("", text)
    body = compact.rstrip("=")
    if not body:
        raise ImageInputError("empty image string")
    if "=" in body or len(compact) - len(body) > 2:
        raise ImageInputError("not valid base64 ('=' padding in the wrong place)")
    if len(body) % 4 == 1:
        raise ImageInputError("not valid base64 (truncated: length is 1 more than a multiple of 4)")
    size = len(body) * 3 // 4  # exact decoded size, padding or not
    if size > max_bytes:
        raise ImageInputError(
            f"image is {size / _MB:.1f} MB decoded, over the {max_bytes / _MB:g} MB limit"
        )
    padded = body.translate(_URLSAFE_TO_STD) + "=" * (-len(body) % 4)
    try:
        return base64.b64decode(padded, validate=True)
    except binascii.Error as exc:  # unreachable after the checks above; kept as a guard
        raise ImageInputError("not valid base64") from exc


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                 fast: bool = False, impl: DecodeImpl = "native",
                 reserve: Callable[[int], AbstractContextManager[None]] | None = None
                 ) -> np.ndarray:
    """Decode image bytes to DreamSim's 224x224 RGB input, as uint8.

    Steps match DreamSim 0.2.1's ``preprocess`` up to ``ToTensor``: first frame, Pillow
    ``convert("RGB")``, Pillow bicubic (antialiased) resize to 224x224 as torchvision's
    ``Resize`` does for PIL images. EXIF orientation is not applied (DreamSim does not).

    Args:
        data: Encoded image bytes: PNG, JPEG, WebP, GIF or BMP (``imageguard``; TIFF and
            RLE BMPs are refused); the format is sniffed from the bytes.
        max_pixels: Largest accepted ``width * height``, checked from the header before any
            pixel is decoded (decompression bombs). Pillow's own ``Image.MAX_IMAGE_PIXELS``
            (applied by the same check) still applies, so values above it
            have no effect.
        fast: for JPEGs, let libjpeg decode at 1/2, 1/4 or 1/8 scale (``Image.draft``),
            never below 224 px a side, before the resize. Much faster on large photos, but
            the pixels differ from DreamSim's (the deviation is measured in the benchmark
            and README); off by default. Always decodes and resizes with Pillow.
        impl: ``native`` (default) decodes PNG and JPEG with libspng / libjpeg-turbo where
            they are proven to give Pillow's pixels (:func:`.decoders.native_pixels`, Pillow
            otherwise) and resizes with an exact compiled port of Pillow's bicubic
            (:func:`.resize.resize_bicubic`); ``pillow`` uses Pillow throughout. Both give
            the same bytes (``tests/test_decoders.py``); ``native`` takes less CPU time.
        reserve: called with the bytes decoding will hold at most
            (:func:`.decodebudget.decode_bytes`, from the header), before any pixel is
            decoded; the context it returns is held while decoding and resizing (the
            budgets of :mod:`.decodebudget`). It may raise
            :class:`.decodebudget.OverBudget` or ``TimeoutError``, which become an
            ``ImageInputError``.

    Returns:
        A C-contiguous uint8 array of shape ``[3, 224, 224]`` (CHW, RGB).

    Raises:
        ImageInputError: Unrecognised format, truncated or corrupt data, zero or too many
            pixels. No Pillow or OS exception escapes.
    """
    refused = why_refused(data)  # formats, and header work bounded before Pillow
    if refused is not None:
        raise ImageInputError(refused)
    try:
        img = Image.open(BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageInputError(_bomb_reason(exc, max_pixels)) from None
    except Image.UnidentifiedImageError:
        raise ImageInputError(f"not a recognised image format (accepted: {ACCEPTED})") from None
    except Exception:  # any other Pillow failure while reading the header
        raise ImageInputError("truncated or corrupt image data") from None

    with img:  # closed on the way out: its decoded pixels are freed then, not later
        width, height = img.size
        if width <= 0 or height <= 0:
            raise ImageInputError("image has zero width or height")
        limit = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)  # Pillow's applies too
        if width * height > limit:
            raise ImageInputError(
                f"image is {width}x{height} = {width * height} pixels, "
                f"over the limit of {limit}"
            )
        cost = decode_bytes(img, data)
        try:
            with reserve(cost) if reserve is not None else contextlib.nullcontext():
                return _decode_opened(img, data, max_pixels=max_pixels, fast=fast, impl=impl)
        except OverBudget as e:
            raise ImageInputError(f"image is {width}x{height} ({img.mode}): {e.reason}"
                                  ) from None
        except TimeoutError:
            raise ImageInputError(
                f"image is {width}x{height} ({img.mode}): no decoding memory was free "
                "before the request's deadline") from None


def _decode_opened(img: Image.Image, data: bytes, *, max_pixels: int, fast: bool,
                   impl: DecodeImpl) -> np.ndarray:
    """The checked, opened ``img`` decoded, converted and resized; ``img`` is closed (its
    pixels freed) as soon as they are converted, before the resize."""
    pixels = native_pixels(img, data) if impl == "native" and not fast else None
    if pixels is None:
        try:
            img.seek(0)  # first frame of animations (Image.open is already there)
            if fast and img.format == "JPEG":
                img.draft("RGB", (IMAGE_SIZE, IMAGE_SIZE))  # scale stays >= the request
            img.load()
            if impl == "pillow" or fast:
                rgb = img.convert("RGB")
            else:
                pixels = _rgb_array(img)
        except Image.DecompressionBombError as exc:  # plugins that pick a frame size
            raise ImageInputError(_bomb_reason(exc, max_pixels)) from None
        except Exception:  # OSError "image file is truncated", SyntaxError, zlib...
            raise ImageInputError("truncated or corrupt image data") from None
        img.close()
        if pixels is None:
            return _to_chw(_resize_like_torchvision(rgb))
    img.close()
    return _chw(_resize(pixels))


_STRIP_PIXELS = 1 << 20
"""Pixels converted at a time by :func:`_rgb_array` (a strip of about 4 MB)."""


def _rgb_array(img: Image.Image) -> np.ndarray:
    """``np.asarray(img.convert("RGB"))``, converted a strip of rows at a time into one
    array: ``[H, W]`` for gray ``L`` (R = G = B), else ``[H, W, 3]``.

    Converting to RGB is per pixel, so strips give the same values as the whole image;
    what it saves is memory: the whole-image way holds Pillow's 4-byte RGB copy and
    ``tobytes``' chunks and their join (another 6 bytes per pixel) beside the decoded image.
    """
    width, height = img.size
    gray = img.mode == "L"
    out = np.empty((height, width) if gray else (height, width, 3), dtype=np.uint8)
    rows = max(1, _STRIP_PIXELS // width)
    for top in range(0, height, rows):
        strip = img.crop((0, top, width, min(height, top + rows)))
        if strip.mode != ("L" if gray else "RGB"):
            strip = strip.convert("RGB")
        out[top:top + rows] = np.asarray(strip)
    return out


def _bomb_reason(exc: Exception, max_pixels: int) -> str:
    """Reason for an image Pillow refused at open time, before our own size check ran."""
    limit = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)
    match = _BOMB_SIZE_RE.search(str(exc))
    if match is None:
        return f"image is over the limit of {limit} pixels"
    return f"image is {match.group(1)} pixels, over the limit of {limit}"


def _resize_like_torchvision(img: Image.Image) -> Image.Image:
    """Resize as ``torchvision.transforms.Resize((224, 224), BICUBIC)`` does on a PIL image.

    torchvision 0.29 ``functional.resize`` returns the image unchanged when it already has
    the target size, otherwise calls ``_functional_pil.resize``, which is
    ``img.resize(tuple(size[::-1]), Image.BICUBIC)`` (size given as (h, w)).
    """
    if img.size == (IMAGE_SIZE, IMAGE_SIZE):
        return img
    return img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC)


def _resize(pixels: np.ndarray) -> np.ndarray:
    """Pillow's bicubic resize to 224x224 of ``[H, W]`` or ``[H, W, 3|4]`` pixels: the
    compiled port, or Pillow itself where the port does not match the installed Pillow."""
    if matches_pillow():
        return resize_bicubic(pixels, (IMAGE_SIZE, IMAGE_SIZE))
    if pixels.ndim == 3 and pixels.shape[2] != 3:
        pixels = np.ascontiguousarray(pixels[:, :, :3])
    img = Image.fromarray(pixels)
    return np.asarray(_resize_like_torchvision(img))


def _chw(pixels: np.ndarray) -> np.ndarray:
    """``[224, 224]`` gray (R = G = B) or ``[224, 224, 3]`` RGB to C-contiguous CHW."""
    if pixels.ndim == 2:
        return np.ascontiguousarray(np.broadcast_to(pixels, (3, *pixels.shape)))
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def _to_chw(img: Image.Image) -> np.ndarray:
    """Convert an RGB PIL image to a C-contiguous uint8 CHW array."""
    hwc = np.asarray(img, dtype=np.uint8)
    assert hwc.shape == (IMAGE_SIZE, IMAGE_SIZE, 3), f"unexpected image shape {hwc.shape}"
    return np.ascontiguousarray(hwc.transpose(2, 0, 1))

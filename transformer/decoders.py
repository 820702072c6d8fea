"""Faster pixel decoders for PNG and JPEG, used only where they give Pillow's pixels exactly.

DreamSim's preprocessing starts with Pillow's ``Image.open(...).convert("RGB")``. Pillow's
PNG decoder is about twice as slow as libspng and its JPEG path about 1.5-2x slower than
calling libjpeg-turbo directly (both measured in the README). ``imagecodecs`` (libspng)
and ``simplejpeg`` (libjpeg-turbo's TurboJPEG API) release the GIL while decoding (so decode
threads run in parallel) and, for the cases chosen here, return the same pixel values as
Pillow; ``tests/test_decoders.py`` proves it
over a generated corpus of every PNG colour type, bit depth, filter and interlace choice
and every common JPEG kind, at sizes down to 1x1.

The choice is made per input from what Pillow already read of the header (format, mode),
plus the PNG header's bit depth and colour type:

- PNG, 8-bit gray / RGB / RGBA, not interlaced (what photographs and generated images
  mostly are): the IDAT stream inflated with libdeflate (``imagecodecs.deflate_decode``,
  about twice as fast as zlib) and the row filters undone by a compiled loop.
- Other PNGs of bit depth <= 8, gray / RGB / palette / RGBA (with or without tRNS,
  interlaced or not): libspng (``imagecodecs.spng_decode``). Alpha and transparency are dropped, as
  ``convert("RGB")`` drops them.
- JPEG with 1 or 3 components (gray, YCbCr, Adobe RGB; baseline or progressive; any
  subsampling; restart markers): libjpeg-turbo (``simplejpeg``), with the same settings as
  Pillow (accurate integer IDCT, fancy upsampling), strict about warnings.

Everything else goes to Pillow, as before: 16-bit gray (Pillow clips it, not scales it),
gray+alpha and 16-bit colour PNGs, animated PNGs (APNG: Pillow decides which image is the
first frame), CMYK/YCCK JPEGs, MPO and every other format. So does any input a fast decoder
refuses, so a corrupt file gets Pillow's own verdict.

Gray images are returned with one channel: ``convert("RGB")`` copies the gray value into
R, G and B, and resizing one channel gives exactly what resizing each copy gives, at a
third of the cost (the caller repeats it after the resize).
"""

from __future__ import annotations

import struct

import imagecodecs
import numba
import numpy as np
import simplejpeg
from PIL import Image

from .resize import CACHE  # numba's on-disk cache, set up there

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_FAST_COLOR_TYPES = frozenset({0, 2, 3, 6})  # gray, RGB, palette, RGBA
_PNG_MODES = frozenset({"1", "L", "P", "RGB", "RGBA"})  # what Pillow opens them as


def native_pixels(img: Image.Image, data: bytes) -> np.ndarray | None:
    """The first frame's pixels as Pillow's ``convert("RGB")`` gives them, decoded faster.

    Args:
        img: ``data`` as Pillow opened it (header parsed and checked, nothing decoded).
        data: the encoded file.

    Returns:
        uint8 ``[H, W]`` for gray images (the value of R, G and B alike), ``[H, W, 3]`` or
        ``[H, W, 4]`` (the 4th channel to be ignored) otherwise; None when this input is not
        one of the kinds proven identical, or a fast decoder refused it: decode it with
        Pillow.
    """
    try:
        if img.format == "PNG":
            if not _png_is_plain(img, data):
                return None
            pixels = _png_8bit(data, img.size)
            if pixels is None:
                pixels = imagecodecs.spng_decode(data)
        elif img.format == "JPEG" and img.mode in ("L", "RGB"):
            # Pillow's libjpeg settings: accurate integer IDCT, fancy upsampling. strict:
            # any libjpeg warning (a truncated or damaged file, which Pillow may refuse)
            # is an error here, and Pillow decides.
            pixels = simplejpeg.decode_jpeg(data, colorspace="GRAY" if img.mode == "L" else
                                            "RGB", fastdct=False, fastupsample=False,
                                            strict=True)
        else:
            return None
    except Exception:  # the decoders' own errors: Pillow decides and says what is wrong
        return None
    return _checked(pixels, img.size)


def _png_is_plain(img: Image.Image, data: bytes) -> bool:
    """A still PNG of at most 8 bits per sample, in a colour type proven identical."""
    if img.mode not in _PNG_MODES or len(data) < 33 or not data.startswith(_PNG_SIGNATURE):
        return False
    # IHDR is the first chunk (Pillow checked): depth at byte 24, colour type at byte 25.
    depth, color_type = data[24], data[25]
    if depth > 8 or color_type not in _PNG_FAST_COLOR_TYPES:
        return False
    # An animated PNG declares acTL before its first IDAT; Pillow's frame 0 rules apply.
    first_idat = data.find(b"IDAT", 33)
    return data.find(b"acTL", 33, first_idat if first_idat > 0 else len(data)) < 0


def _checked(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray | None:
    """``pixels`` if they have the shape and type Pillow's header promised, else None."""
    width, height = size
    if pixels.dtype != np.uint8 or pixels.shape[:2] != (height, width):
        return None
    if pixels.ndim == 3 and pixels.shape[2] in (1, 2):  # gray (+ alpha from tRNS)
        pixels = pixels[:, :, 0]
    if pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] in (3, 4)):
        return pixels
    return None


_PNG_CHANNELS = {0: 1, 2: 3, 6: 4}  # colour types decoded by _png_8bit


def _png_8bit(data: bytes, size: tuple[int, int]) -> np.ndarray | None:
    """Non-interlaced 8-bit gray, RGB or RGBA PNG: libdeflate, then a compiled unfilter.

    About twice as fast as libspng on photographs (libdeflate inflates about twice as fast
    as zlib). None for anything else or anything unusual (a missing IEND, a short or long
    zlib stream, IDAT chunks not in one run, an unknown row filter): libspng or Pillow then
    decide. Chunk CRCs are not checked, as Pillow does not check those it reads after the
    header.
    """
    width, height = size
    color_type, interlace = data[25], data[28]
    channels = _PNG_CHANNELS.get(color_type)
    if channels is None or data[24] != 8 or interlace != 0:
        return None
    parts = []
    pos, end, in_idat, seen_idat = 8, len(data), False, False
    view = memoryview(data)
    while True:
        if pos + 12 > end:
            return None
        length, kind = struct.unpack_from(">I4s", data, pos)
        if pos + 12 + length > end:
            return None
        if kind == b"IDAT":
            if seen_idat and not in_idat:
                return None
            parts.append(view[pos + 8:pos + 8 + length])
            in_idat = seen_idat = True
        else:
            in_idat = False
            if kind == b"IEND":
                break
        pos += 12 + length
    stride = width * channels
    expected = height * (stride + 1)
    try:
        raw = imagecodecs.deflate_decode(b"".join(parts), out=expected)
    except Exception:
        return None
    if len(raw) != expected:
        return None
    out = np.empty((height, stride), dtype=np.uint8)
    if not _unfilter(np.frombuffer(raw, dtype=np.uint8).reshape(height, stride + 1), channels,
                     out):
        return None
    return out.reshape(height, width, channels) if channels > 1 else out


@numba.njit(nogil=True, cache=CACHE)
def _unfilter(raw: np.ndarray, bpp: int, out: np.ndarray) -> bool:  # pragma: no cover
    """PNG row filters undone (uint8 arithmetic, wrapping): ``raw`` is ``[rows, 1 + n]``
    with each row's filter type first; False on an unknown filter type."""
    rows, n = out.shape
    for y in range(rows):
        kind = raw[y, 0]
        line = raw[y, 1:]
        dst = out[y]
        if kind == 0:
            dst[:] = line
        elif kind == 1:
            for i in range(n):
                dst[i] = line[i] + (dst[i - bpp] if i >= bpp else 0)
        elif kind == 2:
            if y == 0:
                dst[:] = line
            else:
                up = out[y - 1]
                for i in range(n):
                    dst[i] = line[i] + up[i]
        elif kind == 3:
            for i in range(n):
                left = np.int32(dst[i - bpp]) if i >= bpp else np.int32(0)
                above = np.int32(out[y - 1, i]) if y > 0 else np.int32(0)
                dst[i] = line[i] + np.uint8((left + above) >> 1)
        elif kind == 4:
            if y == 0:  # no row above: Paeth predicts from the left, like Sub
                for i in range(n):
                    dst[i] = line[i] + (dst[i - bpp] if i >= bpp else 0)
            elif bpp == 3:
                _paeth3(line, out[y - 1], dst, n)
            else:
                _paeth(line, out[y - 1], dst, n, bpp)
        else:
            return False
    return True


@numba.njit(nogil=True, cache=CACHE, inline="always")
def _predict(a: np.int32, b: np.int32, c: np.int32) -> np.int32:  # pragma: no cover
    """The Paeth predictor of the PNG specification."""
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


@numba.njit(nogil=True, cache=CACHE)
def _paeth3(line: np.ndarray, up: np.ndarray, dst: np.ndarray,
            n: int) -> None:  # pragma: no cover
    """Paeth row with 3 bytes per pixel, the three channels' left and upper-left values
    kept in registers (the generic loop reloads them from memory: about 3x slower)."""
    a0 = a1 = a2 = c0 = c1 = c2 = np.int32(0)
    for i in range(0, n - 2, 3):
        b0, b1, b2 = np.int32(up[i]), np.int32(up[i + 1]), np.int32(up[i + 2])
        a0 = np.int32(np.uint8(line[i] + _predict(a0, b0, c0)))
        a1 = np.int32(np.uint8(line[i + 1] + _predict(a1, b1, c1)))
        a2 = np.int32(np.uint8(line[i + 2] + _predict(a2, b2, c2)))
        dst[i], dst[i + 1], dst[i + 2] = a0, a1, a2
        c0, c1, c2 = b0, b1, b2


@numba.njit(nogil=True, cache=CACHE)
def _paeth(line: np.ndarray, up: np.ndarray, dst: np.ndarray, n: int,
           bpp: int) -> None:  # pragma: no cover
    """Paeth row, any bytes per pixel."""
    for i in range(n):
        a = np.int32(dst[i - bpp]) if i >= bpp else np.int32(0)
        c = np.int32(up[i - bpp]) if i >= bpp else np.int32(0)
        dst[i] = np.uint8(line[i] + _predict(a, np.int32(up[i]), c))


def warm_up() -> None:
    """Compile the PNG unfilter now rather than in the first request."""
    for kind in range(5):
        for bpp in (1, 3, 4):
            rows = bytes([kind] + [7] * 12) * 2  # read-only, as decoded bytes are
            _unfilter(np.frombuffer(rows, dtype=np.uint8).reshape(2, 13), bpp,
                      np.empty((2, 12), dtype=np.uint8))

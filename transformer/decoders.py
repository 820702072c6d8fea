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

- PNG, bit depth <= 8, gray / RGB / palette / RGBA (with or without tRNS, interlaced or
  not): libspng (``imagecodecs.spng_decode``). Alpha and transparency are dropped, as
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

import imagecodecs
import numpy as np
import simplejpeg
from PIL import Image

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

"""Pillow's antialiased bicubic resize, ported exactly and compiled: the same bytes, faster.

DreamSim resizes with ``PIL.Image.resize(size, BICUBIC)``. Pillow's resampler
(``src/libImaging/Resample.c``) is fixed-point integer arithmetic, so it can be reproduced
bit for bit:

- per output position, filter weights are computed in double precision from the bicubic
  kernel (a = -0.5, support 2 scaled by the downscale factor), normalised to sum 1, then
  rounded to integers with ``PRECISION_BITS = 32 - 8 - 2 = 22`` fractional bits (away from
  zero);
- a horizontal pass first (only over the rows the vertical pass will read), then a vertical
  pass, except where Pillow 13 runs the vertical pass first (when the height shrinks by
  more than twice what the width shrinks by); each pass accumulates in int32 from
  ``1 << 21`` and clips ``acc >> 22`` to 0..255, so the order changes the result;
- a pass is skipped when that side already has the target length.

Pillow's loops are scalar. Here both passes run over the *last* axis of contiguous memory
(the horizontal pass reads a transposed copy of the rows it needs), so the compiler
vectorises the multiply-accumulate over many pixels at once. The coefficients are
computed in numpy with the same double-precision operations in the same order as Pillow.

``tests/test_resize.py`` checks equality with Pillow for many sizes (up, down, 1xN, Nx1,
one and three channels). Compiled with numba at first use (about a second; the transformer
does it before it reports ready); ``nogil``, so decode threads resize in parallel.
"""

from __future__ import annotations

import functools
import math
import os
import tempfile

import numba
import numpy as np


def _numba_cache_dir() -> str | None:
    """Where compiled kernels are cached on disk (a restart then loads them in well under
    a second instead of compiling for seconds): NUMBA_CACHE_DIR, else a temporary
    directory (the package directory is read-only in the container image); None when
    nothing is writable (a read-only container without /tmp): compile at each start."""
    try:
        path = os.environ.get("NUMBA_CACHE_DIR") or os.path.join(tempfile.gettempdir(),
                                                                  "numba-cache")
        os.makedirs(path, exist_ok=True)
    except OSError:  # FileNotFoundError: no usable temporary directory at all
        return None
    return path if os.access(path, os.W_OK) else None


_CACHE_DIR = _numba_cache_dir()
CACHE = _CACHE_DIR is not None
"""Whether the compiled kernels (here and in :mod:`.decoders`) are cached on disk."""
if CACHE:
    numba.config.CACHE_DIR = _CACHE_DIR  # type: ignore[attr-defined]

PRECISION_BITS = 32 - 8 - 2
"""Fractional bits of Pillow's 8-bit fixed-point coefficients."""

_SUPPORT = 2.0  # bicubic filter support, before scaling by the downscale factor


def _bicubic(x: np.ndarray) -> np.ndarray:
    """Pillow's ``bicubic_filter`` (a = -0.5), elementwise, in float64."""
    a = -0.5
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


@functools.lru_cache(maxsize=4096)
def coefficients(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pillow's ``precompute_coeffs`` + ``normalize_coeffs_8bpc`` for a full-image box.

    Returns:
        ``(xmin, xmax, kk)``: per output position the first input index and the number of
        taps, and the int32 coefficients ``[out_size, ksize]`` (zero past ``xmax``).
    """
    scale = float(np.float32(in_size) - np.float32(0)) / out_size  # (double)(in1 - in0)
    filterscale = max(scale, 1.0)
    support = _SUPPORT * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    center = (np.arange(out_size, dtype=np.float64) + 0.5) * scale  # in0 + (xx + 0.5) * scale
    xmin = np.maximum((center - support + 0.5).astype(np.int64), 0)  # C's (int): truncation
    xmax = np.minimum((center + support + 0.5).astype(np.int64), in_size) - xmin
    taps = np.arange(ksize, dtype=np.float64)
    ss = 1.0 / filterscale
    w = _bicubic((taps[None, :] + xmin[:, None] - center[:, None] + 0.5) * ss)
    w[taps[None, :] >= xmax[:, None]] = 0.0
    # Pillow sums the weights in tap order (left to right); cumsum keeps that order.
    ww = np.cumsum(w, axis=1)[:, -1] if ksize else np.zeros(out_size)
    w = np.where(ww[:, None] != 0.0, w / np.where(ww == 0.0, 1.0, ww)[:, None], w)
    one = float(1 << PRECISION_BITS)
    kk = np.where(w < 0, -0.5 + w * one, 0.5 + w * one).astype(np.int32)  # truncation
    return xmin.astype(np.int32), xmax.astype(np.int32), kk  # shared: never written to


@numba.njit(nogil=True, cache=CACHE)
def _pass_last_axis(src: np.ndarray, xmin: np.ndarray, xmax: np.ndarray, kk: np.ndarray,
                    out: np.ndarray) -> None:  # pragma: no cover - compiled
    """``out[o, :] = clip8((1 << 21 + sum_t src[xmin[o] + t, :] * kk[o, t]) >> 22)``.

    ``src`` is ``[in, n]`` and ``out`` ``[out, n]``, both C-contiguous uint8: every output
    line is a weighted sum of whole input lines, vectorised over ``n``.
    """
    n = src.shape[1]
    acc = np.empty(n, dtype=np.int32)
    for o in range(out.shape[0]):
        acc[:] = 1 << (PRECISION_BITS - 1)
        first = xmin[o]
        for t in range(xmax[o]):
            k = kk[o, t]
            line = src[first + t]
            for j in range(n):
                acc[j] += np.int32(line[j]) * k
        dst = out[o]
        for j in range(n):
            v = acc[j] >> PRECISION_BITS
            dst[j] = 0 if v < 0 else (255 if v > 255 else v)


@numba.njit(nogil=True, cache=CACHE)
def _transpose(src: np.ndarray, out: np.ndarray, channels: int) -> None:  # pragma: no cover
    """``out[x, y * channels + c] = src[y, x, c]`` for the first ``channels`` (1 or 3) of
    ``src``'s, in tiles that stay in the L1 cache (numpy's strided copy of 3-byte pixels
    is several times slower)."""
    height, width = src.shape[0], src.shape[1]
    for y0 in range(0, height, 16):
        y1 = min(y0 + 16, height)
        for x0 in range(0, width, 64):
            x1 = min(x0 + 64, width)
            if channels == 3:
                for x in range(x0, x1):
                    dst = out[x]
                    for y in range(y0, y1):
                        dst[3 * y] = src[y, x, 0]
                        dst[3 * y + 1] = src[y, x, 1]
                        dst[3 * y + 2] = src[y, x, 2]
            else:
                for x in range(x0, x1):
                    dst = out[x]
                    for y in range(y0, y1):
                        dst[y] = src[y, x, 0]


def resize_bicubic(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``Image.fromarray(rgb).resize(size, BICUBIC)`` as an array, byte-identical.

    Args:
        pixels: uint8 ``[H, W]`` (one channel), or ``[H, W, C]`` with C >= 3 of which the
            first three are used (a 4th, alpha, is ignored as ``convert("RGB")`` drops it).
        size: ``(width, height)`` of the result, as Pillow takes it.

    Returns:
        A C-contiguous uint8 array ``[height, width]`` or ``[height, width, 3]``.
    """
    width, height = size
    gray = pixels.ndim == 2
    channels = 1 if gray else 3
    if not gray and pixels.shape[2] < 3:
        raise ValueError(f"need 1 or at least 3 channels, got {pixels.shape[2]}")
    img = np.ascontiguousarray(pixels[:, :, None] if gray else pixels)
    in_h, in_w = img.shape[0], img.shape[1]
    if _vertical_first[0] and height < in_h and in_h - height > 2 * (in_w - width):
        # Pillow 13 runs the vertical pass first when it shrinks the height by more than
        # twice what the horizontal pass takes off the width (the rule read from its
        # output over many sizes; see `matches_pillow`); earlier versions never do.
        lines = _vertical(np.ascontiguousarray(img[:, :, :channels]).reshape(in_h, -1),
                          in_h, height)
        if in_w != width:
            lines = _horizontal(lines.reshape(height, in_w, channels), channels, width)
    else:
        # Otherwise horizontal first, over only the rows the vertical pass reads.
        vmin, vmax, _ = coefficients(in_h, height)
        first, last = int(vmin[0]), int(vmin[-1] + vmax[-1])
        if in_w != width:
            lines = _horizontal(img[first:last], channels, width)
        else:
            first, last = 0, in_h
            lines = np.ascontiguousarray(img[:, :, :channels]).reshape(in_h, -1)
        if in_h != height:
            lines = _vertical(lines, in_h, height, offset=first)
    return lines.reshape(height, width) if gray else lines.reshape(height, width, 3)


_STRIP_BYTES = 4 << 20
"""Bytes of source rows the horizontal pass transposes at a time: rows are independent in
that pass, so strips give the same result, and a whole-image transpose would hold a copy
of the image (268 MB at the pixel limit) beside it."""


def _horizontal(img: np.ndarray, channels: int, width: int) -> np.ndarray:
    """Pillow's horizontal pass: ``[rows, W, C>=channels]`` to ``[rows, width * channels]``,
    a strip of rows at a time (:data:`_STRIP_BYTES`)."""
    rows, in_w = img.shape[0], img.shape[1]
    step = max(1, _STRIP_BYTES // max(1, in_w * channels))
    if rows <= step:
        return _horizontal_strip(img, channels, width)
    out = np.empty((rows, width * channels), dtype=np.uint8)
    for top in range(0, rows, step):
        out[top:top + step] = _horizontal_strip(img[top:top + step], channels, width)
    return out


def _horizontal_strip(img: np.ndarray, channels: int, width: int) -> np.ndarray:
    """The horizontal pass over some rows.

    The rows are transposed so that the weighted sums run along the last axis, then the
    result is transposed back.
    """
    rows, in_w = img.shape[0], img.shape[1]
    cols = np.empty((in_w, rows * channels), dtype=np.uint8)
    _transpose(img, cols, channels)
    hmin, hmax, hkk = coefficients(in_w, width)
    tmp = np.empty((width, rows * channels), dtype=np.uint8)
    _pass_last_axis(cols, hmin, hmax, hkk, tmp)
    out = np.empty((rows, width * channels), dtype=np.uint8)
    _transpose(tmp.reshape(width, rows, channels), out, channels)
    return out


def _vertical(lines: np.ndarray, in_h: int, height: int, offset: int = 0) -> np.ndarray:
    """Pillow's vertical pass from ``in_h`` rows to ``height``, over ``lines``
    (``[rows, n]``: the rows it reads, from row ``offset`` of the source on)."""
    vmin, vmax, vkk = coefficients(in_h, height)
    out = np.empty((height, lines.shape[1]), dtype=np.uint8)
    _pass_last_axis(lines, vmin - np.int32(offset), vmax, vkk, out)
    return out


_vertical_first = [True]  # the pass-order rule of the installed Pillow (matches_pillow)

# (shape, (width, height)) probes: every combination of up/down/same on each side.
_PROBES = (((37, 23, 3), (29, 11)), ((61, 60, 3), (40, 20)), ((61, 60, 3), (30, 21)),
           ((61, 47, 3), (20, 30)), ((40, 90, 3), (100, 20)), ((13, 7), (5, 30)),
           ((50, 50, 3), (50, 20)), ((20, 50, 3), (30, 20)), ((98, 60, 3), (72, 101)),
           ((9, 300, 3), (224, 224)), ((300, 9), (224, 224)), ((30, 30, 3), (30, 30)))


def _pillow(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BICUBIC))


@functools.lru_cache(maxsize=1)
def matches_pillow() -> bool:
    """Whether this port gives the installed Pillow's bytes; checked once per process.

    Pillow 13 runs the vertical pass first when ``height < in_h`` and
    ``in_h - height > 2 * (in_w - width)``; earlier versions always start with the
    horizontal one. The rule is read from the
    installed Pillow's own output on a small probe, then both are compared on one probe
    per case (up, down or same on each side). False (another Pillow with another rule):
    callers resize with Pillow itself. ``tests/test_decoders.py`` compares many more sizes.
    """
    rng = np.random.default_rng(0)
    images = [(rng.integers(0, 256, shape, dtype=np.uint8), size) for shape, size in _PROBES]
    first, size = images[0]
    want = _pillow(first, size)
    for rule in (True, False):
        _vertical_first[0] = rule
        if np.array_equal(resize_bicubic(first, size), want):
            break
    else:
        return False
    return all(np.array_equal(resize_bicubic(x, s), _pillow(x, s)) for x, s in images)


def warm_up() -> None:
    """Compile the kernels now (a few seconds; then cached on disk) rather than in the
    first request."""
    for shape in ((3, 5, 3), (3, 5), (3, 5, 4)):
        resize_bicubic(np.zeros(shape, dtype=np.uint8), (2, 2))
    matches_pillow()

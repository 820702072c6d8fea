"""A broad corpus of generated PNG and JPEG files, for proving decoders identical to Pillow.

PNGs are written by :func:`png_bytes`, a small encoder of its own, because Pillow cannot
write every kind a client may send: interlaced (Adam7) files, 16-bit colour, chosen row
filters, gray with alpha at 16 bits, low bit depths with tRNS. JPEGs are written by Pillow
(libjpeg-turbo): baseline and progressive, 4:4:4 / 4:2:2 / 4:2:0, gray, CMYK, Adobe RGB
(``keep_rgb``), restart markers, optimised Huffman tables.

Pixel content is a real photograph (``skimage.data``) cut to the size asked, so that
rounding in colour conversion, upsampling and resizing is exercised on natural values.
"""

from __future__ import annotations

import functools
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import numpy as np
import skimage.data
from PIL import Image

# Channels per PNG colour type.
PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
# Adam7: (x start, y start, x step, y step) per pass.
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
          (0, 1, 1, 2))


@dataclass(frozen=True)
class Sample:
    """One generated file and what it is."""

    name: str
    data: bytes


@functools.lru_cache(maxsize=1)
def _photo() -> np.ndarray:
    return np.asarray(skimage.data.astronaut())  # 512x512 RGB


def photo_pixels(width: int, height: int, seed: int = 0) -> np.ndarray:
    """``[height, width, 3]`` uint8 cut from a photograph (tiled past 512 px)."""
    src = _photo()
    reps = (-(-height // 512) + 1, -(-width // 512) + 1, 1)
    big = np.tile(src, reps)
    top, left = (seed * 37) % 256, (seed * 61) % 256
    return np.ascontiguousarray(big[top:top + height, left:left + width])


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(
        ">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _paeth(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def _filter_rows(raw: np.ndarray, bpp: int, filters: tuple[int, ...], row0: int) -> bytes:
    """PNG-filter scanlines ``raw`` ([rows, bytes], uint8), cycling through ``filters``."""
    out = bytearray()
    prev = np.zeros(raw.shape[1], dtype=np.int64)
    for i, line in enumerate(raw.astype(np.int64)):
        kind = filters[(row0 + i) % len(filters)]
        left = np.concatenate([np.zeros(bpp, np.int64), line[:-bpp]])
        upleft = np.concatenate([np.zeros(bpp, np.int64), prev[:-bpp]])
        if kind == 0:
            f = line
        elif kind == 1:
            f = line - left
        elif kind == 2:
            f = line - prev
        elif kind == 3:
            f = line - (left + prev) // 2
        else:
            f = line - _paeth(left, prev, upleft)
        out.append(kind)
        out += (f % 256).astype(np.uint8).tobytes()
        prev = line
    return bytes(out)


def _scanlines(samples: np.ndarray, depth: int) -> np.ndarray:
    """Pack ``[rows, width * channels]`` samples into scanline bytes at ``depth`` bits."""
    if depth == 16:
        return samples.astype(">u2").view(np.uint8).reshape(samples.shape[0], -1)
    if depth == 8:
        return samples.astype(np.uint8)
    per_byte = 8 // depth
    rows, n = samples.shape
    padded = np.zeros((rows, -(-n // per_byte) * per_byte), dtype=np.uint8)
    padded[:, :n] = samples
    groups = padded.reshape(rows, -1, per_byte)
    shifts = (8 - depth * (np.arange(per_byte) + 1)).astype(np.uint8)
    return np.bitwise_or.reduce(groups << shifts, axis=2).astype(np.uint8)


def png_bytes(samples: np.ndarray, color_type: int, depth: int, *, interlace: bool = False,
              filters: tuple[int, ...] = (0, 1, 2, 3, 4), palette: np.ndarray | None = None,
              trns: bytes | None = None, extra: tuple[tuple[bytes, bytes], ...] = (),
              idat_split: int = 0) -> bytes:
    """Encode ``samples`` ([H, W, channels] ints within ``depth`` bits) as a PNG.

    Args:
        samples: the stored values (palette indices for colour type 3).
        color_type: 0 gray, 2 RGB, 3 palette, 4 gray+alpha, 6 RGBA.
        depth: bits per sample.
        interlace: Adam7.
        filters: row filter types used in turn.
        palette: ``[n, 3]`` uint8 for colour type 3.
        trns: a tRNS chunk body.
        extra: more (type, body) chunks before IDAT (gAMA, sBIT, iCCP...).
        idat_split: split the compressed data into IDAT chunks of this many bytes.
    """
    height, width, channels = samples.shape
    assert channels == PNG_CHANNELS[color_type]
    bpp = max(1, depth * channels // 8)
    passes = _ADAM7 if interlace else ((0, 0, 1, 1),)
    raw = bytearray()
    row0 = 0
    for x0, y0, dx, dy in passes:
        sub = samples[y0::dy, x0::dx]
        if sub.size == 0:
            continue
        lines = _scanlines(sub.reshape(sub.shape[0], -1), depth)
        raw += _filter_rows(lines, bpp, filters, row0)
        row0 += sub.shape[0]
    body = zlib.compress(bytes(raw), 6)
    chunks = [_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0,
                                          int(interlace)))]
    chunks += [_chunk(kind, data) for kind, data in extra]
    if palette is not None:
        chunks.append(_chunk(b"PLTE", palette.astype(np.uint8).tobytes()))
    if trns is not None:
        chunks.append(_chunk(b"tRNS", trns))
    step = idat_split or len(body) or 1
    chunks += [_chunk(b"IDAT", body[i:i + step]) for i in range(0, max(len(body), 1), step)]
    chunks.append(_chunk(b"IEND", b""))
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


def _png_samples(rgb: np.ndarray, color_type: int, depth: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """Stored values of a photograph for a colour type and depth (and a palette)."""
    h, w, _ = rgb.shape
    gray = (rgb.astype(np.uint32) @ np.array([299, 587, 114]) // 1000).astype(np.uint16)
    noise = rng.integers(0, 256, (h, w), dtype=np.uint16)
    alpha = ((np.add.outer(np.arange(h), np.arange(w)) * 255) // max(h + w - 2, 1))
    alpha = alpha.astype(np.uint16)

    def scale(v8: np.ndarray) -> np.ndarray:
        if depth == 16:
            return v8.astype(np.uint16) * 257 ^ noise  # low byte varies independently
        return v8.astype(np.uint16) >> (8 - depth)

    if color_type == 3:
        n = 1 << depth
        pal = rgb.reshape(-1, 3)[rng.integers(0, h * w, n)]
        return (gray.astype(np.uint32) * n // 256)[:, :, None], pal
    planes = {0: [gray], 2: [rgb[..., 0], rgb[..., 1], rgb[..., 2]], 4: [gray, alpha],
              6: [rgb[..., 0], rgb[..., 1], rgb[..., 2], alpha]}[color_type]
    return np.stack([scale(p) for p in planes], axis=2), None


def png_corpus(sizes: tuple[tuple[int, int], ...] = ((1, 1), (3, 2), (17, 9), (224, 224),
                                                   (300, 171))) -> Iterator[Sample]:
    """Every colour type and bit depth, interlaced or not, with and without tRNS, at
    several sizes (tiny and odd ones included), filters cycled, plus ancillary chunks."""
    rng = np.random.default_rng(7)
    for w, h in sizes:
        rgb = photo_pixels(w, h, seed=w + h)
        for color_type, depths in PNG_DEPTHS.items():
            for depth in depths:
                samples, pal = _png_samples(rgb, color_type, depth, rng)
                trns_options: list[bytes | None] = [None]
                if color_type == 0:
                    trns_options.append(struct.pack(">H", int(samples[0, 0, 0])))
                elif color_type == 2:
                    trns_options.append(struct.pack(">HHH", *map(int, samples[0, 0])))
                elif color_type == 3:
                    assert pal is not None
                    trns_options.append(bytes(rng.integers(0, 256, len(pal) // 2 + 1,
                                                           dtype=np.uint8)))
                for interlace in (False, True):
                    for trns in trns_options:
                        name = (f"png {w}x{h} type{color_type} {depth}bit"
                                f"{' interlaced' if interlace else ''}{' tRNS' if trns else ''}")
                        yield Sample(name, png_bytes(samples, color_type, depth,
                                                     interlace=interlace, palette=pal,
                                                     trns=trns, idat_split=97))
    rgb = photo_pixels(61, 40, seed=3)
    for kind, body in ((b"gAMA", struct.pack(">I", 45455)), (b"sBIT", b"\x05\x06\x05"),
                       (b"sRGB", b"\x00"), (b"cHRM", struct.pack(">8I", *range(8))),
                       (b"iCCP", b"icc\x00\x00" + zlib.compress(b"not a real profile")),
                       (b"tEXt", b"Comment\x00hello"), (b"pHYs", struct.pack(">IIB", 1, 1, 0))):
        for filters in ((0,), (1,), (2,), (3,), (4,)):
            yield Sample(f"png RGB {kind.decode()} filter{filters[0]}",
                         png_bytes(rgb, 2, 8, filters=filters, extra=((kind, body),)))


def jpeg_corpus(sizes: tuple[tuple[int, int], ...] = ((1, 1), (7, 5), (17, 33), (224, 224),
                                                    (301, 199))) -> Iterator[Sample]:
    """Baseline and progressive, each chroma subsampling, gray, CMYK, Adobe RGB, restart
    markers and optimised tables, at several sizes."""
    for w, h in sizes:
        img = Image.fromarray(photo_pixels(w, h, seed=w * 3 + h))
        variants: list[tuple[str, Image.Image, dict[str, Any]]] = []
        for sub in (0, 1, 2):
            for progressive in (False, True):
                variants.append((f"RGB sub{sub}{' progressive' if progressive else ''}", img,
                                 {"subsampling": sub, "progressive": progressive}))
        variants += [
            ("L", img.convert("L"), {}),
            ("L progressive", img.convert("L"), {"progressive": True}),
            ("CMYK", img.convert("CMYK"), {}),
            ("Adobe RGB (keep_rgb)", img, {"keep_rgb": True}),
            ("restart markers", img, {"restart_marker_blocks": 2}),
            ("restart rows", img, {"restart_marker_rows": 1, "subsampling": 2}),
            ("optimized q50", img, {"optimize": True, "quality": 50}),
            ("q100 4:4:4", img, {"quality": 100, "subsampling": 0}),
        ]
        for name, im, params in variants:
            buf = BytesIO()
            im.save(buf, "JPEG", quality=params.pop("quality", 90), **params)
            yield Sample(f"jpeg {w}x{h} {name}", buf.getvalue())

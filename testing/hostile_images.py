"""Images that are small to send and expensive to open.

``HOSTILE``: one or two pixels, and megabytes of metadata blocks that Pillow parses one at a
time in Python (issue 10, finding 4), one builder per accepted format (PNG, JPEG, WebP,
GIF, BMP) plus TIFF, which is refused outright, and a progressive JPEG of thousands of
scans (issue 19, item 4). ``MEMORY_HOSTILE``: a few bytes that decode to hundreds of
megabytes (issue 19, item 3). Shared by tests/fuzz/test_hostile_images.py and
bench/worst_case.py.
"""

from __future__ import annotations

import io
import re
import struct
import zlib
from collections.abc import Callable

from PIL import Image


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data)))


def _tiny(fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB" if fmt == "WEBP" else "L", (1, 1)).save(buf, fmt, **params)
    return buf.getvalue()


def png_text_chunks(size: int) -> bytes:
    """1x1 PNG with ``size`` bytes of 14-byte ``tEXt`` chunks before its IDAT."""
    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    text = _png_chunk(b"tEXt", b"a\x00")
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + text * (size // len(text))
            + _png_chunk(b"IDAT", zlib.compress(b"\x00\x00")) + _png_chunk(b"IEND", b""))


def png_empty_idats(size: int) -> bytes:
    """1x1 PNG whose image data is split into empty IDAT chunks."""
    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    empty = _png_chunk(b"IDAT", b"")
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(b"\x00\x00")) + empty * (size // len(empty))
            + _png_chunk(b"IEND", b""))


def jpeg_comment_markers(size: int) -> bytes:
    """1x1 JPEG with ``size`` bytes of empty COM markers after SOI."""
    jpeg = _tiny("JPEG")
    return jpeg[:2] + b"\xff\xfe\x00\x02" * (size // 4) + jpeg[2:]


def jpeg_fill_bytes(size: int) -> bytes:
    """1x1 JPEG with ``size`` 0xFF fill bytes before its first marker."""
    jpeg = _tiny("JPEG")
    return jpeg[:2] + b"\xff" * size + jpeg[2:]


def jpeg_junk_bytes(size: int) -> bytes:
    """1x1 JPEG with ``size`` junk bytes after its first segment, which Pillow skips one
    at a time."""
    jpeg = _tiny("JPEG")
    first = 4 + int.from_bytes(jpeg[4:6], "big")  # SOI, then APP0 with its length
    return jpeg[:first] + b"\x00" * size + jpeg[first:]


def _gif_parts() -> tuple[bytes, bytes]:
    gif = _tiny("GIF")
    flags = gif[10]
    head = 13 + (3 * (2 << (flags & 7)) if flags & 0x80 else 0)
    return gif[:head], gif[head:]


def gif_comment_subblocks(size: int) -> bytes:
    """1x1 GIF with one comment extension of one-byte sub-blocks before its image."""
    head, rest = _gif_parts()
    return head + b"\x21\xfe" + b"\x01x" * (size // 2) + b"\x00" + rest


def gif_comment_extensions(size: int) -> bytes:
    """1x1 GIF with many one-byte comment extensions before its image."""
    head, rest = _gif_parts()
    return head + b"\x21\xfe\x01x\x00" * (size // 5) + rest


def webp_unknown_chunks(size: int) -> bytes:
    """1x1 extended WebP with ``size`` bytes of empty unknown chunks before its image."""
    webp = _tiny("WEBP", lossless=True)
    vp8x = b"VP8X" + struct.pack("<I", 10) + bytes(10)
    body = vp8x + (b"ZZZZ" + struct.pack("<I", 0)) * (size // 8) + webp[12:]
    return b"RIFF" + struct.pack("<I", len(body) + 4) + b"WEBP" + body


def bmp_rle8(size: int) -> bytes:
    """An RLE8 BMP of about ``size`` bytes of one-pixel runs, which Pillow decodes in
    Python (about 1.5 s per MB)."""
    width = 4000
    row = b"\x01\x05" * width + b"\x00\x00"
    rows = max(1, size // len(row))
    data = row * rows + b"\x00\x01"
    palette = b"\x00\x00\x00\x00" * 256
    header = struct.pack("<IiiHHIIiiII", 40, width, rows, 1, 8, 1, len(data), 2835, 2835,
                         256, 0)
    offset = 14 + 40 + len(palette)
    return (b"BM" + struct.pack("<IHHI", offset + len(data), 0, 0, offset) + header
            + palette + data)


def tiff_strip_offsets(size: int) -> bytes:
    """1x2 TIFF with ``size / 8`` strips: StripOffsets and StripByteCounts of that many
    values, which Pillow reads into Python tuples before any size check."""
    n = max(2, size // 8)
    start = 8 + 2 + 12 * 9 + 4
    offsets_at, counts_at = start, start + 4 * n
    pixels_at = counts_at + 4 * n

    def entry(tag: int, kind: int, count: int, value: int) -> bytes:
        return struct.pack("<HHII", tag, kind, count, value)

    entries = [entry(256, 4, 1, 1), entry(257, 4, 1, 2), entry(258, 3, 1, 8),
               entry(259, 3, 1, 1), entry(262, 3, 1, 1), entry(273, 4, n, offsets_at),
               entry(277, 3, 1, 1), entry(278, 4, 1, 1), entry(279, 4, n, counts_at)]
    ifd = struct.pack("<H", len(entries)) + b"".join(entries) + struct.pack("<I", 0)
    return (b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", pixels_at) * n
            + struct.pack("<I", 1) * n + b"\x00\x00")


def jpeg_many_scans(size: int, *, side: int = 1024, scans: int | None = None) -> bytes:
    """A valid progressive JPEG of ``side`` x ``side`` whose last scan (an AC refinement,
    with its Huffman table) is repeated until the file is about ``size`` bytes (or has
    ``scans`` scans, at least its own 10): each scan is a decoding pass over the whole
    image (libjpeg warns about the repeated refinement and goes on, as Pillow lets it)."""
    img = Image.linear_gradient("L").resize((side, side)).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=75, progressive=True)
    data = buf.getvalue()
    sos = [m.start() for m in re.finditer(rb"\xff\xda", data)]
    eoi = data.rindex(b"\xff\xd9")
    table = data.rfind(b"\xff\xc4", sos[-2], sos[-1])
    scan = data[table if table > 0 else sos[-1]:eoi]
    repeats = scans - len(sos) if scans is not None else (size - len(data)) // len(scan)
    return data[:eoi] + scan * max(0 if scans is not None else 1, repeats) + data[eoi:]


HOSTILE: dict[str, Callable[[int], bytes]] = {
    "png-text-chunks": png_text_chunks,
    "png-empty-idats": png_empty_idats,
    "jpeg-comment-markers": jpeg_comment_markers,
    "jpeg-fill-bytes": jpeg_fill_bytes,
    "jpeg-junk-bytes": jpeg_junk_bytes,
    "gif-comment-subblocks": gif_comment_subblocks,
    "gif-comment-extensions": gif_comment_extensions,
    "webp-unknown-chunks": webp_unknown_chunks,
    "bmp-rle8": bmp_rle8,
    "tiff-strip-offsets": tiff_strip_offsets,
    "jpeg-many-scans": jpeg_many_scans,
}
"""Builders: ``HOSTILE[name](size_in_bytes)`` -> the image's bytes."""

MAX_SIDE = 9459
"""9459^2 = 89,472,681 pixels, just under the default ``MAX_IMAGE_PIXELS`` (89,478,485)."""


def bmp_tiny_huge(side: int = MAX_SIDE) -> bytes:
    """A 118-byte 24-bit BMP header that declares ``side`` x ``side`` pixels and carries
    64 of their bytes: Pillow allocates the whole image before it finds the data short."""
    header = struct.pack("<IiiHHIIiiII", 40, side, side, 1, 24, 0, 0, 2835, 2835, 0, 0)
    data = b"\x00" * 64
    return b"BM" + struct.pack("<IHHI", 54 + 3 * side * side, 0, 0, 54) + header + data


def gif_huge_canvas(side: int = MAX_SIDE) -> bytes:
    """A 35-byte GIF: a ``side`` x ``side`` logical screen (canvas) with one 1x1 image;
    Pillow makes the first frame the size of the canvas."""
    screen = struct.pack("<6sHHBBB", b"GIF89a", side, side, 0x80, 0, 0)  # 2-colour table
    palette = b"\x00\x00\x00\xff\xff\xff"
    image = b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    return screen + palette + image + b"\x3b"


def png16_rgba(side: int = MAX_SIDE) -> bytes:
    """A ``side`` x ``side`` 16-bit RGBA PNG of zeros (about 700 kB at the pixel limit):
    16-bit images take Pillow's path, not the native decoders."""
    row = b"\x00" * (1 + 8 * side)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 16, 6, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


MEMORY_HOSTILE: dict[str, Callable[[], bytes]] = {
    "bmp-118-bytes": bmp_tiny_huge,
    "gif-35-bytes-huge-canvas": gif_huge_canvas,
    "png-16bit-rgba-max-pixels": png16_rgba,
}
"""Builders of images that are small to send and large to decode (at the pixel limit)."""

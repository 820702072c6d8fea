"""Which image formats are accepted, and a cheap walk of their block structure before any
decoder sees the bytes.

Pillow parses headers in Python, one block at a time: a 1 MB PNG of tiny ``tEXt`` chunks,
a JPEG of empty ``COM`` markers or padding bytes, a GIF of one-byte comment sub-blocks each
cost Pillow 0.6-2 s per MB (20 MB: half a minute, holding the GIL), and a TIFF of a million
strip offsets took 15 s and 241 MB. The pixel limit cannot help: these images have one
pixel. So before ``Image.open``:

- only PNG, JPEG, WebP, GIF and BMP are accepted (``ALLOWED_FORMATS``, also passed to
  ``Image.open`` as ``formats=``). **TIFF is refused**: its directory can hold millions of
  values that Pillow reads into Python objects before any size check, bounding that would
  mean a second TIFF parser (BigTIFF, sub-directories, tiles), and libtiff is a large
  attack surface for a format image generators do not produce.
- the blocks of PNG (chunks), WebP (RIFF chunks), JPEG (markers and padding up to the
  first scan) and GIF (extension sub-blocks up to the first image) are counted, by jumping
  over their lengths, and an image with more than the budget is refused: ``1024 + size /
  4096`` chunks for PNG and WebP (libpng writes 8 KB IDAT chunks, so real images stay far
  below), 4096 markers and padding bytes before a JPEG's first scan, 4096 GIF sub-blocks
  before its first image. The walk itself is at most that many steps of a few
  microseconds.
- BMP: run-length-encoded BMPs (RLE4, RLE8) are refused: Pillow decodes them in Python, at
  about 1.5 s per MB. Other BMPs have fixed-size headers.
- Formats that are recognised but not accepted are named in the answer with the accepted
  list, so that a phone's HEIC or a browser's AVIF gets "AVIF images are not accepted", not
  "not a recognised image format": TIFF (above), AVIF and HEIC/HEIF (ISOBMFF containers:
  Pillow 13 decodes AVIF, but bounding their nested box structure before libavif parses it
  would need a parser of our own, as TIFF would), JPEG XL, JPEG 2000, ICO, PSD, SVG and PDF.

The walk only bounds work; it does not validate. Whatever it does not understand (a
truncated file, a bad length) is left to Pillow, which refuses it as corrupt.
"""

from __future__ import annotations

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
"""What ``Image.open`` may identify the bytes as (Pillow's format names)."""

ACCEPTED = "PNG, JPEG, WebP, GIF, BMP"
MAX_JPEG_STEPS = 4096
MAX_GIF_SUBBLOCKS = 4096
_NO_LENGTH = frozenset((0x01, *range(0xD0, 0xD9)))  # JPEG markers without a length field
_CHUNK_BASE = 1024
_CHUNK_BYTES = 4096


def chunk_budget(size: int) -> int:
    """Most PNG or WebP chunks accepted in an image of ``size`` bytes."""
    return _CHUNK_BASE + size // _CHUNK_BYTES


# ISOBMFF ``ftyp`` brands (bytes 8-12) of the still-image formats phones and browsers send.
_AVIF_BRANDS = frozenset((b"avif", b"avis"))
_HEIF_BRANDS = frozenset((b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm",
                          b"hevs", b"mif1", b"msf1"))
_NOT_ACCEPTED_MAGIC = (  # (prefix, name) of other recognised formats, refused by name
    (b"\xff\x0a", "JPEG XL"), (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEG XL"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"), (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"\x00\x00\x01\x00", "ICO"), (b"8BPS", "PSD"), (b"%PDF-", "PDF"),
)


def _not_accepted(data: bytes) -> str | None:
    """The name of a format that is recognised but not accepted, or None."""
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in _AVIF_BRANDS:
            return "AVIF"
        if brand in _HEIF_BRANDS:
            return "HEIC/HEIF"
    for prefix, name in _NOT_ACCEPTED_MAGIC:
        if data.startswith(prefix):
            return name
    head = data[:256].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in head):
        return "SVG"
    return None


def sniff(data: bytes) -> str | None:
    """The format the first bytes announce (PNG, JPEG, WEBP, GIF, BMP, TIFF), or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data.startswith(b"BM"):
        return "BMP"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    return None


def why_refused(data: bytes) -> str | None:
    """Why these bytes must not reach a decoder, or None to go on (Pillow decides then).

    Cost: at most a few thousand steps, whatever the bytes.
    """
    fmt = sniff(data)
    if fmt is None:
        other = _not_accepted(data)
        if other is not None:
            return f"{other} images are not accepted (accepted: {ACCEPTED}): convert it first"
        return f"not a recognised image format (accepted: {ACCEPTED})"
    if fmt == "TIFF":
        return f"TIFF images are not accepted (accepted: {ACCEPTED})"
    if fmt == "PNG":
        return _walk_chunks(data, 8, big_endian=True, name="PNG")
    if fmt == "WEBP":
        return _walk_chunks(data, 12, big_endian=False, name="WebP")
    if fmt == "JPEG":
        return _walk_jpeg(data)
    if fmt == "GIF":
        return _walk_gif(data)
    return _check_bmp(data)


def _walk_chunks(data: bytes, pos: int, *, big_endian: bool, name: str) -> str | None:
    """PNG chunks (length, type, data, CRC) or RIFF chunks (type, length, data, pad)."""
    budget = chunk_budget(len(data))
    count = 0
    while pos + 8 <= len(data):
        count += 1
        if count > budget:
            return (f"{name} image has more than {budget} chunks for its {len(data)} bytes: "
                    "refused (metadata blocks cost time to parse)")
        if big_endian:  # PNG: length, type, data, CRC
            length = int.from_bytes(data[pos:pos + 4], "big")
            if data[pos + 4:pos + 8] == b"IEND":
                return None
            pos += 12 + length
        else:  # RIFF: type, length, data, a pad byte to an even length
            length = int.from_bytes(data[pos + 4:pos + 8], "little")
            pos += 8 + length + (length & 1)
    return None


def _walk_jpeg(data: bytes) -> str | None:
    """Markers, padding (0xFF fill) and junk bytes from SOI up to the first SOS, each a
    step of Pillow's header loop."""
    pos, steps, end = 2, 0, len(data)
    while pos < end:
        steps += 1
        if steps > MAX_JPEG_STEPS:
            return (f"JPEG image has more than {MAX_JPEG_STEPS} markers or padding bytes "
                    "before its image data: refused (they cost time to parse)")
        if data[pos] != 0xFF:  # junk, skipped a byte at a time by Pillow
            pos += 1
            continue
        if pos + 1 >= end:
            return None
        marker = data[pos + 1]
        if marker in (0xFF, 0x00):  # fill byte, or an escaped 0xFF
            pos += 1
            continue
        if marker == 0xDA:  # start of scan: the rest is libjpeg's, in C
            return None
        if marker in _NO_LENGTH:  # TEM, RSTn, SOI
            pos += 2
            continue
        if pos + 4 > end:
            return None
        pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
    return None


def _walk_gif(data: bytes) -> str | None:
    """Extension blocks (and their sub-blocks) between the header and the first image."""
    if len(data) < 13:
        return None
    flags = data[10]
    pos = 13 + (3 * (2 << (flags & 7)) if flags & 0x80 else 0)
    subblocks = 0
    while pos < len(data):
        introducer = data[pos]
        if introducer != 0x21:  # 0x2C: the first image; anything else: Pillow's to judge
            return None
        pos += 2  # introducer, label
        while pos < len(data):
            subblocks += 1
            if subblocks > MAX_GIF_SUBBLOCKS:
                return (f"GIF image has more than {MAX_GIF_SUBBLOCKS} extension blocks "
                        "before its first image: refused (they cost time to parse)")
            size = data[pos]
            pos += 1 + size
            if size == 0:
                break
    return None


def _check_bmp(data: bytes) -> str | None:
    """Refuse run-length encoding (BI_RLE8 = 1, BI_RLE4 = 2), which Pillow decodes in
    Python; the compression field follows a BITMAPINFOHEADER or later header."""
    if len(data) < 34:
        return None
    header_size = int.from_bytes(data[14:18], "little")
    if header_size >= 40 and int.from_bytes(data[30:34], "little") in (1, 2):
        return "run-length encoded BMP images are not accepted (slow to decode)"
    return None

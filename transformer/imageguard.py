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
- JPEG scans: a progressive JPEG's decoder makes one pass over the whole image's
  coefficients per scan, so a small file of hundreds of (nearly empty) scans costs seconds
  to tens of seconds of CPU (measured: a 139 kB file, 9-23 s, where a baseline JPEG of the
  size takes 0.11 s). After the first start-of-scan the walk goes on, from marker to
  marker over the entropy-coded data (one C regex search per marker), and refuses an image
  of more than ``MAX_JPEG_SCANS`` (100) scans. Encoders write 10 for colour and 6 for gray
  (libjpeg's ``jpeg_simple_progression``) and rarely more than a few dozen (mozjpeg's
  scan optimisation); libjpeg-turbo leaves the limit to the application
  (``TJPARAM_SCANLIMIT``, ``djpeg -maxscans``; its own fuzzers use 500, which still allows
  a 139 kB file a minute of CPU).
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

import re
from dataclasses import dataclass

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
"""What ``Image.open`` may identify the bytes as (Pillow's format names)."""

ACCEPTED = "PNG, JPEG, WebP, GIF, BMP"
MAX_JPEG_STEPS = 4096
MAX_GIF_SUBBLOCKS = 4096
MAX_JPEG_SCANS = 100
"""Most scans (SOS markers) accepted in a JPEG; see the module docstring."""
MAX_JPEG_MARKERS_AFTER_SCAN = 4096
"""Most markers (tables, restart intervals, scans) after a JPEG's first scan."""
_SOF = frozenset((*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC),
                  *range(0xCD, 0xD0)))  # start of frame (not DHT C4, JPG C8, DAC CC)
# The next marker in entropy-coded data: 0xFF then neither a stuffed 0x00, a restart
# marker (D0-D7) nor another fill byte.
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
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


@dataclass(frozen=True)
class JpegFrame:
    """What a JPEG's frame header and scans say, as far as memory and time go.

    Attributes:
        scans: start-of-scan markers counted (at most ``MAX_JPEG_SCANS + 1``).
        progressive: a progressive frame (SOF2, SOF6, SOF10, SOF14).
        components: per component, its (horizontal, vertical) sampling factors.
    """

    scans: int
    progressive: bool
    components: tuple[tuple[int, int], ...]

    def coefficient_bytes(self, width: int, height: int) -> int:
        """Bytes of the whole-image DCT coefficient buffers libjpeg keeps for a
        multi-scan image (2 bytes per coefficient, per component at its own sampling,
        in whole 8x8 blocks); 0 for a single-scan baseline image, decoded a row of
        blocks at a time."""
        if not self.progressive and self.scans <= 1:
            return 0
        hmax = max((h for h, _ in self.components), default=1) or 1
        vmax = max((v for _, v in self.components), default=1) or 1
        total = 0
        for h, v in self.components:
            blocks_x = -(-width * max(h, 1) // (8 * hmax))
            blocks_y = -(-height * max(v, 1) // (8 * vmax))
            total += (blocks_x + 1) * (blocks_y + 1) * 64 * 2
        return total


def _walk_jpeg(data: bytes) -> str | None:
    """Markers, padding (0xFF fill) and junk bytes from SOI up to the first SOS, each a
    step of Pillow's header loop; then the scans, counted (:func:`jpeg_frame`)."""
    frame = jpeg_frame(data)
    if isinstance(frame, str):
        return frame
    if frame.scans < 0:
        return (f"JPEG image has more than {MAX_JPEG_MARKERS_AFTER_SCAN} markers after its "
                "first scan: refused (they cost time to parse)")
    if frame.scans > MAX_JPEG_SCANS:
        return (f"JPEG image has more than {MAX_JPEG_SCANS} scans: refused (each scan of a "
                "progressive JPEG is a decoding pass over the whole image)")
    return None


def jpeg_frame(data: bytes) -> JpegFrame | str:
    """Walk a JPEG's markers: the frame header's components, and the number of scans
    (counting stops past ``MAX_JPEG_SCANS``); a string when the walk's budget is spent.

    Cost: at most ``MAX_JPEG_STEPS`` steps before the first scan and
    ``MAX_JPEG_MARKERS_AFTER_SCAN`` after it, each a C search over the entropy-coded data
    (about 1 ms per MB).
    """
    pos, steps, end = 2, 0, len(data)
    progressive = False
    components: tuple[tuple[int, int], ...] = ()
    while pos < end:
        steps += 1
        if steps > MAX_JPEG_STEPS:
            return (f"JPEG image has more than {MAX_JPEG_STEPS} markers or padding bytes "
                    "before its image data: refused (they cost time to parse)")
        if data[pos] != 0xFF:  # junk, skipped a byte at a time by Pillow
            pos += 1
            continue
        if pos + 1 >= end:
            break
        marker = data[pos + 1]
        if marker in (0xFF, 0x00):  # fill byte, or an escaped 0xFF
            pos += 1
            continue
        if marker == 0xDA:  # start of scan: the rest is libjpeg's, in C
            return JpegFrame(scans=_count_scans(data, pos), progressive=progressive,
                             components=components)
        if marker in _NO_LENGTH:  # TEM, RSTn, SOI
            pos += 2
            continue
        if pos + 4 > end:
            break
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker in _SOF and not components:
            progressive = marker in (0xC2, 0xC6, 0xCA, 0xCE)
            count = data[pos + 9] if pos + 9 < end else 0
            sampling = data[pos + 10:pos + 10 + 3 * count]
            components = tuple((b >> 4, b & 15) for b in sampling[1::3])
        pos += 2 + length
    return JpegFrame(scans=0, progressive=progressive, components=components)


def _count_scans(data: bytes, pos: int) -> int:
    """Scans from the SOS at ``pos`` on: from marker to marker, skipping each marker
    segment by its length and each scan's entropy-coded data by a search for the next
    marker. Stops at EOI, at the end of the data, or past ``MAX_JPEG_SCANS`` scans; -1
    past ``MAX_JPEG_MARKERS_AFTER_SCAN`` markers."""
    scans, end = 0, len(data)
    for _ in range(MAX_JPEG_MARKERS_AFTER_SCAN):
        if data[pos:pos + 1] != b"\xff":  # not at a marker: find the next one
            found = _NEXT_MARKER.search(data, pos)
            if found is None:
                return scans
            pos = found.start()
        if pos + 1 >= end:
            return scans
        marker = data[pos + 1]
        if marker == 0xD9:  # end of image
            return scans
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker == 0xDA:
            scans += 1
            if scans > MAX_JPEG_SCANS:
                return scans
        if marker in _NO_LENGTH:
            pos += 2
            continue
        if pos + 4 > end:
            return scans
        pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
    return -1


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

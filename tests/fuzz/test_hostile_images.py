"""Header-expensive images of every format (issue 10, finding 4): refused before Pillow
parses them, by a walk of a few thousand steps at most; real images are not affected; and
no lock serialises header parsing across threads."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from testing.hostile_images import HOSTILE, jpeg_many_scans
from transformer.imageguard import (
    ALLOWED_FORMATS,
    MAX_JPEG_SCANS,
    JpegFrame,
    chunk_budget,
    jpeg_frame,
    why_refused,
)
from transformer.images import ImageInputError, decode_image

SIZE = 1_000_000  # 1 MB each: Pillow spends 0.6-2 s on most of these (20 MB: ~30 s)

REASONS = {
    "png-text-chunks": "PNG image has more than 1268 chunks for its",
    "png-empty-idats": "PNG image has more than 1268 chunks for its",
    "jpeg-comment-markers": "JPEG image has more than 4096 markers or padding bytes",
    "jpeg-fill-bytes": "JPEG image has more than 4096 markers or padding bytes",
    "jpeg-junk-bytes": "JPEG image has more than 4096 markers or padding bytes",
    "gif-comment-subblocks": "GIF image has more than 4096 extension blocks",
    "gif-comment-extensions": "GIF image has more than 4096 extension blocks",
    "webp-unknown-chunks": "WebP image has more than 1268 chunks for its",
    "bmp-rle8": "run-length encoded BMP images are not accepted",
    "tiff-strip-offsets": "TIFF images are not accepted (accepted: PNG, JPEG, WebP, GIF, BMP)",
    "jpeg-many-scans": "JPEG image has more than 100 scans",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_header_expensive_images_are_refused_before_pillow(name: str) -> None:
    data = HOSTILE[name](SIZE)
    assert SIZE * 0.9 < len(data) < SIZE * 1.5
    with pytest.raises(ImageInputError) as excinfo:
        decode_image(data)
    assert excinfo.value.reason.startswith(REASONS[name]), excinfo.value.reason


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_the_walk_is_bounded_whatever_the_size(name: str) -> None:
    # 20 MB, the largest image accepted: the walk stops at its budget, so its cost does
    # not grow with the size (timed in bench/worst_case.py, not asserted here).
    data = HOSTILE[name](20_000_000)
    reason = why_refused(data)
    assert reason is not None and reason.startswith(REASONS[name].replace("1268", str(
        chunk_budget(len(data))))), reason


def _photo(size: tuple[int, int]) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.mark.parametrize("fmt", ALLOWED_FORMATS)
def test_real_images_stay_within_the_budgets(fmt: str) -> None:
    # Large ones, with the metadata cameras and editors write (EXIF, ICC, text, XMP).
    img = _photo((1500, 1000))
    buf = io.BytesIO()
    params: dict[str, object] = {}
    if fmt == "PNG":
        info = PngImagePlugin.PngInfo()
        for i in range(50):
            info.add_text(f"key{i}", "value " * 20)
        params = {"pnginfo": info, "icc_profile": b"\0" * 3000}
    elif fmt == "JPEG":
        params = {"exif": Image.Exif().tobytes() + b"\0" * 20_000, "icc_profile": b"\0" * 200_000,
                  "quality": 95, "progressive": True}
    elif fmt == "GIF":
        img = img.quantize(256)
        params = {"comment": b"c" * 100_000}
    elif fmt == "WEBP":
        params = {"exif": b"\0" * 20_000, "icc_profile": b"\0" * 3000}
    img.save(buf, fmt, **params)
    data = buf.getvalue()
    assert why_refused(data) is None, fmt
    assert decode_image(data).shape == (3, 224, 224)


def _scans(n: int) -> bytes:
    """A 256 x 256 progressive JPEG of exactly ``n`` scans (n >= 10)."""
    return jpeg_many_scans(0, side=256, scans=n)


def test_jpeg_scans_are_counted_up_to_the_limit() -> None:
    # Each scan of a progressive JPEG is a pass over the whole image (issue 19, item 4):
    # the walk goes on past the first start-of-scan and counts them.
    frame = jpeg_frame(_scans(MAX_JPEG_SCANS))
    assert isinstance(frame, JpegFrame) and frame.scans == MAX_JPEG_SCANS and frame.progressive
    assert why_refused(_scans(MAX_JPEG_SCANS)) is None
    assert decode_image(_scans(MAX_JPEG_SCANS)).shape == (3, 224, 224)
    reason = why_refused(_scans(MAX_JPEG_SCANS + 1))
    assert reason == ("JPEG image has more than 100 scans: refused (each scan of a "
                      "progressive JPEG is a decoding pass over the whole image)")
    # Real encoders: libjpeg's simple progression, baseline, restart markers, gray.
    for kwargs, mode, scans in ((dict(progressive=True), "RGB", 10), ({}, "RGB", 1),
                                (dict(progressive=True, restart_marker_blocks=2), "RGB", 10),
                                (dict(progressive=True), "L", 6)):
        buf = io.BytesIO()
        _photo((300, 200)).convert(mode).save(buf, "JPEG", **kwargs)
        found = jpeg_frame(buf.getvalue())
        assert isinstance(found, JpegFrame) and found.scans == scans, (kwargs, mode, found)


def test_animated_webp_with_many_frames_is_accepted() -> None:
    frames = [Image.new("RGB", (32, 32), (i, 0, 0)) for i in range(200)]
    buf = io.BytesIO()
    frames[0].save(buf, "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    assert why_refused(buf.getvalue()) is None


@pytest.fixture
def stalled_png_open(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """PNG header parsing that stalls until the returned event is set: a stand-in for a
    slow header (the real slow ones are refused now, so one is simulated)."""
    release = threading.Event()
    real = PngImagePlugin.PngImageFile._open

    def stalled(self: PngImagePlugin.PngImageFile) -> None:
        release.wait(10)
        real(self)

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "_open", stalled)
    yield release
    release.set()


def test_header_parsing_is_not_serialised(stalled_png_open: threading.Event) -> None:
    png, jpeg = io.BytesIO(), io.BytesIO()
    _photo((64, 64)).save(png, "PNG")
    _photo((64, 64)).save(jpeg, "JPEG")
    stuck = threading.Thread(target=decode_image, args=(png.getvalue(),), daemon=True)
    stuck.start()
    time.sleep(0.2)  # the PNG is inside Image.open now
    done = threading.Event()

    def decode_jpeg() -> None:
        decode_image(jpeg.getvalue())
        done.set()

    threading.Thread(target=decode_jpeg, daemon=True).start()
    # Before, a global lock around Image.open made this wait for the stalled PNG.
    assert done.wait(5), "decoding a JPEG waited for another thread's header parsing"
    stalled_png_open.set()
    stuck.join(10)

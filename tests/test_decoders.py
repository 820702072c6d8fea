"""The native decode path gives the same bytes as the all-Pillow one, over a broad corpus.

``decode_image(impl="native")`` (libspng / libjpeg-turbo through imagecodecs where proven,
the compiled port of Pillow's bicubic resize) against ``decode_image(impl="pillow")``
(today's path, itself checked against DreamSim in ``tests/test_preprocessing.py``): every
PNG colour type and bit depth, interlaced or not, with and without tRNS, every row filter,
ancillary chunks; JPEG baseline/progressive, every subsampling, gray, CMYK, Adobe RGB,
restart markers; sizes from 1x1 to photographs; corrupt and truncated files.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.imagecorpus import Sample, jpeg_corpus, photo_pixels, png_bytes, png_corpus
from transformer.decoders import _png_8bit, native_pixels
from transformer.images import ImageInputError, decode_image
from transformer.resize import coefficients, resize_bicubic

# Pillow warns on every palette PNG with tRNS when converting to RGB; that is the point here.
pytestmark = pytest.mark.filterwarnings("ignore:Palette images with Transparency:UserWarning")

PNG_SAMPLES = list(png_corpus())
JPEG_SAMPLES = list(jpeg_corpus())


def outcome(data: bytes, impl: str) -> np.ndarray | str:
    """The tensor, or the client-facing reason of the refusal."""
    try:
        return decode_image(data, impl=impl)  # type: ignore[arg-type]
    except ImageInputError as e:
        return f"refused: {e.reason}"


def assert_same(data: bytes, name: str) -> None:
    old, new = outcome(data, "pillow"), outcome(data, "native")
    if isinstance(old, str) or isinstance(new, str):
        assert old == new if isinstance(old, str) and isinstance(new, str) else False, (
            f"{name}: pillow {old if isinstance(old, str) else 'decodes'}, "
            f"native {new if isinstance(new, str) else 'decodes'}")
        return
    assert new.dtype == np.uint8 and new.shape == (3, 224, 224) and new.flags.c_contiguous
    assert np.array_equal(old, new), f"{name}: {int((old != new).sum())} values differ"


def fast_path_taken(sample: Sample) -> bool:
    with Image.open(io.BytesIO(sample.data)) as img:
        return native_pixels(img, sample.data) is not None


def test_png_corpus_identical() -> None:
    for sample in PNG_SAMPLES:
        assert_same(sample.data, sample.name)


def test_jpeg_corpus_identical() -> None:
    for sample in JPEG_SAMPLES:
        assert_same(sample.data, sample.name)


def test_fast_decoders_cover_the_proven_kinds_and_only_those() -> None:
    """So that the identity above is the fast decoders', not Pillow's with itself."""
    for sample in PNG_SAMPLES:
        data = sample.data
        depth, color_type = data[24], data[25]
        expected = depth <= 8 and color_type in (0, 2, 3, 6)
        assert fast_path_taken(sample) == expected, sample.name
    for sample in JPEG_SAMPLES:
        assert fast_path_taken(sample) == ("CMYK" not in sample.name), sample.name


def test_own_png_path_covers_8bit_gray_rgb_rgba_every_filter() -> None:
    """libdeflate + the compiled unfilter (not libspng) decode these, identically."""
    taken = 0
    for sample in PNG_SAMPLES:
        data = sample.data
        width, height = struct.unpack(">II", data[16:24])
        own = _png_8bit(data, (width, height))
        expected = data[24] == 8 and data[25] in (0, 2, 6) and data[28] == 0
        assert (own is not None) == expected, sample.name
        if own is not None:
            taken += 1
            with Image.open(io.BytesIO(data)) as img:
                want = np.asarray(img.convert("RGB"))
            got = own if own.ndim == 3 else own[:, :, None]
            assert np.array_equal(np.broadcast_to(got[:, :, :3], want.shape), want), sample.name
    assert taken >= 60


def test_photographs_identical() -> None:
    """Real photographs at the sizes clients send, both formats, gray and colour."""
    from testing.photos import make_images

    for image in make_images(8, seed=5, min_side=480, max_side=1100):
        assert_same(image.data, f"{image.fmt} {image.mode} {image.width}x{image.height}")


def test_animated_png_and_other_formats_go_to_pillow() -> None:
    frames = [Image.fromarray(photo_pixels(40, 30, seed=s)) for s in (1, 2)]
    buf = io.BytesIO()
    frames[0].save(buf, "PNG", save_all=True, append_images=frames[1:])
    apng = buf.getvalue()
    assert b"acTL" in apng
    for data in (apng, _encode(frames[0], "GIF"), _encode(frames[0], "WEBP", lossless=True),
                 _encode(frames[0], "BMP"), _encode(frames[0], "TIFF")):
        with Image.open(io.BytesIO(data)) as img:
            assert native_pixels(img, data) is None, img.format
        assert_same(data, "other format")


def _encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


# --- corrupt and truncated files: the same verdict as before ------------------------------

_DAMAGE_SOURCES = [
    ("png rgb", png_bytes(photo_pixels(45, 31, seed=9), 2, 8, idat_split=200)),
    ("png palette", next(s.data for s in PNG_SAMPLES if "type3 8bit" in s.name)),
    ("jpeg 4:2:0", next(s.data for s in JPEG_SAMPLES if "sub2" in s.name)),
    ("jpeg progressive", next(s.data for s in JPEG_SAMPLES if "sub0 progressive" in s.name)),
]


@pytest.mark.parametrize("name,data", _DAMAGE_SOURCES, ids=[n for n, _ in _DAMAGE_SOURCES])
def test_truncated_files_same_verdict(name: str, data: bytes) -> None:
    step = max(1, len(data) // 60)
    for cut in range(8, len(data), step):
        assert_same(data[:cut], f"{name} cut at {cut}/{len(data)}")


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(which=st.integers(0, len(_DAMAGE_SOURCES) - 1), where=st.floats(0.0, 1.0),
       value=st.integers(0, 255), count=st.integers(1, 3))
def test_corrupted_bytes_same_verdict(which: int, where: float, value: int,
                                      count: int) -> None:
    name, data = _DAMAGE_SOURCES[which]
    damaged = bytearray(data)
    start = min(len(data) - 1, 8 + int(where * (len(data) - 8)))
    for i in range(start, min(start + count, len(data))):
        damaged[i] = value
    assert_same(bytes(damaged), f"{name} with {count} byte(s) = {value} at {start}")


def test_png_bad_crc_and_trailing_data_same_verdict() -> None:
    data = png_bytes(photo_pixels(20, 10, seed=4), 2, 8)
    idat = data.index(b"IDAT")
    length = struct.unpack(">I", data[idat - 4:idat])[0]
    crc_at = idat + 4 + length
    bad_crc = data[:crc_at] + bytes(4) + data[crc_at + 4:]
    no_iend = data[:-12]
    garbage_after = data + b"garbage" * 10
    extra_idat_after = data[:-12] + png_chunk(b"tEXt", b"late\x00chunk") + data[-12:]
    for label, variant in (("bad IDAT crc", bad_crc), ("no IEND", no_iend),
                           ("garbage after IEND", garbage_after),
                           ("chunk after IDAT", extra_idat_after)):
        assert_same(variant, label)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(
        ">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


# --- the resize port against Pillow's resize ---------------------------------------------

def pillow_resize(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BICUBIC))


@pytest.mark.parametrize("shape", [(1, 1), (1, 500), (500, 1), (2, 3), (224, 224), (224, 225),
                                   (225, 224), (223, 1000), (1000, 223), (1100, 743),
                                   (37, 4000)])
def test_resize_matches_pillow_to_224(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(shape[0] * 7919 + shape[1])
    for pixels in (rng.integers(0, 256, (*shape, 3), dtype=np.uint8),
                   rng.integers(0, 256, shape, dtype=np.uint8)):
        assert np.array_equal(resize_bicubic(pixels, (224, 224)),
                              pillow_resize(pixels, (224, 224)))


@settings(max_examples=120, deadline=None)
@given(h=st.integers(1, 700), w=st.integers(1, 700), oh=st.integers(1, 400),
       ow=st.integers(1, 400), gray=st.booleans(), seed=st.integers(0, 2**16))
def test_resize_matches_pillow_any_sizes(h: int, w: int, oh: int, ow: int, gray: bool,
                                         seed: int) -> None:
    """Up- and down-scaling, 1xN and Nx1, photographs and noise (extreme values)."""
    rng = np.random.default_rng(seed)
    pixels = (photo_pixels(w, h, seed=seed) if seed % 2 else
              rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    if gray:
        pixels = np.ascontiguousarray(pixels[:, :, 1])
    assert np.array_equal(resize_bicubic(pixels, (ow, oh)), pillow_resize(pixels, (ow, oh)))


def test_resize_ignores_a_fourth_channel() -> None:
    rgba = np.random.default_rng(3).integers(0, 256, (300, 200, 4), dtype=np.uint8)
    assert np.array_equal(resize_bicubic(rgba, (224, 224)),
                          pillow_resize(np.ascontiguousarray(rgba[:, :, :3]), (224, 224)))


def test_resize_coefficients_are_pillows_fixed_point() -> None:
    """Each output's integer weights sum to 1.0 in 22-bit fixed point, within rounding."""
    for in_size, out_size in ((1000, 224), (224, 224), (100, 224), (3, 224)):
        xmin, xmax, kk = coefficients(in_size, out_size)
        assert (xmin >= 0).all() and (xmin + xmax <= in_size).all()
        sums = kk.astype(np.int64).sum(axis=1)
        assert (np.abs(sums - (1 << 22)) <= kk.shape[1]).all()


def test_port_checks_itself_against_the_installed_pillow() -> None:
    """``decode_image`` uses the port only when this start-up check passes: it must pass
    with the Pillow the project installs, else the speed-up silently disappears."""
    from transformer.resize import matches_pillow

    assert matches_pillow()


# --- base64: pybase64 on the fast path gives the standard library's answer ----------------

@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300), cut=st.integers(0, 8), char=st.sampled_from(
    ["", "=", "-", "_", "é", " ", "A", "/"]), where=st.floats(0, 1))
def test_base64_fast_path_same_answer_as_before(data: bytes, cut: int, char: str,
                                                where: float) -> None:
    """Canonical strings and near-misses (a character replaced, the end cut) decode to the
    same bytes, or are refused with the same reason, as with ``base64.b64decode``."""
    import base64

    from transformer import images

    text = base64.b64encode(data).decode()
    if text:
        at = int(where * (len(text) - 1))
        text = (text[:at] + char + text[at + 1:])[:max(1, len(text) - cut)]

    def answer(decoder: object) -> object:
        saved = images.pybase64
        images.pybase64 = decoder  # type: ignore[assignment]
        try:
            return images.parse_image_input(text, max_bytes=10**6).data
        except ImageInputError as e:
            return e.reason
        finally:
            images.pybase64 = saved

    assert answer(images.pybase64) == answer(base64)

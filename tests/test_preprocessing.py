"""`transformer.images` against DreamSim's own preprocess, bit for bit, and its input errors.

Needs no weights: the oracle is DreamSim 0.2.1's preprocessing (torchvision + Pillow) applied
to real photographs from ``skimage.data`` in many formats, modes and sizes.
"""

from __future__ import annotations

import base64
import io
import struct
import time
import warnings
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from typing import Any

import numpy as np
import pytest
import skimage.data
import torch
from dreamsim.config import dreamsim_args
from PIL import Image, ImageOps
from torchvision import transforms

from transformer.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_SIZE,
    ImageInputError,
    ImageRef,
    decode_image,
    parse_image_input,
)

# DreamSim 0.2.1 builds its preprocess as a closure inside `dreamsim.model.dreamsim()`, which
# also loads the weights, so it cannot be imported alone: it is rebuilt here line for line
# from dreamsim/model.py.
_DREAMSIM_T = transforms.Compose(
    [
        transforms.Resize(
            (dreamsim_args["img_size"], dreamsim_args["img_size"]),
            interpolation=transforms.InterpolationMode.BICUBIC,
        ),
        transforms.ToTensor(),
    ]
)


def dreamsim_preprocess(pil_img: Image.Image) -> torch.Tensor:
    """DreamSim 0.2.1's `preprocess(pil_img)`: [1, 3, 224, 224] float in [0, 1]."""
    pil_img = pil_img.convert("RGB")
    return _DREAMSIM_T(pil_img).unsqueeze(0)


def oracle(data: bytes, frame: int = 0) -> np.ndarray:
    """What DreamSim feeds its backbones for `data`, as uint8 CHW (x/255*255 is exact)."""
    img = Image.open(BytesIO(data))
    img.seek(frame)
    tensor = dreamsim_preprocess(img)[0]
    return (tensor * 255).round().to(torch.uint8).numpy()


def photo(name: str, size: tuple[int, int] | None = None) -> Image.Image:
    """A photograph from skimage.data as an RGB PIL image, optionally resized to (w, h)."""
    img = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
    return img if size is None else img.resize(size, Image.Resampling.LANCZOS)


def encode(img: Image.Image, fmt: str, **params: Any) -> bytes:
    buf = BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def with_alpha(img: Image.Image) -> Image.Image:
    """Add a diagonal alpha gradient (a real, varying alpha channel)."""
    w, h = img.size
    alpha = (np.add.outer(np.arange(h), np.arange(w)) * 255 // max(w + h - 2, 1)).astype(np.uint8)
    out = img.copy()
    out.putalpha(Image.fromarray(alpha))
    return out


def palette_with_transparency(img: Image.Image) -> Image.Image:
    out = img.quantize(64)
    out.info["transparency"] = 3
    return out


def la(img: Image.Image) -> Image.Image:
    return with_alpha(img.convert("L")).convert("LA") if img.mode != "LA" else img


def i16(img: Image.Image) -> Image.Image:
    """16-bit greyscale that uses the full range (Pillow clips it to 255 in convert("RGB"))."""
    grey = np.asarray(img.convert("L"), dtype="<u2") * 3
    out = Image.fromarray(grey)
    assert out.mode == "I;16"
    return out


MODES: dict[str, Callable[[Image.Image], Image.Image]] = {
    "RGB": lambda im: im,
    "RGBA": with_alpha,
    "P": lambda im: im.quantize(256),
    "P+transparency": palette_with_transparency,
    "LA": la,
    "L": lambda im: im.convert("L"),
    "CMYK": lambda im: im.convert("CMYK"),
    "I;16": i16,
    "1": lambda im: im.convert("1"),
}

# (format, mode, photograph, size or None for the original); sizes cover non-square,
# tiny (1x1, 3x500), upscaling (50x40) and exactly 224x224 (no resize at all).
CASES: list[tuple[str, str, str, tuple[int, int] | None]] = [
    ("PNG", "RGB", "astronaut", None),
    ("PNG", "RGB", "coffee", (1, 1)),
    ("PNG", "RGB", "rocket", (3, 500)),
    ("PNG", "RGB", "chelsea", (500, 3)),
    ("PNG", "RGB", "coffee", (50, 40)),
    ("PNG", "RGB", "astronaut", (224, 224)),
    ("PNG", "RGB", "rocket", (225, 223)),
    ("PNG", "RGBA", "chelsea", None),
    ("PNG", "P", "coffee", (300, 200)),
    ("PNG", "P+transparency", "astronaut", (120, 160)),
    ("PNG", "LA", "rocket", (320, 213)),
    ("PNG", "L", "camera", None),
    ("PNG", "I;16", "camera", (256, 200)),
    ("PNG", "1", "chelsea", None),
    ("JPEG", "RGB", "coffee", None),
    ("JPEG", "RGB", "rocket", (50, 40)),
    ("JPEG", "L", "astronaut", (333, 250)),
    ("JPEG", "CMYK", "chelsea", None),
    ("WEBP", "RGB", "rocket", None),
    ("WEBP", "RGBA", "astronaut", (200, 300)),
    ("GIF", "P", "chelsea", None),
    ("GIF", "L", "coffee", (97, 61)),
    ("BMP", "RGB", "astronaut", (640, 480)),
    ("BMP", "P", "rocket", (123, 77)),
    ("BMP", "1", "coffee", None),
]

# Where Pillow reads a file back in another mode than it was written from.
READ_BACK_MODE = {("PNG", "P+transparency"): "P", ("GIF", "L"): "P"}


def case_bytes(fmt: str, mode: str, name: str, size: tuple[int, int] | None) -> bytes:
    img = MODES[mode](photo(name, size))
    params: dict[str, Any] = {}
    if fmt == "JPEG":
        params["quality"] = 90
    if fmt == "WEBP":
        params["quality"] = 90
    if mode == "P+transparency":
        params["transparency"] = 3
    return encode(img, fmt, **params)


@pytest.mark.parametrize(
    ("fmt", "mode", "name", "size"),
    CASES,
    ids=[f"{f}-{m}-{n}-{'x'.join(map(str, s)) if s else 'orig'}" for f, m, n, s in CASES],
)
def test_decode_matches_dreamsim_preprocess(
    fmt: str, mode: str, name: str, size: tuple[int, int] | None
) -> None:
    data = case_bytes(fmt, mode, name, size)
    with Image.open(BytesIO(data)) as img:  # the fixture really is what it claims to be
        assert img.format == fmt
        assert img.mode == READ_BACK_MODE.get((fmt, mode), mode)

    out = decode_image(data)

    assert out.dtype == np.uint8
    assert out.shape == (3, IMAGE_SIZE, IMAGE_SIZE)
    assert out.flags["C_CONTIGUOUS"]
    assert np.array_equal(out, oracle(data))


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP"])
def test_animated_image_uses_first_frame(fmt: str) -> None:
    frames = [photo("astronaut", (160, 120)), photo("coffee", (160, 120))]
    if fmt == "GIF":
        frames = [f.quantize(256) for f in frames]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100)
    with Image.open(BytesIO(data)) as img:
        assert getattr(img, "n_frames", 1) == 2

    out = decode_image(data)

    assert np.array_equal(out, oracle(data, frame=0))
    assert not np.array_equal(out, oracle(data, frame=1))


def test_decode_is_thread_safe_and_leaves_warning_filters_alone() -> None:
    inputs = [case_bytes(*c) for c in CASES[:8]]
    expected = [decode_image(d) for d in inputs]
    filters_before = list(warnings.filters)

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(decode_image, inputs * 8))

    for i, out in enumerate(results):
        assert np.array_equal(out, expected[i % len(inputs)])
    assert warnings.filters == filters_before


# --- decode errors ---------------------------------------------------------------------------


def _chunk(tag: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + tag
        + payload
        + struct.pack(">I", zlib.crc32(tag + payload))
    )


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims `width` x `height` and that has no pixel data at all."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IEND", b"")


def reason_of(excinfo: pytest.ExceptionInfo[ImageInputError]) -> str:
    reason = excinfo.value.reason
    assert "Traceback" not in reason and "\n" not in reason
    return reason


@pytest.mark.parametrize(
    "data",
    [b"hello, this is not an image", b"", b"\x89PNG\r\n"],
    ids=["text", "empty", "png-signature-only"],
)
def test_non_image_bytes(data: bytes) -> None:
    with pytest.raises(ImageInputError) as excinfo:
        decode_image(data)
    assert reason_of(excinfo) == (
        "not a recognised image format (accepted: PNG, JPEG, WebP, GIF, BMP)")


def _isobmff(brand: bytes) -> bytes:
    """The ``ftyp`` box an AVIF or HEIC file starts with, plus filler."""
    return (24).to_bytes(4, "big") + b"ftyp" + brand + bytes(4) + b"mif1" + brand + bytes(64)


@pytest.mark.parametrize(("data", "name"), [
    (_isobmff(b"avif"), "AVIF"), (_isobmff(b"heic"), "HEIC/HEIF"), (_isobmff(b"mif1"), "HEIC/HEIF"),
    (b"%PDF-1.4\n" + bytes(200), "PDF"), (b"<?xml version='1.0'?><svg xmlns='x'/>", "SVG"),
    (b"\xff\x0a" + bytes(64), "JPEG XL"), (b"\x00\x00\x01\x00" + bytes(64), "ICO"),
], ids=["avif", "heic", "heif", "pdf", "svg", "jxl", "ico"])
def test_known_but_refused_formats_are_named(data: bytes, name: str) -> None:
    """A phone's HEIC or a browser's AVIF is named, with the formats that are accepted."""
    with pytest.raises(ImageInputError) as excinfo:
        decode_image(data)
    assert reason_of(excinfo) == (
        f"{name} images are not accepted (accepted: PNG, JPEG, WebP, GIF, BMP): convert it first")


def test_a_real_avif_is_named() -> None:
    """Pillow 13 writes AVIF: the file it makes is refused by name, not as unknown bytes."""
    from PIL import features

    if not features.check("avif"):
        pytest.skip("this Pillow has no AVIF encoder")
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(buf, format="AVIF")
    with pytest.raises(ImageInputError) as excinfo:
        decode_image(buf.getvalue())
    assert reason_of(excinfo).startswith("AVIF images are not accepted")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_image(fmt: str) -> None:
    data = encode(photo("astronaut"), fmt)
    with pytest.raises(ImageInputError) as excinfo:
        decode_image(data[: len(data) // 2])
    assert reason_of(excinfo) == "truncated or corrupt image data"


def test_corrupt_png_data() -> None:
    data = bytearray(encode(photo("coffee", (64, 48)), "PNG"))
    idat = data.index(b"IDAT")
    data[idat + 10 : idat + 60] = bytes(50)  # CRC mismatch / broken zlib stream
    with pytest.raises(ImageInputError) as excinfo:
        decode_image(bytes(data))
    assert reason_of(excinfo) == "truncated or corrupt image data"


def test_pixel_limit_with_small_max_pixels() -> None:
    data = encode(photo("coffee", (50, 40)), "PNG")
    assert decode_image(data, max_pixels=2000).shape == (3, IMAGE_SIZE, IMAGE_SIZE)
    with pytest.raises(ImageInputError) as excinfo:
        decode_image(data, max_pixels=1999)
    assert reason_of(excinfo) == "image is 50x40 = 2000 pixels, over the limit of 1999"


def test_pixel_limit_checked_from_header_before_decoding() -> None:
    # No IDAT at all: had it tried to decode, the reason would be "truncated".
    with pytest.raises(ImageInputError) as excinfo:
        decode_image(png_header_only(5000, 5000), max_pixels=1_000_000)
    assert reason_of(excinfo) == "image is 5000x5000 = 25000000 pixels, over the limit of 1000000"


@pytest.mark.parametrize(
    ("width", "height"),
    [(10_000, 10_000), (100_000, 100_000)],
    ids=["over-pillow-warning-limit", "over-pillow-error-limit"],
)
def test_header_claiming_huge_dimensions(width: int, height: int) -> None:
    start = time.perf_counter()
    with pytest.raises(ImageInputError) as excinfo:
        decode_image(png_header_only(width, height))
    assert time.perf_counter() - start < 1.0
    # Above twice Pillow's limit Pillow refuses it itself; between the two, our own check
    # (which applies Pillow's limit too) does.
    size = f"{width * height}" if width * height > 2 * DEFAULT_MAX_PIXELS else (
        f"{width}x{height} = {width * height}")
    assert reason_of(excinfo) == (
        f"image is {size} pixels, over the limit of {DEFAULT_MAX_PIXELS}"
    )


@pytest.mark.parametrize("dims", [(0, 10), (10, 0)])
def test_zero_size_header(dims: tuple[int, int]) -> None:
    # Pillow 13 refuses to identify a zero-width/height PNG, so the decoder's own
    # zero-size check is a guard for other plugins; either reason is a clean 400.
    with pytest.raises(ImageInputError) as excinfo:
        decode_image(png_header_only(*dims))
    assert reason_of(excinfo) in (
        "image has zero width or height",
        "not a recognised image format (accepted: PNG, JPEG, WebP, GIF, BMP)")


# --- parse_image_input -----------------------------------------------------------------------

MAX_BYTES = 20_000_000


@pytest.fixture(scope="module")
def png() -> bytes:
    data = encode(photo("chelsea", (150, 100)), "PNG")
    if len(data) % 3 == 0:  # make sure the standard encoding carries '=' padding
        data += b"\0"  # bytes after IEND are ignored by decoders
    return data


def _variants(raw: bytes) -> dict[str, str]:
    std = base64.b64encode(raw).decode()
    urlsafe = base64.urlsafe_b64encode(raw).decode()
    assert std.endswith("=") and std != urlsafe  # the variants really differ
    return {
        "plain": std,
        "mime-newlines": base64.encodebytes(raw).decode(),
        "surrounding-whitespace": f"  \n\t{std}\r\n  ",
        "embedded-spaces": " ".join(std[i : i + 10] for i in range(0, len(std), 10)),
        "urlsafe": urlsafe,
        "urlsafe-no-padding": urlsafe.rstrip("="),
        "no-padding": std.rstrip("="),
        "data-uri-png": f"data:image/png;base64,{std}",
        "data-uri-wrong-type": f"data:image/jpeg;base64,{std}",
        "data-uri-no-type": f"data:;base64,{std}",
        "data-uri-params": f"data:image/png;name=cat.png;base64,{std}",
        "data-uri-uppercase": f"DATA:IMAGE/PNG;BASE64,{std}",
        "data-uri-urlsafe-wrapped": "data:image/png;base64,"
        + "\n".join(urlsafe[i : i + 64] for i in range(0, len(urlsafe), 64)),
    }


@pytest.mark.parametrize("variant", list(_variants(b"\xfb\xff\xfe\x01").keys()))
def test_base64_variants_decode_to_the_same_pixels(png: bytes, variant: str) -> None:
    ref = parse_image_input(_variants(png)[variant], max_bytes=MAX_BYTES)
    assert ref == ImageRef(url=None, data=png)
    assert ref.data is not None
    assert np.array_equal(decode_image(ref.data), oracle(png))


@pytest.mark.parametrize(
    "url",
    ["http://example.com/a.png", "https://example.com/a.png?x=1", "HTTPS://Example.COM/A.PNG"],
)
def test_http_urls(url: str) -> None:
    assert parse_image_input(f" {url}\n", max_bytes=MAX_BYTES) == ImageRef(url=url, data=None)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "empty image string"),
        ("  \n\t ", "empty image string"),
        ("====", "empty image string"),
        ("data:image/png;base64,", "empty image string"),
        ("iVBORw0KGgoAAAAN$UhEUgAA", "not valid base64 (invalid character at position 16)"),
        ("  iVBORw0KGgoAAAAN$UhEUgAA", "not valid base64 (invalid character at position 18)"),
        ("data:image/png;base64,AAAA*AAA", "not valid base64 (invalid character at position 26)"),
        ("QUJD\u00e9", "not valid base64 (invalid character at position 4)"),
        ("QUJDR", "not valid base64 (truncated: length is 1 more than a multiple of 4)"),
        ("QU=JD", "not valid base64 ('=' padding in the wrong place)"),
        ("QQ===", "not valid base64 ('=' padding in the wrong place)"),
        (
            "ftp://example.com/a.png",
            "unsupported URL scheme 'ftp'; use http(s), a data URI or base64",
        ),
        ("file:///etc/passwd", "unsupported URL scheme 'file'; use http(s), a data URI or base64"),
        ("gopher://x/1", "unsupported URL scheme 'gopher'; use http(s), a data URI or base64"),
        ("FTP://x/a.png", "unsupported URL scheme 'ftp'; use http(s), a data URI or base64"),
        ("http://", "URL has no host"),
        ("https:///a.png", "URL has no host"),
        (
            "data:image/png,%89PNG",
            "data URI is not base64-encoded; use 'data:<media type>;base64,<data>'",
        ),
        ("data:image/png;base64", "data URI has no ',' between its header and its data"),
    ],
)
def test_parse_errors(value: str, reason: str) -> None:
    with pytest.raises(ImageInputError) as excinfo:
        parse_image_input(value, max_bytes=MAX_BYTES)
    assert reason_of(excinfo) == reason


@pytest.mark.parametrize(
    ("value", "reason"),
    [  # lengths that are multiples of 4: they try the strict fast path first
        ("QU=D", "not valid base64 ('=' padding in the wrong place)"),
        ("Q=D=", "not valid base64 ('=' padding in the wrong place)"),
        ("QUJ\u00e9", "not valid base64 (invalid character at position 3)"),
        ("QUJ$", "not valid base64 (invalid character at position 3)"),
        ("=QUJ", "not valid base64 ('=' padding in the wrong place)"),
    ],
)
def test_fast_path_failures_get_the_lenient_paths_reasons(value: str, reason: str) -> None:
    with pytest.raises(ImageInputError) as excinfo:
        parse_image_input(value, max_bytes=MAX_BYTES)
    assert reason_of(excinfo) == reason


@pytest.mark.parametrize("size", [30, 31, 32])  # padding "", "==", "="
def test_fast_path_size_limit_is_exact(size: int) -> None:
    raw = bytes(range(size))
    encoded = base64.b64encode(raw).decode()
    assert parse_image_input(encoded, max_bytes=size).data == raw
    with pytest.raises(ImageInputError, match="decoded, over the"):
        parse_image_input(encoded, max_bytes=size - 1)


def test_non_string_input() -> None:
    with pytest.raises(ImageInputError) as excinfo:
        parse_image_input(b"QUJD", max_bytes=MAX_BYTES)  # type: ignore[arg-type]
    assert reason_of(excinfo) == "image must be a string, not bytes"


def test_decoded_size_limit(png: bytes) -> None:
    encoded = base64.b64encode(png).decode()
    assert parse_image_input(encoded, max_bytes=len(png)).data == png
    with pytest.raises(ImageInputError) as excinfo:
        parse_image_input(encoded, max_bytes=len(png) - 1)
    reason = reason_of(excinfo)
    assert reason.startswith(f"image is {len(png) / 1e6:.1f} MB decoded, over the ")
    assert reason.endswith(" MB limit")


class _Untouchable:
    """Stands in for a scanner or decoder that a size refusal must never reach."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __getattr__(self, attr: str) -> Any:
        raise AssertionError(f"{self.name}.{attr} used: the string was scanned or decoded")


def test_huge_string_rejected_without_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    import transformer.images as images

    # Length check only: no regular-expression scan, no whitespace strip, no decode.
    for name in ("_B64_INVALID_RE", "_WHITESPACE_RE", "pybase64", "base64", "binascii"):
        monkeypatch.setattr(images, name, _Untouchable(name))
    huge = "A" * 80_000_000  # 60 MB decoded
    with pytest.raises(ImageInputError) as excinfo:
        parse_image_input(huge, max_bytes=MAX_BYTES)
    assert reason_of(excinfo) == "image is about 60.0 MB decoded, over the 20 MB limit"


def test_fast_mode_only_changes_large_jpegs() -> None:
    """DECODE_MODE=fast: JPEG draft decoding changes pixels a little on large JPEGs, and
    nothing elsewhere (the distance deviation is measured by the benchmark)."""
    from skimage import data as skdata

    photo = Image.fromarray(skdata.astronaut()).resize((1024, 1024))
    jpeg, png = encode(photo, "JPEG", quality=92), encode(photo, "PNG")
    exact, fast = decode_image(jpeg), decode_image(jpeg, fast=True)
    diff = np.abs(exact.astype(np.int16) - fast.astype(np.int16))
    assert 0 < diff.mean() < 3, diff.mean()
    assert np.array_equal(decode_image(png), decode_image(png, fast=True))
    small = encode(photo.resize((300, 200)), "JPEG")  # no draft scale fits: unchanged
    assert np.array_equal(decode_image(small), decode_image(small, fast=True))


def test_exif_orientation_is_not_applied_as_in_dreamsim() -> None:
    """Decided: keep DreamSim parity. A JPEG tagged 'rotate 90' decodes to its stored
    pixels, exactly as DreamSim's preprocess sees them, not to the rotated picture."""
    img = photo("chelsea")  # 451x300, not square: a rotation would change everything
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    data = encode(img, "JPEG", quality=95, exif=exif.tobytes())
    assert Image.open(BytesIO(data)).getexif()[0x0112] == 6
    got = decode_image(data)
    assert np.array_equal(got, oracle(data))
    rotated = encode(ImageOps.exif_transpose(Image.open(BytesIO(data))), "PNG")
    assert not np.array_equal(got, decode_image(rotated))

"""Property-based tests of image input parsing and decoding (no server).

Properties:
- ``parse_image_input`` and ``decode_image`` raise nothing but ``ImageInputError`` on any
  input (arbitrary text, including lone surrogates as JSON's ``\\ud800`` escapes produce;
  arbitrary bytes, bytes behind real format signatures; mutated and truncated real files);
- a URL that ``parse_image_input`` accepts makes the fetcher fail only with ``FetchError``
  (no network: a mock transport answers);
- every valid image (any size 1..600 px a side, any mode, any supported format) decodes to
  uint8 ``[3, 224, 224]``, identical to DreamSim's preprocess (PIL ``convert("RGB")`` then
  torchvision's bicubic ``Resize``);
- lenient base64 (whitespace anywhere, URL-safe alphabet, no padding, data URIs with any
  media type) gives exactly the bytes plain base64 gives.
"""

from __future__ import annotations

import asyncio
import base64
import io

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from transformer.fetch import FetchError, fetch_image_bytes
from transformer.images import ImageInputError, ImageRef, decode_image, parse_image_input

# Pillow warns (UserWarning) about the corrupt files it is fed here; that is expected.
pytestmark = [pytest.mark.timeout(300), pytest.mark.filterwarnings("ignore::UserWarning")]

MAX_BYTES = 1_000_000
FUZZ = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
HEAVY = settings(FUZZ, max_examples=100)

FORMATS = ["PNG", "JPEG", "WEBP", "GIF", "BMP"]  # the accepted ones (TIFF: hostile tests)
MODES = ["RGB", "RGBA", "L", "LA", "P", "CMYK", "I;16", "1"]
SIGNATURES = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"GIF87a", b"BM",
              b"II*\x00", b"MM\x00*", b"RIFF\x00\x00\x00\x00WEBPVP8 ",
              b"RIFF\x10\x00\x00\x00WEBPVP8L",
              b"\x00\x00\x01\x00", b"P6\n", b"\x00\x00\x00\x0cjP  "]

# Text as it comes out of json.loads: any code point, lone surrogates included.
any_char = st.one_of(st.characters(), st.characters(categories=["Cs"]))


def texts(min_size: int = 0, max_size: int = 40) -> st.SearchStrategy[str]:
    """Text with lone surrogates (``st.text`` drops them even when its alphabet has them)."""
    return st.lists(any_char, min_size=min_size, max_size=max_size).map("".join)


any_text = texts(max_size=300)
prefixes = st.sampled_from(["", " ", "\n", "http://", "https://", "HTTP://", "http:", "https:",
                            "http:///", "https://[", "http://[::1", "http://[v1.x]/",
                            "http://a:99999999/", "http://a:-1/", "http://user@:80/",
                            "data:", "data:,", "DATA:image/png;base64,", "data:;base64,",
                            "data:image/png;base64", "ftp://", "file:///etc/passwd",
                            "javascript:", "a:", "//host/x", "data:text/plain,"])
request_strings = st.one_of(any_text, st.tuples(prefixes, any_text).map("".join))


def _check_reason(exc: ImageInputError) -> None:
    assert isinstance(exc.reason, str) and exc.reason
    assert "Traceback" not in exc.reason and len(exc.reason) < 1000


# --- parse_image_input ---------------------------------------------------------------------

@FUZZ
@given(value=request_strings)
def test_parse_image_input_raises_only_image_input_error(value: str) -> None:
    try:
        ref = parse_image_input(value, max_bytes=MAX_BYTES)
    except ImageInputError as exc:
        _check_reason(exc)
        return
    assert isinstance(ref, ImageRef)
    assert (ref.url is None) != (ref.data is None)
    if ref.data is not None:
        assert len(ref.data) <= MAX_BYTES


@FUZZ
@given(value=st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
def test_parse_image_input_latin1_garbage(value: str) -> None:
    try:
        parse_image_input(value, max_bytes=MAX_BYTES)
    except ImageInputError as exc:
        _check_reason(exc)


@FUZZ
@given(value=st.tuples(st.sampled_from(["http://", "https://", "HTTPS://", "http://a/",
                                        "http://[", "http://[::1]", "http://a:", "http://xn--",
                                        "http://a\x00", "http://0x7f.1/"]),
                       any_text).map("".join))
def test_accepted_urls_fail_only_with_fetch_error(value: str) -> None:
    """A URL parse_image_input lets through may fail to fetch, but only as FetchError
    (the server turns that into a 422); a mock transport answers instead of the network."""
    try:
        ref = parse_image_input(value, max_bytes=MAX_BYTES)
    except ImageInputError:
        return
    assume(ref.url is not None)
    assert ref.url is not None
    url = ref.url

    async def fetch() -> bytes:
        transport = httpx.MockTransport(lambda request: httpx.Response(404))
        async with httpx.AsyncClient(transport=transport) as client:
            return await fetch_image_bytes(client, url, timeout_s=5, max_bytes=MAX_BYTES)

    with pytest.raises(FetchError):
        asyncio.run(fetch())


# --- decode_image on garbage ---------------------------------------------------------------

def _decode_or_error(data: bytes) -> None:
    try:
        out = decode_image(data)
    except ImageInputError as exc:
        _check_reason(exc)
        return
    assert out.dtype == np.uint8 and out.shape == (3, 224, 224)
    assert out.flags["C_CONTIGUOUS"]


@FUZZ
@given(data=st.binary(max_size=4096))
def test_decode_arbitrary_bytes(data: bytes) -> None:
    _decode_or_error(data)


@FUZZ
@given(signature=st.sampled_from(SIGNATURES), tail=st.binary(max_size=2048))
def test_decode_bytes_behind_format_signatures(signature: bytes, tail: bytes) -> None:
    _decode_or_error(signature + tail)


# --- valid images --------------------------------------------------------------------------

def _make_image(mode: str, width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    # smooth gradients plus noise: realistic enough for every codec, cheap to encode
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([(xx * 255 // max(width - 1, 1)), (yy * 255 // max(height - 1, 1)),
                     ((xx + yy) * 3) % 256], axis=-1)
    noise = rng.integers(-20, 21, size=(height, width, 3))
    rgb = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")
    if mode == "I;16":
        wide = (base[..., 0].astype(np.uint32) * 257 + rng.integers(0, 257, (height, width)))
        return Image.fromarray(wide.astype(np.uint16))  # mode I;16
    if mode in ("RGBA", "LA"):
        img = rgb.convert(mode[:-1])
        img.putalpha(Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8)))
        return img
    if mode == "P":
        return rgb.quantize(colors=int(rng.integers(2, 257)))
    return rgb.convert(mode)


def _writable(fmt: str, mode: str) -> bool:
    try:
        _make_image(mode, 2, 2, 0).save(io.BytesIO(), fmt)
    except (OSError, ValueError, KeyError):
        return False
    return True


# (format, mode) pairs Pillow can write (it converts some modes itself, e.g. RGBA to GIF).
WRITABLE = [(fmt, mode) for fmt in FORMATS for mode in MODES if _writable(fmt, mode)]


@st.composite
def encoded_images(draw: st.DrawFn, max_side: int = 600) -> tuple[bytes, str, str]:
    fmt, mode = draw(st.sampled_from(WRITABLE))
    width = draw(st.integers(1, max_side))
    height = draw(st.integers(1, max_side))
    img = _make_image(mode, width, height, draw(st.integers(0, 2**32 - 1)))
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue(), fmt, mode


def _dreamsim_preprocess(data: bytes) -> np.ndarray:
    """DreamSim 0.2.1's preprocess up to ToTensor, with torchvision itself as the oracle."""
    from torchvision import transforms

    resize = transforms.Resize((224, 224), interpolation=transforms.InterpolationMode.BICUBIC)
    img = resize(Image.open(io.BytesIO(data)).convert("RGB"))
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


@HEAVY
@given(image=encoded_images())
def test_valid_images_decode_like_dreamsim(image: tuple[bytes, str, str]) -> None:
    data, fmt, mode = image
    out = decode_image(data)
    assert out.dtype == np.uint8 and out.shape == (3, 224, 224), (fmt, mode)
    np.testing.assert_array_equal(out, _dreamsim_preprocess(data), err_msg=f"{fmt} {mode}")


# --- base64 variants -----------------------------------------------------------------------

WHITESPACE = st.text(st.sampled_from(" \t\n\r\x0b\x0c"), min_size=1, max_size=3)
MEDIA_TYPE = st.text(st.characters(exclude_characters=",", exclude_categories=["Cs"]),
                     max_size=40)


@st.composite
def base64_variants(draw: st.DrawFn, b64: str) -> str:
    text = b64
    if draw(st.booleans()):
        text = text.replace("+", "-").replace("/", "_")
    if draw(st.booleans()):
        text = text.rstrip("=")
    for _ in range(draw(st.integers(0, 8))):
        pos = draw(st.integers(0, len(text)))
        text = text[:pos] + draw(WHITESPACE) + text[pos:]
    if draw(st.booleans()):
        scheme = draw(st.sampled_from(["data:", "DATA:", "Data:"]))
        params = draw(st.lists(st.sampled_from([";charset=utf-8", ";name=x.png", ";q=1"]),
                               max_size=2))
        b64_token = draw(st.sampled_from([";base64", ";BASE64", "; base64 ", ";Base64"]))
        text = f"{scheme}{draw(MEDIA_TYPE)}{''.join(params)}{b64_token},{text}"
    if draw(st.booleans()):
        text = draw(WHITESPACE) + text + draw(WHITESPACE)
    return text


@HEAVY
@given(image=encoded_images(max_side=48), data=st.data())
def test_base64_variants_decode_to_the_same_bytes(image: tuple[bytes, str, str],
                                                  data: st.DataObject) -> None:
    raw = image[0]
    plain = base64.b64encode(raw).decode()
    variant = data.draw(base64_variants(plain), label="variant")
    ref = parse_image_input(variant, max_bytes=MAX_BYTES)
    assert ref.url is None and ref.data == raw
    np.testing.assert_array_equal(decode_image(ref.data),
                                  decode_image(parse_image_input(plain, max_bytes=MAX_BYTES).data
                                               or b""))


# --- mutated real files --------------------------------------------------------------------

@st.composite
def mutations(draw: st.DrawFn, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 6))):
        if not buf:
            break
        kind = draw(st.sampled_from(["flip", "set", "delete", "insert", "truncate"]))
        pos = draw(st.integers(0, len(buf) - 1))
        if kind == "flip":
            buf[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            buf[pos] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, draw(st.integers(0, 255))]))
        elif kind == "delete":
            del buf[pos:pos + draw(st.integers(1, 16))]
        elif kind == "insert":
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        else:
            del buf[pos:]
    return bytes(buf)


@FUZZ
@given(image=encoded_images(max_side=64), data=st.data())
def test_corrupted_files_give_an_array_or_image_input_error(image: tuple[bytes, str, str],
                                                            data: st.DataObject) -> None:
    # Mutations concentrate on the header: most parser decisions are taken there.
    raw = image[0]
    head = data.draw(st.integers(min(len(raw), 64), len(raw)), label="region")
    mutated = data.draw(mutations(raw[:head]), label="mutated") + raw[head:]
    _decode_or_error(mutated)

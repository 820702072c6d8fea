"""Decoding memory (issue 19, item 3) and deduplication by bytes (item 6).

Item 3: an image's decoding cost is computed from its header and reserved before any pixel
is decoded; an image over a budget by itself is refused naming its pair and field, and a
request's images (and the pod's) wait for room instead of being decoded side by side. The
peak memory of each path is measured in a fresh process against the estimate.

Item 6: the same picture sent as base64 variants, a data URI and a URL is decoded once,
also when two requests send it at the same time.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from testing.hostile_images import gif_huge_canvas, png16_rgba
from testing.http_host import IMAGE_HOST_NETWORK, ImageHost
from transformer import inputs
from transformer.decodebudget import OVERHEAD, MemoryBudget, OverBudget, decode_bytes, reserved
from transformer.errors import ImageErrors
from transformer.fetch import make_client
from transformer.images import ImageInputError, decode_image
from transformer.inputs import ImageLoader
from transformer.schemas import ImagePair
from transformer.scoring import plan_pairs
from transformer.settings import TransformerSettings

ROOT = Path(__file__).resolve().parents[2]


def _png(side: int, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(side)
    img = Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _open(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def test_cost_comes_from_the_header() -> None:
    # width x height x (stored bytes per pixel + 4): RGB is stored in 4 bytes, P in 1.
    assert decode_bytes(_open(_png(100)), b"") == 100 * 100 * 8 + OVERHEAD
    gif = gif_huge_canvas(3000)
    assert len(gif) == 35
    assert decode_bytes(_open(gif), gif) == 3000 * 3000 * 5 + OVERHEAD


def test_progressive_jpegs_count_their_coefficient_buffers() -> None:
    img = Image.new("RGB", (800, 600), (10, 20, 30))
    base, prog = io.BytesIO(), io.BytesIO()
    img.save(base, "JPEG")
    img.save(prog, "JPEG", progressive=True)
    plain = decode_bytes(_open(base.getvalue()), base.getvalue())
    assert plain == 800 * 600 * 8 + OVERHEAD
    # 4:2:0: Y at full size, Cb and Cr at a quarter, 2 bytes a coefficient (whole blocks)
    extra = decode_bytes(_open(prog.getvalue()), prog.getvalue()) - plain
    assert 800 * 600 * 3 <= extra <= 800 * 600 * 3.2


def test_reserve_is_asked_before_any_pixel_is_decoded() -> None:
    asked: list[int] = []

    def refuse(n: int) -> object:
        asked.append(n)
        raise OverBudget("about 1 MB to decode, over the 0 MB (TEST)")

    gif = gif_huge_canvas()  # 35 bytes, 9459 x 9459: seconds and +1 GB to decode before
    started = time.perf_counter()
    with pytest.raises(ImageInputError) as excinfo:
        decode_image(gif, reserve=refuse)  # type: ignore[arg-type]
    assert time.perf_counter() - started < 2  # nothing was decoded (about 8 s before)
    assert asked == [9459 * 9459 * 5 + OVERHEAD]
    assert excinfo.value.reason == "image is 9459x9459 (P): about 1 MB to decode, over the " \
                                   "0 MB (TEST)"


def test_budget_refuses_what_can_never_fit_and_waits_for_the_rest() -> None:
    budget = MemoryBudget(100, what="one request", setting="MAX_REQUEST_DECODE_MB")
    with pytest.raises(OverBudget, match=r"over the 0.0001 MB one request may decode at once "
                                         r"\(MAX_REQUEST_DECODE_MB\)"):
        with reserved(101, [budget], time.monotonic() + 1):
            pass
    order: list[str] = []
    inside = threading.Event()

    def first() -> None:
        with reserved(60, [budget], time.monotonic() + 5):
            order.append("first in")
            inside.set()
            time.sleep(0.3)
            order.append("first out")

    t = threading.Thread(target=first)
    t.start()
    inside.wait(5)
    with reserved(60, [budget], time.monotonic() + 5):
        order.append("second in")
    t.join()
    assert order == ["first in", "first out", "second in"]
    assert budget.held == 0
    with reserved(60, [budget], time.monotonic() + 5), pytest.raises(TimeoutError):
        budget.take(60, time.monotonic() + 0.2)
    assert budget.held == 0


_PEAK = """
import io, sys
from pathlib import Path
from PIL import Image
from transformer.images import decode_image
import transformer.resize
transformer.resize.matches_pillow()
def rss():
    status = dict(l.split(":", 1) for l in Path("/proc/self/status").read_text().splitlines())
    return int(status["VmHWM"].split()[0]) * 1024, int(status["VmRSS"].split()[0]) * 1024
data = sys.stdin.buffer.read()
before = rss()[1]
decode_image(data, impl=sys.argv[1])
print(rss()[0] - before)
"""


@pytest.mark.parametrize("name, data", [
    ("gif-35-bytes-huge-canvas", gif_huge_canvas(4000)),
    ("png-16bit-rgba", png16_rgba(4000)),
    ("png-8bit-rgb", _png(3000)),
])
@pytest.mark.parametrize("impl", ["native", "pillow"])
def test_measured_peak_stays_under_the_estimate(name: str, data: bytes, impl: str) -> None:
    # A fresh process per image: its high-water mark is this decode's peak. Before the
    # fix, the GIF took 11 bytes a pixel (the P image, its RGB copy, tobytes' chunks and
    # their join, a transposed copy for the resize): 1 GB at the pixel limit.
    out = subprocess.run([sys.executable, "-c", _PEAK, impl], input=data, cwd=ROOT,
                         capture_output=True, check=True, timeout=300)
    peak = int(out.stdout)
    estimate = decode_bytes(_open(data), data)
    assert peak <= estimate, f"{name} ({impl}): peak {peak / 1e6:.0f} MB, estimate " \
                             f"{estimate / 1e6:.0f} MB"


def _settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> TransformerSettings:
    for key, value in {"URL_ALLOWED_NETWORKS": IMAGE_HOST_NETWORK, **env}.items():
        monkeypatch.setenv(key, value)
    return TransformerSettings()


def _load(settings: TransformerSettings, *plans: list[ImagePair]) -> list[object]:
    """Each plan loaded at the same time by one loader (one request each)."""

    async def main() -> list[object]:
        async with make_client(allowed_networks=settings.allowed_networks) as client:
            with ThreadPoolExecutor(2) as pool:
                loader = ImageLoader(settings, executor=pool, client=client)
                jobs = [loader.load(plan_pairs(p), [x.pair_id for x in p]) for p in plans]
                return await asyncio.gather(*jobs, return_exceptions=True)

    return asyncio.run(main())


def test_an_image_over_the_request_budget_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings(monkeypatch, MAX_REQUEST_DECODE_MB="50")
    small = base64.b64encode(_png(32)).decode()
    gif = base64.b64encode(gif_huge_canvas(4000)).decode()  # 80 MB to decode
    [result] = _load(settings, [ImagePair(reference_image=small, generated_image=gif,
                                          pair_id="p1")])
    assert isinstance(result, ImageErrors)
    [item] = result.errors
    assert (item.index, item.pair_id, item.field) == (0, "p1", "generated_image")
    assert item.reason == ("image is 4000x4000 (P): about 97 MB to decode, over the 50 MB "
                           "one request may decode at once (MAX_REQUEST_DECODE_MB)")


def test_a_requests_images_wait_for_each_other(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each costs 8 MB + OVERHEAD; the request may hold 40: never two at once, although two
    # threads decode. The pod's budget is counted the same way.
    settings = _settings(monkeypatch, MAX_REQUEST_DECODE_MB="40",
                         MAX_DECODES_IN_FLIGHT_MB="100")
    held: list[int] = []
    real_take = MemoryBudget.take

    def take(self: MemoryBudget, n: int, deadline: float) -> None:
        real_take(self, n, deadline)
        if self.setting == "MAX_REQUEST_DECODE_MB":
            held.append(self.held)

    monkeypatch.setattr(MemoryBudget, "take", take)
    images = [base64.b64encode(_png(1000 + i)).decode() for i in range(4)]
    [result] = _load(settings, [ImagePair(reference_image=images[2 * i],
                                          generated_image=images[2 * i + 1])
                                for i in range(2)])
    assert not isinstance(result, BaseException), result
    assert len(held) == 4 and max(held) <= 1003 * 1003 * 8 + OVERHEAD, held  # one at a time


def _variants(data: bytes, image_host: ImageHost) -> list[str]:
    """One picture, six strings: canonical base64, MIME (76-column CRLF lines), URL-safe
    without padding, with spaces, a data URI, a URL."""
    b64 = base64.b64encode(data).decode()
    mime = base64.encodebytes(data).decode().replace("\n", "\r\n")
    urlsafe = base64.urlsafe_b64encode(data).decode().rstrip("=")
    spaced = " ".join(b64[i:i + 100] for i in range(0, len(b64), 100))
    return [b64, mime, urlsafe, spaced, f"data:image/png;base64,{b64}",
            image_host.add("same-picture.png", data)]


def test_the_same_bytes_are_decoded_once(monkeypatch: pytest.MonkeyPatch,
                                         image_host: ImageHost) -> None:
    data = _png(200)
    calls: list[int] = []
    real = inputs.decode_image

    def counted(blob: bytes, **kwargs: object) -> np.ndarray:
        calls.append(len(blob))
        time.sleep(0.3)  # so that the two requests overlap
        return real(blob, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(inputs, "decode_image", counted)
    strings = _variants(data, image_host)
    pairs = [ImagePair(reference_image=strings[i], generated_image=strings[-1 - i])
             for i in range(len(strings))]
    first, second = _load(_settings(monkeypatch), pairs, pairs[::-1])
    assert not isinstance(first, BaseException) and not isinstance(second, BaseException)
    assert calls == [len(data)]  # once, for 6 strings in 2 requests at once (12 before)
    assert first.sender.rows == 1 and set(first.rows) == {0}  # type: ignore[attr-defined]


def test_mime_base64_is_sized_without_its_line_breaks() -> None:
    from transformer.images import parse_image_input

    data = (bytes(range(256)) * 40)[:10200]  # no padding, and 4n characters with the breaks
    mime = base64.encodebytes(data).decode().replace("\n", "\r\n").strip()
    assert len(mime) % 4 == 0 and len(mime) * 3 // 4 > len(data)  # the fast path's sum
    assert parse_image_input(mime, max_bytes=len(data)).data == data
    with pytest.raises(ImageInputError,
                       match=r"image is 0.0 MB decoded, over the 0.010199 MB limit"):
        parse_image_input(mime, max_bytes=len(data) - 1)
    json.dumps(mime)  # a string a client can send


def test_a_decode_given_up_by_all_is_cancelled_and_can_start_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = inputs.decode_image

    def counted(blob: bytes, **kwargs: object) -> np.ndarray:
        calls.append(len(blob))
        return real(blob, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(inputs, "decode_image", counted)
    settings = _settings(monkeypatch)
    image = base64.b64encode(_png(64)).decode()
    plan = [ImagePair(reference_image=image, generated_image=image)]

    async def main() -> object:
        async with make_client(allowed_networks=settings.allowed_networks) as client:
            with ThreadPoolExecutor(1) as pool:
                loader = ImageLoader(settings, executor=pool, client=client)
                release = threading.Event()
                blocker = asyncio.get_running_loop().run_in_executor(pool, release.wait, 10)
                first = asyncio.ensure_future(loader.load(plan_pairs(plan), [None]))
                await asyncio.sleep(0.5)  # parsed on the pool? no: the pool is blocked
                first.cancel()  # its request timed out, say
                release.set()
                await blocker
                with pytest.raises(asyncio.CancelledError):
                    await first
                assert calls == []  # the queued decode never ran
                return await loader.load(plan_pairs(plan), [None])

    loaded = asyncio.run(main())
    assert calls == [len(base64.b64decode(image))]
    assert loaded.sender.rows == 1  # type: ignore[attr-defined]

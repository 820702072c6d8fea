"""How many bytes decoding may hold: per image from its header, before any pixel is decoded.

A few bytes can declare a huge image: a 35-byte GIF with a 9459 x 9459 canvas, a 700 kB
16-bit PNG of zeros, a truncated BMP header. The pixel limit (``MAX_IMAGE_PIXELS``) bounds
one image, but every decoding thread can hold one, and one request's images are decoded
side by side: measured before this module, +1.0 GB for the GIF, +1.3 GB for the PNG, and
+1.5-1.8 GB for one 20 kB request of such images.

So each image's decoding cost is computed from what its header says (:func:`decode_bytes`)
and reserved, before it is decoded, from two budgets (:class:`MemoryBudget`): the request's
(``MAX_REQUEST_DECODE_MB``: its images wait for each other) and the pod's
(``MAX_DECODES_IN_FLIGHT_MB``: every decode waits for room). An image whose cost is over
either budget by itself is refused (422, naming its pair and field). Waiting happens in
the decoding thread, with the request's deadline as its bound: a thread only ever waits
for other threads that are decoding, so it cannot wait forever.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Sequence

from PIL import Image

from .imageguard import JpegFrame, jpeg_frame

_MB = 1_000_000

_STORED_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
"""Bytes per pixel Pillow stores a mode in (``Storage.c``: 1- and 2-byte modes; every other
mode, RGB included, takes 4)."""

RGB_BYTES = 4
"""Bytes per pixel of what decoding adds to the decoded image at its peak: the 3-byte RGB
array (native decoders, or the strip-wise conversion in ``images.py``) or, on the Pillow
path, Pillow's 4-byte RGB image."""

OVERHEAD = 16 << 20
"""Bytes per image whatever its size: decoders' row buffers, the strips of the conversion
(about 4 MB) and of the resize (4 MB), the 224 x 224 result."""


def decode_bytes(img: Image.Image, data: bytes) -> int:
    """Most bytes decoding ``img`` (opened, nothing decoded) holds at once.

    ``width x height x (bytes per pixel of the decoded mode + RGB_BYTES) + OVERHEAD``, plus,
    for a multi-scan (progressive) JPEG, libjpeg's whole-image coefficient buffers (2 bytes
    per coefficient and component, at each component's sampling). The measured peaks of every
    path (``python -m bench.worst_case``) stay under it.
    """
    width, height = img.size
    cost = width * height * (_STORED_BYTES.get(img.mode, 4) + RGB_BYTES) + OVERHEAD
    if img.format == "JPEG":
        frame = jpeg_frame(data)
        if isinstance(frame, JpegFrame):
            cost += frame.coefficient_bytes(width, height)
    return cost


class OverBudget(Exception):
    """One image needs more than a budget holds in all; ``reason`` says so for the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class MemoryBudget:
    """Bytes that decodes may hold at once; a decode waits (in its thread) for room.

    Args:
        limit: bytes held at most.
        what: what the budget is, for messages ("one request", "the pod").
        setting: its environment variable.
    """

    def __init__(self, limit: int, *, what: str, setting: str) -> None:
        self.limit = limit
        self.what = what
        self.setting = setting
        self.held = 0
        self._room = threading.Condition()

    def check(self, n: int) -> None:
        """Raises OverBudget when ``n`` alone is over the limit."""
        if n > self.limit:
            raise OverBudget(f"about {n / _MB:.0f} MB to decode, over the "
                             f"{self.limit / _MB:g} MB {self.what} may decode at once "
                             f"({self.setting})")

    def take(self, n: int, deadline: float) -> None:
        """Hold ``n`` bytes, waiting until they fit or ``deadline`` (monotonic) passes.

        Raises:
            TimeoutError: no room before the deadline.
        """
        with self._room:
            while self.held + n > self.limit:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no room in {self.setting} before the deadline")
                self._room.wait(left)
            self.held += n

    def give(self, n: int) -> None:
        with self._room:
            self.held -= n
            self._room.notify_all()


@contextlib.contextmanager
def reserved(n: int, budgets: Sequence[MemoryBudget], deadline: float) -> Iterator[None]:
    """Hold ``n`` bytes of every budget (in order) for the with-block.

    Raises:
        OverBudget: ``n`` is over one budget's whole limit (checked before waiting).
        TimeoutError: no room before ``deadline``.
    """
    for budget in budgets:
        budget.check(n)
    taken: list[MemoryBudget] = []
    try:
        for budget in budgets:
            budget.take(n, deadline)
            taken.append(budget)
        yield
    finally:
        for budget in reversed(taken):
            budget.give(n)

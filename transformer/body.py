"""Reading a request body: a size cap, a deadline, a pod-wide byte budget, and a client that
goes away treated as the normal event it is.

Used by every route that takes a body (``/similarity``, and any other added later), before
an admission ticket or a processing slot is taken: a client that uploads slowly is cut
off by the deadline (408) and meanwhile holds neither (``admission.py``). The bytes of
every body held at once, over all requests, are bounded by the
:class:`~transformer.admission.ByteBudget`; a body that would pass it is refused (503)
instead of waited for.

Parsing (:func:`load_json`) is bounded too. Python's C JSON parser holds the GIL for a whole
document, so whatever it spends is an event-loop stall (measured before the bounds, 8
bodies of 31 MB parsed at once: 31 s for 4,300-digit integers, 21 s for small integers,
16 s for floats, 6 s for short strings, 1.1 s for long strings, on the loaded 2-core
machine). The API's bodies are a few hundred objects around long strings, so a body is
refused (422) before parsing when it has more than ``MAX_JSON_VALUES`` values (counted from
its commas, brackets and braces, in C), and while parsing when a number is longer than
``MAX_JSON_NUMBER_DIGITS`` characters (a 4,300-digit integer costs ``int()`` about 0.2 ms:
quadratic) or is ``NaN`` / ``Infinity`` (not JSON). One parse runs at a time, so that the
event loop competes for the GIL with one parsing thread, not eight, and the counting and
the UTF-8 decoding run in windows of ``_WINDOW`` bytes: between two C calls the event loop
gets the GIL, so a stall lasts one window, or one string of the body.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import threading
from collections.abc import AsyncIterator
from typing import Any, Protocol

from starlette.requests import ClientDisconnect

from .admission import ByteBudget
from .errors import BadRequest, BodyTimeout, BodyTooLarge, ClientGone, Overloaded


class _Request(Protocol):  # what is used of starlette's Request
    @property
    def headers(self) -> Any: ...

    def stream(self) -> AsyncIterator[bytes]: ...


@contextlib.asynccontextmanager
async def request_body(request: _Request, *, limit: int, timeout_s: float,
                       budget: ByteBudget) -> AsyncIterator[bytearray]:
    """The whole body, for the with-block; its bytes stay counted in ``budget`` until the
    block ends (the parsed request lives about as long).

    Args:
        request: the incoming request.
        limit: most bytes accepted (``MAX_REQUEST_BODY_MB``).
        timeout_s: the whole body must have arrived within this (``BODY_READ_TIMEOUT``).
        budget: bytes of bodies held over all requests (``MAX_BODIES_IN_FLIGHT_MB``).

    Raises:
        BodyTooLarge: over ``limit``, from Content-Length before reading or while reading.
        BodyTimeout: not all there within ``timeout_s`` (408).
        Overloaded: the pod holds too many body bytes already (503, retry).
        ClientGone: the client disconnected before sending it all.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"request body of {int(declared)} bytes is over the limit of "
                           f"{limit} (MAX_REQUEST_BODY_MB)")
    body = bytearray()
    taken = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                if len(body) + len(chunk) > limit:
                    raise BodyTooLarge(f"request body is over the limit of {limit} bytes "
                                       "(MAX_REQUEST_BODY_MB)")
                if not budget.try_take(len(chunk)):
                    raise Overloaded("the service holds too many large request bodies; "
                                     "retry shortly", retry_after_s=2)
                taken += len(chunk)
                body += chunk
    except TimeoutError:
        budget.give(taken)
        raise BodyTimeout(f"the request body did not arrive within {timeout_s:g} s "
                          f"({len(body)} bytes received; BODY_READ_TIMEOUT)") from None
    except ClientDisconnect:
        budget.give(taken)
        raise ClientGone(f"the client disconnected after {len(body)} bytes of its body"
                         ) from None
    except BaseException:
        budget.give(taken)
        raise
    try:
        yield body
    finally:
        budget.give(taken)


MAX_JSON_VALUES = 100_000
"""Most JSON values in one body, bounded from above by its count of ``,``, ``[`` and ``{``
(inside strings too). A body of 128 pairs or 256 images has a few thousand at most, URL
commas included; 100,000 small values parse in about 10-30 ms."""

MAX_JSON_NUMBER_DIGITS = 64
"""Longest number accepted (characters): ids are at most 64-digit integers here."""

_PARSING = threading.Lock()
_WINDOW = 1 << 20


def _count_values(raw: bytes | bytearray) -> int:
    """Commas, brackets and braces in ``raw``: at least the number of values but one."""
    total = 0
    for start in range(0, len(raw), _WINDOW):
        end = start + _WINDOW
        total += (raw.count(b",", start, end) + raw.count(b"[", start, end)
                  + raw.count(b"{", start, end))
    return total


def _text(raw: bytes | bytearray) -> str:
    """``raw`` decoded as ``json.loads`` decodes bytes (UTF-8/16/32, surrogates passed),
    a window at a time."""
    decoder = codecs.getincrementaldecoder(json.detect_encoding(raw))("surrogatepass")
    parts = [decoder.decode(raw[start:start + _WINDOW]) for start in range(0, len(raw),
                                                                           _WINDOW)]
    parts.append(decoder.decode(b"", final=True))
    text = "".join(parts)
    return text[1:] if text.startswith("\ufeff") else text


def _number(kind: type[int] | type[float]) -> Any:
    def parse(text: str) -> int | float:
        if len(text) > MAX_JSON_NUMBER_DIGITS:
            raise _Refused(f"a number of {len(text)} characters, over the "
                           f"{MAX_JSON_NUMBER_DIGITS} accepted")
        return kind(text)
    return parse


def _constant(name: str) -> Any:
    raise _Refused(f"{name}, which is not a JSON number")


class _Refused(ValueError):
    """A value the parser met that the API does not accept."""


_PARSE_INT, _PARSE_FLOAT = _number(int), _number(float)


def load_json(raw: bytes | bytearray) -> Any:
    """Parse a JSON body (run it off the event loop: it is CPU work in proportion to the
    body); every failure is a 422 saying why.

    Raises:
        BadRequest: not JSON, nested too deeply, more than ``MAX_JSON_VALUES`` values, a
            number over ``MAX_JSON_NUMBER_DIGITS`` characters, ``NaN`` or ``Infinity``.
    """
    try:
        with _PARSING:
            values = _count_values(raw)
            if values > MAX_JSON_VALUES:
                raise _Refused(f"about {values} JSON values, over the {MAX_JSON_VALUES} "
                               "accepted (the API's bodies have a few thousand)")
            return json.loads(_text(raw), parse_int=_PARSE_INT, parse_float=_PARSE_FLOAT,
                              parse_constant=_constant)
    except _Refused as e:
        raise BadRequest(f"the request body is refused: it has {e}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"the request body is not valid JSON: {str(e)[:200]}") from None
    except RecursionError:
        raise BadRequest("the request body is nested too deeply") from None

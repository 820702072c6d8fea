"""Reading a request body: a size cap, a deadline, a pod-wide byte budget, and a client that
goes away treated as the normal event it is.

Used by every route that takes a body (``/similarity``, and any other added later), before
an admission ticket or a processing slot is taken: a client that uploads slowly is cut
off by the deadline (408) and meanwhile holds neither (``admission.py``). The bytes of
every body held at once, over all requests, are bounded by the
:class:`~transformer.admission.ByteBudget`; a body that would pass it is refused (503)
instead of waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
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


def load_json(raw: bytes | bytearray) -> Any:
    """Parse a JSON body (run it off the event loop: it is CPU work in proportion to the
    body); every failure is a 422 saying why."""
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"the request body is not valid JSON: {str(e)[:200]}") from None
    except RecursionError:
        raise BadRequest("the request body is nested too deeply") from None

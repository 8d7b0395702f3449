"""Reading a request body on the event loop, bounded in size, time and memory.

One body may hold `max_body_bytes` (413 beyond, before the rest is read) and must arrive
within `body_timeout` seconds of its request's head (408, and the connection is closed: the
client is too slow to keep). The bodies of all requests being read or turned into engine
requests hold at most `max_bodies_bytes` together beyond their first SMALL_BODY bytes each
(503 with Retry-After beyond): without that bound, a few dozen clients each holding back the
end of a large body pin gigabytes. The first SMALL_BODY bytes are what uvicorn buffers of
any connection anyway, bounded by the connection limit, so requests of ordinary size are
never refused while large bodies fill the bound. A client that closes its connection while
it sends is `ClientGone`, which the app answers 499 (its own doing, as nginx counts it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from photon.serve.schema import APIError

SMALL_BODY = 1 << 16  # uvicorn's HIGH_WATER_LIMIT: what it reads of a body before it pauses


class ClientGone(Exception):
    """The client closed its connection before its request body was complete."""


class BodyBudget:
    """Bytes of the request bodies in flight beyond their first SMALL_BODY bytes, at most
    `limit` together. Used from the event loop only, so it needs no lock."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0

    @staticmethod
    def cost(size: int) -> int:
        """What a body of `size` bytes counts against the budget."""
        return max(0, size - SMALL_BODY)

    def grow(self, size: int, added: int) -> None:
        """A body of `size` bytes grows by `added`, or `APIError` 503 if it may not."""
        n = self.cost(size + added) - self.cost(size)
        if self.used + n > self.limit:
            raise APIError(503, f"the server holds {self.limit:,} bytes of request bodies "
                                "at once and has no room for this one now: retry (photon "
                                "serve --max-bodies-mb)", type="server_error",
                           headers={"Retry-After": "1"})
        self.used += n


@asynccontextmanager
async def read_body(receive, headers: dict[str, str], limit: int, timeout: float,
                    budget: BodyBudget) -> AsyncIterator[bytes]:
    """The request's body (from the ASGI `receive`), counted against `budget` until the
    `async with` block ends, so parsing and tokenizing it count too. `APIError` 413 as soon
    as it is known to exceed `limit` bytes, 408 if it is not complete within `timeout`
    seconds, 503 if the budget has no room; `ClientGone` if the client leaves."""
    length = headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise too_large(limit)
    deadline, chunks, size = time.monotonic() + timeout, [], 0
    try:
        while True:
            left = deadline - time.monotonic()
            try:
                message = await asyncio.wait_for(receive(), max(left, 0))
            except asyncio.TimeoutError:  # noqa: UP041 (Python 3.10: not the builtin)
                raise APIError(408, f"the request body did not arrive within {timeout:g} s "
                                    "(photon serve --body-timeout)", code="request_timeout",
                               headers={"Connection": "close"}) from None
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            if size + len(chunk) > limit:
                raise too_large(limit)
            budget.grow(size, len(chunk))
            size += len(chunk)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        chunks.clear()
        yield body
    finally:
        budget.used -= budget.cost(size)


def too_large(limit: int) -> APIError:
    return APIError(413, f"the request body exceeds {limit:,} bytes (photon serve "
                         "--max-body-mb)", code="request_too_large")

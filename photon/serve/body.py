"""Reading a request body on the event loop, with a size limit."""

from __future__ import annotations

from fastapi import Request

from photon.serve.schema import APIError


async def read_body(request: Request, limit: int) -> bytes:
    """The request's body, refused with 413 as soon as it is known to exceed `limit`."""
    too_large = APIError(413, f"the request body exceeds {limit:,} bytes (photon serve "
                              "--max-body-mb)", code="request_too_large")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)

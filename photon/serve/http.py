"""uvicorn's HTTP/1.1 protocol with a deadline for a request's head.

uvicorn closes idle keep-alive connections, but a new connection that sends its request
line and headers slowly (or never finishes them) stays open for ever; a few hundred such
connections hold the server's sockets. This protocol closes a connection whose first
request head is not complete within `header_timeout` seconds.
"""

from __future__ import annotations

from uvicorn.protocols.http.h11_impl import H11Protocol


def with_header_timeout(seconds: float) -> type[H11Protocol]:
    """An H11Protocol class (for `uvicorn.Config(http=...)`) with this head deadline."""

    class HeaderTimeoutProtocol(H11Protocol):
        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._head_timer = self.loop.call_later(seconds, self._head_too_slow)

        def _head_too_slow(self) -> None:
            if self.cycle is None and not self.transport.is_closing():
                self.transport.close()  # no request head yet: a slow or stuck client

        def connection_lost(self, exc: Exception | None) -> None:
            self._head_timer.cancel()
            super().connection_lost(exc)

    return HeaderTimeoutProtocol

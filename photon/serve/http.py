"""uvicorn's HTTP/1.1 protocol with a deadline for every request head and a bound on the
connections open at once.

uvicorn closes a kept-alive connection that sends nothing for `timeout_keep_alive` seconds,
but any byte stops that clock, and a new connection has none: a client that sends a request
head slowly (a byte every few seconds), on a new connection or a kept-alive one, holds its
socket for ever, and a few hundred such clients hold every file the process may open. This
protocol closes a connection whose next request head is not complete within
`header_timeout` seconds of the connection's opening or of the end of the previous response
(which also bounds the rest of a body the app answered without reading), and answers a
connection beyond `max_connections` with 503 at once and closes it. (uvicorn's
`limit_concurrency` refuses only once a head has arrived, so it would not bound sockets that
send nothing.) A body's own deadline is the app's (photon.serve.body), which answers 408.
"""

from __future__ import annotations

import asyncio
import json

from uvicorn.protocols.http.h11_impl import H11Protocol


def busy_response(max_connections: int) -> bytes:
    """The whole HTTP response that refuses a connection beyond the limit."""
    body = json.dumps({"error": {
        "message": f"the server has {max_connections} connections open, its limit (photon "
                   "serve --max-connections): retry", "type": "server_error", "param": None,
        "code": None}}).encode()
    return (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
            b"retry-after: 1\r\nconnection: close\r\ncontent-length: %d\r\n\r\n%s"
            % (len(body), body))


def bounded_protocol(header_timeout: float, max_connections: int) -> type[H11Protocol]:
    """An H11Protocol class (for `uvicorn.Config(http=...)`) with these bounds."""
    busy = busy_response(max_connections)

    class BoundedProtocol(H11Protocol):
        head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                transport.write(busy)
                transport.close()
            else:
                self.await_head()

        def await_head(self) -> None:
            """Start the clock of the next request head."""
            self.stop_clock()
            self.head_timer = self.loop.call_later(header_timeout, self.head_too_slow)

        def stop_clock(self) -> None:
            if self.head_timer is not None:
                self.head_timer.cancel()
                self.head_timer = None

        def head_too_slow(self) -> None:
            if not self.transport.is_closing():
                self.transport.close()  # a slow or stuck client

        def data_received(self, data: bytes) -> None:
            cycle = self.cycle
            super().data_received(data)
            if self.cycle is not cycle:  # a new request's head is complete
                self.stop_clock()

        def on_response_complete(self) -> None:
            cycle = self.cycle
            self.await_head()
            super().on_response_complete()  # may start a pipelined request at once
            if self.cycle is not cycle:
                self.stop_clock()

        def connection_lost(self, exc: Exception | None) -> None:
            self.stop_clock()
            super().connection_lost(exc)

    return BoundedProtocol

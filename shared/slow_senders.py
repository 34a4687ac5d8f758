"""Cut off clients that send their request headers too slowly.

aiohttp has no header-read timeout: a client sending one header byte a second keeps a
connection (and its buffers) forever. `HeaderDeadline` wraps aiohttp's protocol: the
header block of each request (up to the blank line) must arrive within `timeout_s` of
the connection opening, or of the first byte of the next request on a kept-alive
connection; otherwise the connection is closed. Body reads are bounded separately by
the handlers. In production a reverse proxy in front does the same (deploy/README.md).
"""

import asyncio
from typing import Any

import orjson
from aiohttp import web
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from shared.errors import BadRequest, InternalError
from shared.schemas.vocabulary import envelope

END_OF_HEADERS = b"\r\n\r\n"


class HeaderDeadline(asyncio.Protocol):
    """Kept cheap for the usual request, whose header block arrives in one packet: no
    timer is set for it (one is set only when a packet leaves a header block
    unfinished), and its end is learned from aiohttp's own request (its body complete)
    rather than from a signal on every response."""

    def __init__(self, inner: RequestHandler, timeout_s: float, guards: "Guards") -> None:
        self.inner = inner
        self.timeout_s = timeout_s
        self.guards = guards
        self.transport: asyncio.Transport | None = None
        self.awaiting_headers = True
        self.tail = b""
        self.timer: asyncio.TimerHandle | None = None
        # Every request aiohttp makes on this connection passes here: once its body has
        # all arrived (at once for most), the next bytes begin a new header block.
        make_request = inner._request_factory
        assert make_request is not None

        def request_factory(
            message: Any, payload: StreamReader, *args: Any, **kwargs: Any
        ) -> BaseRequest:
            payload.on_eof(self.request_done)
            return make_request(message, payload, *args, **kwargs)

        inner._request_factory = request_factory

    def _arm(self) -> None:
        if self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(self.timeout_s, self._expire)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _expire(self) -> None:
        self.timer = None
        if self.awaiting_headers and self.transport is not None:
            self.guards.cut_off += 1
            self.transport.abort()

    def request_done(self) -> None:
        """The request's body has all arrived: the next bytes start a new header block."""
        self.awaiting_headers = True
        self.tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._arm()  # a connection that sends nothing is cut off too
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.awaiting_headers:
            # `b"" + data` is `data` itself: the join copies only after a packet that
            # ended inside a header block.
            if END_OF_HEADERS in self.tail + data:
                self.awaiting_headers = False
                self._disarm()
            else:
                # The deadline runs from the block's first byte (or the connection's
                # opening, armed then), not from this packet.
                self._arm()
                self.tail = (self.tail + data)[-3:]
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        self.inner.eof_received()
        return None  # what aiohttp's handler means: the transport closes itself

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class EnvelopeRequestHandler(RequestHandler):
    """aiohttp's protocol, except that requests it cannot even parse (a header line
    over the limit, a broken request line) get the contract's JSON envelope instead of
    a plain-text page."""

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        super().handle_error(request, status, exc, message)  # logs; refuses if output began
        kind, text = (
            (BadRequest.kind, "the request could not be parsed (malformed, or a header too long)")
            if status < 500
            else (InternalError.kind, "internal error")
        )
        body = orjson.dumps(envelope(status, kind, text))
        response = web.Response(body=body, status=status, content_type="application/json")
        response.force_close()
        return response


class Guards:
    """What a site's guards share: the count of connections they cut off."""

    def __init__(self) -> None:
        self.cut_off = 0


class GuardedSite(web.TCPSite):
    """A TCP site whose connections are wrapped in `HeaderDeadline`."""

    def __init__(
        self,
        runner: web.AppRunner,
        host: str,
        port: int,
        *,
        header_timeout_s: float,
        guards: Guards,
        **kwargs: Any,
    ) -> None:
        super().__init__(runner, host, port, **kwargs)
        self.header_timeout_s = header_timeout_s
        self.guards = guards

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        # What `web.Server.__call__` does, with our handler class (aiohttp is pinned).
        loop_arg, kwargs = server._loop, server._kwargs
        self._server = await loop.create_server(
            lambda: HeaderDeadline(
                EnvelopeRequestHandler(server, loop=loop_arg, **kwargs),
                self.header_timeout_s,
                self.guards,
            ),
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=True,
        )

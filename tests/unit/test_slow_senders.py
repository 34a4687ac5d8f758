"""The header deadline (shared/slow_senders.py): slow header blocks are cut off on a
fresh and on a kept-alive connection, a slow body is not its business, and a request
whose header block arrives whole sets no timer."""

import asyncio
from typing import Any

from aiohttp import web
from aiohttp.streams import EMPTY_PAYLOAD

from shared.slow_senders import GuardedSite, Guards, HeaderDeadline

TIMEOUT_S = 0.5


class _Transport:
    def __init__(self) -> None:
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True


class _Inner:
    """What the guard reads and calls of aiohttp's protocol."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.made: list[Any] = []
        self._request_factory = lambda *args: self.made.append(args) or "request"

    def connection_made(self, transport: Any) -> None: ...

    def connection_lost(self, exc: Exception | None) -> None: ...

    def data_received(self, data: bytes) -> None:
        self.received.append(data)


def _guard() -> tuple[HeaderDeadline, _Inner, _Transport, Guards]:
    inner, transport, guards = _Inner(), _Transport(), Guards()
    guard = HeaderDeadline(inner, 60.0, guards)  # type: ignore[arg-type]
    guard.connection_made(transport)  # type: ignore[arg-type]
    return guard, inner, transport, guards


async def test_a_whole_header_block_sets_no_timer() -> None:
    guard, inner, _, _ = _guard()
    assert guard.timer is not None  # the connection's first header block is awaited
    guard.data_received(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}")
    assert (guard.timer, guard.awaiting_headers) == (None, False)
    # aiohttp makes the request; its body is complete: the next bytes are a new block.
    assert inner._request_factory("message", EMPTY_PAYLOAD, "protocol") == "request"
    assert guard.awaiting_headers
    guard.data_received(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert (guard.timer, guard.awaiting_headers) == (None, False)
    assert inner.received == [
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}",
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    ]
    guard.connection_lost(None)


async def test_a_header_block_split_across_packets_arms_until_its_end() -> None:
    guard, inner, transport, guards = _guard()
    guard.data_received(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    inner._request_factory("message", EMPTY_PAYLOAD, "protocol")
    guard.data_received(b"GET / HTTP/1.1\r\nHost: a\r")
    assert guard.timer is not None and guard.awaiting_headers
    for byte in (b"\n", b"\r", b"\n"):  # the blank line one byte a packet
        guard.data_received(byte)
    assert (guard.timer, guard.awaiting_headers) == (None, False)
    assert not transport.aborted and guards.cut_off == 0
    guard.connection_lost(None)


async def test_a_body_still_arriving_keeps_the_block_closed() -> None:
    guard, inner, _, _ = _guard()

    class Payload:
        def __init__(self) -> None:
            self.callbacks: list[Any] = []

        def on_eof(self, callback: Any) -> None:
            self.callbacks.append(callback)

    payload = Payload()
    guard.data_received(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9\r\n\r\n{")
    inner._request_factory("message", payload, "protocol")
    guard.data_received(b'"a": 1')  # body bytes: not a header block
    assert (guard.timer, guard.awaiting_headers) == (None, False)
    payload.callbacks[0]()  # the body's last byte arrived
    assert guard.awaiting_headers
    guard.connection_lost(None)


async def _site(guards: Guards) -> tuple[web.AppRunner, int]:
    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read())

    app = web.Application()
    app.router.add_post("/", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    site = GuardedSite(runner, "127.0.0.1", 0, header_timeout_s=TIMEOUT_S, guards=guards)
    await site.start()
    server: Any = site._server
    return runner, server.sockets[0].getsockname()[1]


async def _answer(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    length = next(int(line[15:]) for line in lines if line.lower().startswith(b"content-length:"))
    return lines[0] + b" " + await reader.readexactly(length)


async def test_a_slow_header_block_on_a_kept_alive_connection_is_cut_off() -> None:
    guards = Guards()
    runner, port = await _site(guards)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi")
        assert await _answer(reader) == b"HTTP/1.1 200 OK hi"
        cut_off = False
        for byte in b"POST / HTTP/1.1\r\nHost: a\r\nX-Slow: " + b"y" * 40:
            writer.write(bytes([byte]))
            await asyncio.sleep(0.1)
            if await _closed(reader):
                cut_off = True
                break
        assert cut_off and guards.cut_off == 1
        writer.close()
    finally:
        await runner.cleanup()


async def _closed(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), 0.01) == b""
    except TimeoutError:
        return False
    except ConnectionError:
        return True


async def test_a_slow_body_is_not_cut_off_by_the_header_deadline() -> None:
    guards = Guards()
    runner, port = await _site(guards)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = b"0123456789"
        writer.write(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n")
        for byte in body:  # over twice the header deadline in all
            await asyncio.sleep(0.12)
            writer.write(bytes([byte]))
        assert await _answer(reader) == b"HTTP/1.1 200 OK " + body
        # And the next request on the same connection is answered as usual.
        writer.write(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nok")
        assert await _answer(reader) == b"HTTP/1.1 200 OK ok"
        assert guards.cut_off == 0
        writer.close()
    finally:
        await runner.cleanup()

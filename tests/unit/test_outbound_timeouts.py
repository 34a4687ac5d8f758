"""shared/outbound.py's first-byte timeout, the one the platform's senders (callbacks,
alert notices) set besides the total: a destination that accepts the connection and
stalls before its answer (a tarpit) is given up on when the first byte is due, while an
answer whose headers came in time may take longer for its body (up to the total)."""

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from shared.outbound import AddressPolicy, OutboundHttp


@pytest.fixture
async def server() -> AsyncIterator[TestServer]:
    async def tarpit(request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response(text="too late")

    async def slow_body(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)  # the status and headers go at once
        await asyncio.sleep(0.6)
        await response.write(b"body")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/tarpit", tarpit)
    app.router.add_post("/slow-body", slow_body)
    running = TestServer(app, host="127.0.0.1")
    await running.start_server()
    yield running
    await running.close()


async def test_a_tarpit_is_given_up_on_when_the_first_byte_is_due(server: TestServer) -> None:
    http = OutboundHttp(AddressPolicy(["127.0.0.1/32"]))
    try:
        with pytest.raises(TimeoutError, match=r"^no answer within 0\.3 s \(first byte\)$"):
            await http.request(
                "POST",
                f"http://127.0.0.1:{server.port}/tarpit",
                headers={},
                data=b"{}",
                timeout_s=60,  # the total alone would wait for the tarpit's 30 s
                connect_timeout_s=3,
                first_byte_timeout_s=0.3,
                max_response_bytes=1000,
            )
    finally:
        await http.close()


async def test_the_body_may_come_after_the_first_byte_timeout(server: TestServer) -> None:
    http = OutboundHttp(AddressPolicy(["127.0.0.1/32"]))
    try:
        status, _, body = await http.request(
            "POST",
            f"http://127.0.0.1:{server.port}/slow-body",
            headers={},
            data=b"{}",
            timeout_s=30,
            connect_timeout_s=3,
            first_byte_timeout_s=0.3,
            max_response_bytes=1000,
        )
        assert (status, body) == (200, b"body")
    finally:
        await http.close()

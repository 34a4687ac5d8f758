"""Local HTTP endpoints for the tests of what the services call out to: `serving` puts
any aiohttp app on a free port of a loopback address; `webhook_receiver` records every
POST it gets, for the tests of outgoing webhooks (alerts, completion callbacks). What it
answers depends on the path: /ok/<name> 200; /flaky/<name> 500 twice, then 200;
/gone/<name> 410; /down/<name> 500."""

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import NamedTuple

from aiohttp import web


class Call(NamedTuple):
    headers: dict[str, str]
    body: bytes
    status: int  # what the receiver answered


@dataclass
class Receiver:
    base: str
    calls: dict[str, list[Call]] = field(default_factory=dict)  # path -> every attempt

    def delivered(self, path: str) -> list[tuple[dict[str, str], bytes]]:
        return [
            (call.headers, call.body) for call in self.calls.get(path, []) if call.status == 200
        ]


@asynccontextmanager
async def serving(app: web.Application, host: str) -> AsyncIterator[str]:
    """`app` served on a free port of `host` (a loopback address the runner's outgoing
    policy allows); yields its base URL."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port = sock.getsockname()[1]
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def webhook_receiver(host: str) -> AsyncIterator[Receiver]:
    state = Receiver("")

    async def record(request: web.Request) -> web.Response:
        calls = state.calls.setdefault(request.path, [])
        kind = request.match_info["kind"]
        status = {"ok": 200, "gone": 410, "down": 500}.get(kind, 500 if len(calls) < 2 else 200)
        calls.append(Call(dict(request.headers), await request.read(), status))
        return web.Response(status=status)

    app = web.Application()
    app.router.add_post("/{kind}/{name}", record)
    async with serving(app, host) as base:
        state.base = base
        yield state

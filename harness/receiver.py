"""Local HTTP endpoints for the tests of what the services call out to: `serving` puts
any aiohttp app on a free port of a loopback address; `webhook_receiver` records every
POST it gets, for the tests of outgoing webhooks (alerts, completion callbacks). What it
answers depends on the path: /ok/<name> 200; /flaky/<name> 500 twice, then 200;
/gone/<name> 410; /down/<name> 500. `ledger_sink` records what runs of flows POST to it,
for the tests of ordering and pacing."""

import asyncio
import json
import socket
import time
from collections import Counter
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
async def serving(
    app: web.Application, host: str, shutdown_timeout_s: float = 60.0
) -> AsyncIterator[str]:
    """`app` served on a free port of `host` (a loopback address the runner's outgoing
    policy allows); yields its base URL. At the end, handlers still in flight get
    `shutdown_timeout_s` to finish, then are cancelled (aiohttp takes 0 for no bound)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port = sock.getsockname()[1]
    runner = web.AppRunner(app, shutdown_timeout=shutdown_timeout_s)
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


class Entry(NamedTuple):
    key: str
    n: int
    at: float  # time.monotonic() when it arrived


@dataclass
class Ledger:
    """What a sink endpoint saw, per name (a flow's): each POST's `key` and `n` in the
    order they arrived, and the most that were in flight at once, per key and in all."""

    base: str
    entries: dict[str, list[Entry]] = field(default_factory=dict)
    most_per_key: Counter[tuple[str, str]] = field(default_factory=Counter)
    most: Counter[str] = field(default_factory=Counter)
    _per_key: Counter[tuple[str, str]] = field(default_factory=Counter)
    _all: Counter[str] = field(default_factory=Counter)

    def of_key(self, name: str, key: str) -> list[int]:
        return [entry.n for entry in self.entries.get(name, []) if entry.key == key]


@asynccontextmanager
async def ledger_sink(host: str, hold_s: float) -> AsyncIterator[Ledger]:
    """POST /ledger/<name> `{"key": ..., "n": ..., "hold": <s, optional>}`: recorded on
    arrival, answered 200 after `hold_s` or `hold`, whichever is longer (so that runs
    that overlap are seen to)."""
    ledger = Ledger("")

    async def record(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        body = json.loads(await request.read())
        key = str(body["key"])
        ledger.entries.setdefault(name, []).append(Entry(key, int(body["n"]), time.monotonic()))
        ledger._per_key[(name, key)] += 1
        ledger._all[name] += 1
        ledger.most_per_key[(name, key)] = max(
            ledger.most_per_key[(name, key)], ledger._per_key[(name, key)]
        )
        ledger.most[name] = max(ledger.most[name], ledger._all[name])
        try:
            await asyncio.sleep(max(hold_s, float(body.get("hold", 0))))
        finally:
            ledger._per_key[(name, key)] -= 1
            ledger._all[name] -= 1
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/ledger/{name}", record)
    async with serving(app, host) as base:
        ledger.base = base
        yield ledger

"""An HTTP endpoint that answers after a delay: the remote system of the I/O-bound bench
flow. `python -m bench.slow_endpoint HOST PORT DELAY_MS` (loopback only)."""

import asyncio
import sys

import uvloop
from aiohttp import web


def main() -> None:
    host, port, delay_s = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) / 1000
    assert host.startswith("127."), "loopback only"

    async def answer(request: web.Request) -> web.Response:
        await asyncio.sleep(delay_s)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/slow", answer)
    uvloop.install()
    web.run_app(app, host=host, port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()

"""The ceiling: a bare aiohttp app that parses a small JSON body and answers fixed JSON,
on uvloop, one process. `python -m bench.ceiling PORT`."""

import sys

import orjson
import uvloop
from aiohttp import web

ANSWER = orjson.dumps({"status": 200, "error": None, "message": "ok", "data": None})


async def handle(request: web.Request) -> web.Response:
    orjson.loads(await request.read())
    return web.Response(body=ANSWER, content_type="application/json")


def main() -> None:
    app = web.Application()
    app.router.add_post("/v1/flow-webhook/{flow_id}", handle)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()

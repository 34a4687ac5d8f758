"""An API handler whose database is away (down, or mid-failover) answers the contract's
503 envelope with Retry-After, not a 500."""

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from shared.web import envelope_middleware


@pytest.mark.parametrize(
    "failure",
    [
        ConnectionRefusedError(111, "Connection refused"),
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"),
        asyncpg.exceptions.TargetServerAttributeNotMatched("none is read-write"),
        asyncpg.exceptions.ReadOnlySQLTransactionError("read-only transaction"),
    ],
)
async def test_database_unavailable_is_a_503_envelope(failure: BaseException) -> None:
    async def handler(request: web.Request) -> web.Response:
        raise failure

    app = web.Application(middlewares=[envelope_middleware])
    app.router.add_post("/v1/flows", handler)
    async with TestClient(TestServer(app)) as client:
        answer = await client.post("/v1/flows")
        assert answer.status == 503
        assert answer.headers["Retry-After"] == "5"
        assert await answer.json() == {
            "status": 503,
            "error": "unavailable",
            "message": "the database is unavailable; try again",
            "data": None,
        }


async def test_other_failures_stay_internal_errors() -> None:
    async def handler(request: web.Request) -> web.Response:
        raise KeyError("bug")

    app = web.Application(middlewares=[envelope_middleware])
    app.router.add_get("/x", handler)
    async with TestClient(TestServer(app)) as client:
        answer = await client.get("/x")
        assert answer.status == 500

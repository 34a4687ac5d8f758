"""Typed HTTP routes (shared/http_api.py): the kernel judges a request in a fixed order
(token and scope, the path's resource, query, body), answers each refusal with the
error envelope, and serialises what the handler returns. On a bare app with an
in-process token check (auth's own service checks its tokens the same way)."""

from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import BaseModel, Field, field_validator

from shared.bearer import hash_token
from shared.errors import BadRequest, NotFound, Unauthorized
from shared.http_api import TOKEN_CHECK, Answer, Call, Route, Scope, add_routes
from shared.schemas.access import IdentifyToken, TokenIdentity
from shared.web import base_app

READER, WRITER = "fhp_reader", "fhp_writer"
SCOPES = {hash_token(READER): ["debugger.read"], hash_token(WRITER): ["automation"]}
WRITE = Scope(frozenset({"automation"}))


async def token_check(query: IdentifyToken) -> TokenIdentity:
    scopes = SCOPES.get(query.bearer_hash)
    if scopes is None:
        raise Unauthorized("unknown, expired or revoked token")
    return TokenIdentity(token_id="t", workspace_id="w1", scopes=scopes)


class Things:
    """The path's `{thing}`, visible only when it is "mine"."""

    async def find(self, request: web.Request, caller: TokenIdentity | None) -> str:
        thing = request.match_info["thing"]
        if thing != "mine":
            raise NotFound("no such thing")
        return thing


class Query(BaseModel):
    limit: int = Field(default=5, ge=1, le=10)
    tag: list[str] | None = None

    @field_validator("limit", mode="before")
    @classmethod
    def _whole(cls, value: Any) -> Any:
        if not str(value).isdigit():
            raise BadRequest("limit must be a whole number", data={"field": "limit"})
        return value


class Body(BaseModel):
    name: str = Field(min_length=1)
    note: str | None = None


class Shown(BaseModel):
    thing: str
    limit: int | None = None
    tags: list[str] | None = None
    name: str | None = None
    note: str | None = None


class Api:
    async def show(self, call: Call[Query, None]) -> Shown:
        return Shown(thing=call.resource, limit=call.query.limit, tags=call.query.tag)

    async def create(self, call: Call[None, Body]) -> Answer:
        # Only the fields given are answered: `note` stays out unless the body had it.
        shown = Shown(thing=call.resource, name=call.body.name)
        if call.body.note is not None:
            shown.note = call.body.note
        return Answer(shown, 201, {"Location": "/things/mine"})

    async def remove(self, call: Call[None, None]) -> None:
        assert call.caller.workspace_id == "w1"


API = web.AppKey("api", Api)
THINGS = web.AppKey("things", Things)
ROUTES = [
    Route(
        "GET",
        "/things/{thing}",
        API,
        lambda api: api.show,
        "Show",
        Shown,
        scope=Scope(frozenset({"debugger.read", "automation"})),
        resource=THINGS,
        query=Query,
    ),
    Route(
        "POST",
        "/things/{thing}",
        API,
        lambda api: api.create,
        "Create",
        Shown,
        status=201,
        scope=WRITE,
        resource=THINGS,
        body=Body,
    ),
    Route(
        "DELETE",
        "/things/{thing}",
        API,
        lambda api: api.remove,
        "Remove",
        status=204,
        scope=Scope(frozenset({"automation"}), "removing needs automation"),
        resource=THINGS,
    ),
]


def _client() -> TestClient[Any, Any]:
    app = base_app("test")
    app[TOKEN_CHECK] = token_check
    app[API] = Api()
    app[THINGS] = Things()
    add_routes(app, ROUTES)
    return TestClient(TestServer(app))


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _answer(response: Any) -> tuple[int, Any]:
    return response.status, await response.json()


async def test_refusals_come_in_order_token_scope_resource_query_body() -> None:
    async with _client() as client:
        status, body = await _answer(await client.get("/things/other?limit=x"))
        assert (status, body["error"]) == (401, "unauthorized")
        status, body = await _answer(
            await client.post("/things/other", data=b"{", headers=_bearer(READER))
        )
        assert (status, body["message"]) == (
            403,
            "this token needs one of the scopes automation",
        )
        status, body = await _answer(await client.delete("/things/mine", headers=_bearer(READER)))
        assert (status, body["message"]) == (403, "removing needs automation")
        # Not visible: 404, whatever the query or body hold.
        status, body = await _answer(
            await client.get("/things/other?limit=x", headers=_bearer(READER))
        )
        assert (status, body["message"]) == (404, "no such thing")
        status, body = await _answer(
            await client.post("/things/other", data=b"{", headers=_bearer(WRITER))
        )
        assert (status, body["message"]) == (404, "no such thing")


async def test_query_and_body_are_validated_by_their_models() -> None:
    async with _client() as client:
        answer = await client.get("/things/mine?limit=x", headers=_bearer(READER))
        assert await answer.json() == {
            "status": 400,
            "error": "bad_request",
            "message": "limit must be a whole number",
            "data": {"field": "limit"},
        }
        status, body = await _answer(
            await client.get("/things/mine?limit=11", headers=_bearer(READER))
        )
        assert (status, body["data"]) == (400, {"field": "limit"})
        assert body["message"].startswith("limit: Input should be less than or equal to 10")
        status, body = await _answer(
            await client.post("/things/mine", data=b"{", headers=_bearer(WRITER))
        )
        assert status == 400 and body["message"].startswith("the body is not valid JSON: ")
        status, body = await _answer(
            await client.post("/things/mine", json={"name": ""}, headers=_bearer(WRITER))
        )
        assert (status, body["data"]) == (400, {"field": "name"})
        assert body["message"] == "name: String should have at least 1 character"


async def test_answers_are_the_response_models() -> None:
    async with _client() as client:
        # A repeated parameter fills a list field; other parameters are ignored.
        answer = await client.get("/things/mine?tag=a&tag=b&other=1", headers=_bearer(READER))
        assert (answer.status, await answer.json()) == (
            200,
            {"thing": "mine", "limit": 5, "tags": ["a", "b"]},
        )
        answer = await client.post("/things/mine", json={"name": "n"}, headers=_bearer(WRITER))
        assert (answer.status, await answer.json()) == (201, {"thing": "mine", "name": "n"})
        assert answer.headers["Location"] == "/things/mine"
        answer = await client.delete("/things/mine", headers=_bearer(WRITER))
        assert (answer.status, await answer.read()) == (204, b"")
        assert "X-Request-Id" in answer.headers

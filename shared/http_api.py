"""Typed HTTP routes: the HTTP half of the service kernel, as `shared/messaging/contracts.py`
and `Kernel.serve` are the messaging half.

A `Route` declares everything about one operation: its method and path, the object
(`wire` provides it under `key`) and method that handle it, the scope a personal token
needs, the path's resource (looked up, and refused as 404 when the caller may not see
it), its query model, body model and response model. The kernel answers in that order,
each step able to end the request with the contract's error envelope:

1. the bearer token (401) and its scope (403), through the service's `TOKEN_CHECK`;
2. the path's resource (`ResourceLookup`: a flow of the caller's workspace, a stored
   request...; 404), so nothing about the input is judged before the caller may see it;
3. the query (every field of the query model from the query string; a `list` field
   takes every value of a repeated parameter) and the body, validated by their models
   (400 naming the field);
4. the handler, called with a `Call` (caller, resource, query, body);
5. its answer: a response model (serialised with the route's status), an `Answer`
   (another status, headers), None (no content) or a stream it prepared itself.

The OpenAPI document (`shared/openapi.py`) is built from these same declarations.

Validation messages: a model's field validators may raise `BadRequest` themselves (it
is no `ValueError`, so pydantic lets it through untouched) for the exact message and
`data` the contract pins; any other validation error becomes `400 "<field>: <what>"`
with `data.field`. A body model that reads JSON its own way (messages pinned before the
kernel read bodies) defines `from_json(raw) -> model`.
"""

import types
import typing
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, Protocol, TypeVar, Union

import orjson
from aiohttp import web
from multidict import MultiMapping
from pydantic import BaseModel, ValidationError

from shared.bearer import bearer_from_header, hash_token
from shared.errors import BadRequest, Forbidden, Timeout, Unavailable
from shared.messaging.contracts import IDENTIFY_TOKEN
from shared.messaging.rpc import RpcClient
from shared.openapi import JSON, NoContent, Operation
from shared.schemas.access import IdentifyToken, TokenIdentity
from shared.web import read_api_body

T = TypeVar("T")
Q = TypeVar("Q")
B = TypeVar("B")

# How a service learns who holds a bearer token: auth over RPC (`RpcTokenCheck`), or
# auth itself, locally.
TokenCheck = Callable[[IdentifyToken], Awaitable[TokenIdentity]]
TOKEN_CHECK: web.AppKey[TokenCheck] = web.AppKey("token_check")


class RpcTokenCheck:
    """The token's identity from auth (`auth.identify_token`)."""

    def __init__(self, rpc: RpcClient) -> None:
        self.rpc = rpc

    async def identify(self, query: IdentifyToken) -> TokenIdentity:
        try:
            return await self.rpc.call(IDENTIFY_TOKEN, query)
        except Timeout:
            raise Unavailable("the auth service did not answer") from None


@dataclass(frozen=True)
class Scope:
    """The scopes that open a route (one of them is enough), and the 403's message."""

    allowed: frozenset[str]
    refusal: str = ""

    def refuse(self) -> Forbidden:
        return Forbidden(
            self.refusal or f"this token needs one of the scopes {', '.join(sorted(self.allowed))}"
        )


async def authorise(request: web.Request, scope: Scope) -> TokenIdentity:
    """The caller's identity if its bearer token holds one of `scope`'s; else 401/403."""
    token = bearer_from_header(request.headers.get("Authorization"))
    check = request.app[TOKEN_CHECK]
    identity: TokenIdentity = await check(IdentifyToken(bearer_hash=hash_token(token)))
    if not scope.allowed.intersection(identity.scopes):
        raise scope.refuse()
    return identity


class ResourceLookup(Protocol):
    """The resource a route's path names, as the caller may see it; `NotFound` (or
    another `ApiError`) when it may not. `caller` is None on a route without a scope."""

    async def find(self, request: web.Request, caller: TokenIdentity | None) -> Any: ...


@dataclass(frozen=True)
class Call(Generic[Q, B]):
    """What a typed handler is given: the request read and judged by the kernel."""

    request: web.Request
    query: Q
    body: B
    # The path's resource (`Route.resource`), as its lookup returned it.
    resource: Any = None
    identity: TokenIdentity | None = None

    @property
    def caller(self) -> TokenIdentity:
        """The bearer's identity (a route with a `scope`)."""
        assert self.identity is not None, "this route declares no scope"
        return self.identity

    def path(self, name: str) -> str:
        return self.request.match_info[name]


@dataclass(frozen=True)
class Answer:
    """A response model with a status other than the route's, or with headers."""

    body: BaseModel | None
    status: int
    headers: Mapping[str, str] | None = None


Reply = BaseModel | Answer | web.StreamResponse | None
TypedHandler = Callable[[Call[Any, Any]], Awaitable[Reply]]
RawHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Status = int | Literal["default"]


@dataclass(frozen=True)
class Route(Generic[T]):
    """One HTTP operation, served by a method of the object `wire` provides under `key`."""

    method: str
    path: str
    key: web.AppKey[T]
    pick: Callable[[T], Any]  # a TypedHandler (a RawHandler when `raw`)
    summary: str
    # The answer's model (None: 204, no content) and status.
    response: type[BaseModel] | None = None
    status: int = 200
    scope: Scope | None = None  # None: no personal token is asked for
    resource: web.AppKey[Any] | None = None  # a ResourceLookup provided by `wire`
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    body_required: bool = True
    # The body decoded as JSON but not validated: its handler applies rules that need
    # the service's objects (the runner's flow definitions: templates, a PATCH's merge).
    body_as_json: bool = False
    # The handler reads the request itself (the webhook: raw bodies of many types);
    # `query` and `body` then only document it.
    raw: bool = False
    # Other documented answers (by status, or "default": anything else).
    other_responses: Mapping[Status, type[BaseModel]] = field(default_factory=dict)
    description: str = ""
    tags: tuple[str, ...] = ()
    partial: bool = False  # PATCH: the body's fields, none required
    body_media: tuple[str, ...] = (JSON,)
    response_media: str = JSON
    # Documented as needing a bearer (a personal token, or the webhook's own token).
    secured: bool | None = None
    in_api: bool = True  # False: a page for people, left out of the document

    @property
    def doc(self) -> Operation:
        responses: dict[Status, type[BaseModel]] = {
            self.status: self.response if self.response is not None else NoContent
        }
        responses.update(self.other_responses)
        return Operation(
            self.summary,
            responses,
            body=self.body,
            partial=self.partial,
            body_required=self.body_required,
            body_media=self.body_media,
            response_media=self.response_media,
            query=self.query,
            description=self.description,
            tags=self.tags,
            secured=self.scope is not None if self.secured is None else self.secured,
            in_api=self.in_api,
        )

    def handler(self) -> RawHandler:
        """The aiohttp handler: the kernel's steps around the declared method."""
        route = self

        async def handle(request: web.Request) -> web.StreamResponse:
            target = route.pick(request.app[route.key])
            if route.raw:
                answer: web.StreamResponse = await target(request)
                return answer
            identity = await authorise(request, route.scope) if route.scope else None
            resource = None
            if route.resource is not None:
                resource = await request.app[route.resource].find(request, identity)
            query = read_query(route.query, request.query) if route.query else None
            body = await route._read_body(request) if route.body else None
            reply = await target(Call(request, query, body, resource, identity))
            return route._respond(reply)

        return handle

    async def _read_body(self, request: web.Request) -> Any:
        assert self.body is not None
        raw = await read_api_body(request)
        if not self.body_required and not raw.strip():
            return None
        reader = getattr(self.body, "from_json", None)
        if reader is not None:
            return reader(raw)
        try:
            document = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"the body is not valid JSON: {exc}") from None
        if self.body_as_json:
            return document
        return validated(self.body, document)

    def _respond(self, reply: Reply) -> web.StreamResponse:
        if isinstance(reply, web.StreamResponse):
            return reply
        if isinstance(reply, Answer):
            return model_response(reply.body, reply.status, reply.headers)
        return model_response(reply, self.status)


def validated(model: type[BaseModel], document: Any) -> Any:
    """`document` as `model`, or 400 naming the first field that is wrong."""
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        raise invalid(exc) from None


def invalid(exc: ValidationError) -> BadRequest:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"]) or "body"
    return BadRequest(f"{where}: {error['msg']}", data={"field": where})


def read_query(model: type[BaseModel], query: MultiMapping[str]) -> Any:
    """The query string as `model`: each field by its name (or alias); a list field takes
    every value of its parameter, any other field the first; other parameters are
    ignored, as they always were."""
    values: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        key = info.alias or name
        if key in query:
            values[key] = query.getall(key) if _is_list(info.annotation) else query[key]
    return validated(model, values)


def _is_list(annotation: Any) -> bool:
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return any(_is_list(arg) for arg in typing.get_args(annotation))
    return typing.get_origin(annotation) is list


def model_response(
    model: BaseModel | None, status: int, headers: Mapping[str, str] | None = None
) -> web.Response:
    """The model as JSON: the fields it was given (a field left out stays out, as the
    answers always did), encoded by orjson as every answer is (times as RFC 3339)."""
    if model is None:
        return web.Response(status=status, headers=headers)
    body = orjson.dumps(model.model_dump(mode="python", by_alias=True, exclude_unset=True))
    return web.Response(body=body, status=status, content_type=JSON, headers=headers)


def add_routes(app: web.Application, routes: typing.Iterable[Route[Any]]) -> None:
    for route in routes:
        app.router.add_route(route.method, route.path, route.handler())

"""`/v1/access-tokens`: create (secret shown once), list, revoke."""

import uuid
from datetime import UTC, datetime

from aiohttp import web
from pydantic import BaseModel, Field, ValidationError, field_validator

from services.auth.access import AccessChecker
from services.auth.store import AuthStore
from shared.api_auth import KNOWN_SCOPES, MANAGE_SCOPES, scope_covers
from shared.bearer import bearer_from_header, hash_token, new_personal_token
from shared.errors import BadRequest, Forbidden, NotFound
from shared.messaging.connection import Broker
from shared.messaging.contracts import ACCESS_TOKEN_REVOKED
from shared.schemas.access import AccessTokenRevoked, IdentifyToken, TokenIdentity
from shared.web import json_response, read_api_body

DISPLAY_PREFIX_LENGTH = 10


class NewToken(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    scopes: list[str] = Field(min_length=1)
    expires_at: datetime | None = None

    @field_validator("scopes")
    @classmethod
    def known_scopes(cls, scopes: list[str]) -> list[str]:
        unknown = sorted(set(scopes) - KNOWN_SCOPES)
        if unknown:
            raise ValueError(f"unknown scopes {unknown}; known: {sorted(KNOWN_SCOPES)}")
        return sorted(set(scopes))

    @field_validator("expires_at")
    @classmethod
    def in_the_future(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("expires_at needs a time zone, e.g. 2030-01-01T00:00:00Z")
        try:
            # Stored in UTC: past the year 9999 there, asyncpg cannot encode it.
            value.astimezone(UTC)
        except OverflowError:
            raise ValueError("expires_at is out of range") from None
        if value <= datetime.now(UTC):
            raise ValueError("expires_at must be in the future")
        return value


def _parse(model: type[NewToken], body: bytes) -> NewToken:
    try:
        return model.model_validate_json(body or b"{}")
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise BadRequest(f"{where}: {first['msg']}", data={"field": where}) from None


class TokensApi:
    def __init__(self, store: AuthStore, checker: AccessChecker, broker: Broker) -> None:
        self.store = store
        self.checker = checker
        self.broker = broker

    async def _caller(self, request: web.Request) -> TokenIdentity:
        token = bearer_from_header(request.headers.get("Authorization"))
        # A local call: auth checks its own API's callers without a round trip.
        identity = await self.checker.identify_token(IdentifyToken(bearer_hash=hash_token(token)))
        if not MANAGE_SCOPES.intersection(identity.scopes):
            raise Forbidden("managing tokens needs the scope automation or automation.manage")
        return identity

    async def create(self, request: web.Request) -> web.Response:
        caller = await self._caller(request)
        new = _parse(NewToken, await read_api_body(request))
        # Nobody hands out more than they hold.
        for wanted in new.scopes:
            if not any(scope_covers(held, wanted) for held in caller.scopes):
                raise Forbidden(f"this token cannot grant the scope {wanted!r}")
        secret = new_personal_token()
        token = await self.store.create_token(
            caller.workspace_id,
            new.name,
            hash_token(secret),
            secret[:DISPLAY_PREFIX_LENGTH],
            new.scopes,
            new.expires_at,
        )
        return json_response({**token.public(), "token": secret}, status=201)

    async def list(self, request: web.Request) -> web.Response:
        caller = await self._caller(request)
        tokens = await self.store.list_tokens(caller.workspace_id)
        return json_response({"items": [t.public() for t in tokens], "next_cursor": None})

    async def revoke(self, request: web.Request) -> web.Response:
        caller = await self._caller(request)
        try:
            token_id = uuid.UUID(request.match_info["token_id"])
        except ValueError:
            raise NotFound("no such token") from None
        token = await self.store.revoke_token(caller.workspace_id, token_id)
        if token is None:
            raise NotFound("no such token")
        # Every ingress replica drops what it cached for this token.
        await self.broker.publish_event(
            ACCESS_TOKEN_REVOKED,
            AccessTokenRevoked(token_id=token.id, token_hash=token.token_hash),
            mandatory=False,
        )
        return web.Response(status=204)

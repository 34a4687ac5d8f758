"""`/v1/access-tokens`: create (secret shown once), list, revoke. Tokens with a manage
scope (`TOKENS_SCOPE`), checked by auth itself (`TOKEN_CHECK` is its own
`AccessChecker`: no round trip)."""

import uuid
from datetime import UTC, datetime
from typing import Self

from pydantic import BaseModel, Field, ValidationError, field_validator

from services.auth.store import AuthStore
from shared.api_auth import KNOWN_SCOPES, MANAGE_SCOPES, scope_covers
from shared.bearer import hash_token, new_personal_token
from shared.errors import Forbidden, NotFound
from shared.http_api import Call, Scope, invalid
from shared.messaging.connection import Broker
from shared.messaging.contracts import ACCESS_TOKEN_REVOKED
from shared.openapi import Page
from shared.schemas.access import AccessTokenRevoked

DISPLAY_PREFIX_LENGTH = 10
TOKENS_SCOPE = Scope(
    MANAGE_SCOPES, "managing tokens needs the scope automation or automation.manage"
)


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

    @classmethod
    def from_json(cls, raw: bytes) -> Self:
        """An empty body is `{}` (so the answer names the first missing field)."""
        try:
            return cls.model_validate_json(raw or b"{}")
        except ValidationError as exc:
            raise invalid(exc) from None


class AccessTokenView(BaseModel):
    """A personal access token (never its secret, except once at creation)"""

    id: str
    workspace_id: str
    name: str
    prefix: str
    scopes: list[str]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


class CreatedAccessToken(AccessTokenView):
    """The new token, with its secret: shown this once"""

    token: str


class AccessTokenList(Page):
    """The workspace's tokens"""

    items: list[AccessTokenView]


class TokensApi:
    def __init__(self, store: AuthStore, broker: Broker) -> None:
        self.store = store
        self.broker = broker

    async def create(self, call: Call[None, NewToken]) -> CreatedAccessToken:
        caller, new = call.caller, call.body
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
        return CreatedAccessToken.model_validate({**token.public(), "token": secret})

    async def list(self, call: Call[None, None]) -> AccessTokenList:
        tokens = await self.store.list_tokens(call.caller.workspace_id)
        return AccessTokenList(
            items=[AccessTokenView.model_validate(t.public()) for t in tokens], next_cursor=None
        )

    async def revoke(self, call: Call[None, None]) -> None:
        try:
            token_id = uuid.UUID(call.path("token_id"))
        except ValueError:
            raise NotFound("no such token") from None
        token = await self.store.revoke_token(call.caller.workspace_id, token_id)
        if token is None:
            raise NotFound("no such token")
        # Every ingress replica drops what it cached for this token.
        await self.broker.publish_event(
            ACCESS_TOKEN_REVOKED,
            AccessTokenRevoked(token_id=token.id, token_hash=token.token_hash),
            mandatory=False,
        )

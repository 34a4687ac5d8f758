"""The tokens API's OpenAPI operations (shared/openapi.py): the request model is the one
`tokens_api` validates with; the answers' models describe `AccessToken.public()`."""

from datetime import datetime

from pydantic import BaseModel

from services.auth.tokens_api import NewToken
from shared.openapi import NoContent, Operation, Page

TAGS = ("access tokens",)


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


CREATE = Operation(
    "Create a personal access token (no more scopes than the caller's)",
    {201: CreatedAccessToken},
    body=NewToken,
    tags=TAGS,
)
LIST = Operation("List the workspace's access tokens", {200: AccessTokenList}, tags=TAGS)
REVOKE = Operation("Revoke an access token", {204: NoContent}, tags=TAGS)

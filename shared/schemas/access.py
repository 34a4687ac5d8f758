"""Who may do what: the auth service's RPCs and the access-change events."""

from datetime import datetime
from typing import Literal

from pydantic import BaseModel

FlowStatus = Literal["draft", "live", "paused"]


class FlowWebhookSettings(BaseModel):
    """What the ingress needs to know about a flow to take one of its webhooks."""

    flow_id: str
    workspace_id: str
    version: int
    status: FlowStatus
    is_async: bool = False
    timeout_s: float = 30.0


class FlowChanged(BaseModel):
    """runner -> auth (`flow.changed`): a flow's access state after every change.
    Carries the webhook token's hash, never the token."""

    flow_id: str
    workspace_id: str
    version: int
    token_hash: str
    settings: FlowWebhookSettings
    deleted: bool = False


class ListFlowAccess(BaseModel):
    """auth -> runner at start: page through every flow's access state."""

    after_flow_id: str | None = None
    limit: int = 500


class FlowAccessPage(BaseModel):
    items: list[FlowChanged]
    next_after_flow_id: str | None


class FlowAccessChanged(BaseModel):
    """auth -> every ingress (`flow_access.changed`), after auth applied the change."""

    flow_id: str


class AccessTokenRevoked(BaseModel):
    """auth -> every ingress (`access_token.revoked`)."""

    token_id: str
    token_hash: str


class AuthorizeWebhook(BaseModel):
    """ingress -> auth: may this bearer (sent as its SHA-256 hash) run this flow?"""

    flow_id: str
    bearer_hash: str


class WebhookAccess(BaseModel):
    decision: Literal["allowed", "unauthorized", "forbidden", "not_found"]
    flow: FlowWebhookSettings | None = None
    # The personal token's expiry, so that a cached answer is not used past it.
    expires_at: datetime | None = None


class IdentifyToken(BaseModel):
    """runner/debugger -> auth: which workspace and scopes has this bearer?"""

    bearer_hash: str


class TokenIdentity(BaseModel):
    token_id: str
    workspace_id: str
    scopes: list[str]

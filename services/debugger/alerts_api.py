"""`/v1/flows/{id}/alert`: PUT (create or replace), GET, DELETE a flow's failure alert
(alerts.py). Tokens with a manage scope (`MANAGE_SCOPES`): an alert sends the flow's
data to a URL of the caller's choosing, which read-only ops tokens must not set up.

The signing secret (`whsec_...`) is generated at creation and returned in that answer
only; later answers show a hint (its first characters). A caller may bring its own
(`"secret"`, e.g. one secret for all its flows) or ask for a new one
(`"rotate_secret": true`, returned in that answer); an update without either keeps
the secret, so changing a threshold does not break the receiver."""

from typing import Any

import asyncpg
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.debugger.alerts import AlertStore
from shared import standard_webhooks
from shared.errors import BadRequest, NotFound
from shared.http_api import Answer, Call
from shared.outbound import AddressPolicy, OutboundRefused, check_destination

MIN_WINDOW_S = 10
MAX_WINDOW_S = 7 * 86400
MAX_URL_CHARS = 2048
SECRET_HINT_CHARS = 10  # "whsec_" and 4 characters of base64: 24 of at least 192 bits
RECENT_NOTICES = 10


class AlertConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    url: str = Field(min_length=1, max_length=MAX_URL_CHARS)
    failure_rate: float = Field(gt=0, le=1)
    window_s: int = Field(ge=MIN_WINDOW_S, le=MAX_WINDOW_S)
    min_requests: int = Field(ge=1, le=1_000_000)
    secret: str | None = None
    rotate_secret: bool = False

    @classmethod
    def from_json(cls, raw: bytes) -> "AlertConfig":
        try:
            document = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"the body is not valid JSON: {exc}") from None
        return parse_config(document)


class AlertNotice(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: int | str
    type: str
    attempts: int


class AlertView(BaseModel):
    """A flow's failure alert (its secret shown as a hint, except once: `secret`)"""

    model_config = ConfigDict(extra="allow")

    flow_id: str
    url: str
    failure_rate: float
    window_s: int
    min_requests: int
    secret_hint: str
    notices: list[AlertNotice]
    secret: str | None = None


def parse_config(raw: Any) -> AlertConfig:
    """The body as an AlertConfig, or 400 naming the first field that is wrong."""
    if not isinstance(raw, dict):
        raise BadRequest("the alert must be a JSON object")
    try:
        config = AlertConfig.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"]) or "body"
        raise BadRequest(f"{field}: {error['msg']}", data={"field": field}) from None
    if config.secret is not None:
        if config.rotate_secret:
            raise BadRequest(
                "secret: give a secret or rotate_secret, not both", data={"field": "secret"}
            )
        if not config.secret.startswith(standard_webhooks.PREFIX):
            raise BadRequest("secret: must start with whsec_", data={"field": "secret"})
        try:
            standard_webhooks.secret_key(config.secret)
        except ValueError as exc:
            raise BadRequest(f"secret: {exc}", data={"field": "secret"}) from None
    return config


def _time(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def view(alert: asyncpg.Record, notices: list[asyncpg.Record]) -> dict[str, Any]:
    return {
        "flow_id": str(alert["flow_id"]),
        "url": alert["url"],
        "failure_rate": alert["failure_rate"],
        "window_s": alert["window_s"],
        "min_requests": alert["min_requests"],
        "secret_hint": alert["secret"][:SECRET_HINT_CHARS] + "...",
        "created_at": _time(alert["created_at"]),
        "updated_at": _time(alert["updated_at"]),
        "last_fired_at": {
            "failure_rate": _time(alert["rate_fired_at"]),
            "dead_lettered": _time(alert["dead_letter_fired_at"]),
        },
        "notices": [
            {
                "id": notice["id"],
                "type": notice["type"],
                "created_at": _time(notice["created_at"]),
                "attempts": notice["attempts"],
                "delivered_at": _time(notice["delivered_at"]),
                "given_up_at": _time(notice["given_up_at"]),
                "next_attempt_at": _time(notice["next_attempt_at"])
                if notice["delivered_at"] is None and notice["given_up_at"] is None
                else None,
                "last_status": notice["last_status"],
                "last_error": notice["last_error"],
            }
            for notice in notices
        ],
    }


class AlertsApi:
    """Its routes' flow is the path's, as `FlowVisibility` found it for the caller."""

    def __init__(self, store: AlertStore, policy: AddressPolicy) -> None:
        self.store = store
        self.policy = policy

    async def put(self, call: Call[None, AlertConfig]) -> Answer:
        flow_id, workspace_id, config = call.resource, call.caller.workspace_id, call.body
        try:
            await check_destination(self.policy, config.url)
        except OutboundRefused as exc:
            raise BadRequest(f"url: {exc}", data={"field": "url"}) from None
        generated = config.secret is None
        secret = config.secret or standard_webhooks.new_secret()
        alert, created = await self.store.put(
            flow_id,
            workspace_id,
            config.model_dump(),
            secret,
            replace_secret=not generated or config.rotate_secret,
        )
        body = view(alert, await self.store.recent_notices(flow_id, RECENT_NOTICES))
        if generated and (created or config.rotate_secret):
            body["secret"] = secret  # the only time it is shown
        return Answer(AlertView.model_validate(body), 201 if created else 200)

    async def get(self, call: Call[None, None]) -> AlertView:
        flow_id = call.resource
        alert = await self.store.get(flow_id, call.caller.workspace_id)
        if alert is None:
            raise NotFound("this flow has no alert")
        notices = await self.store.recent_notices(flow_id, RECENT_NOTICES)
        return AlertView.model_validate(view(alert, notices))

    async def delete(self, call: Call[None, None]) -> None:
        if not await self.store.delete(call.resource, call.caller.workspace_id):
            raise NotFound("this flow has no alert")

"""`/v1/flows/{id}/alert`: PUT (create or replace), GET, DELETE a flow's failure alert
(alerts.py). Tokens with a manage scope (`MANAGE_SCOPES`): an alert sends the flow's
data to a URL of the caller's choosing, which read-only ops tokens must not set up.

The signing secret (`whsec_...`) is generated at creation and returned in that answer
only; later answers show a hint (its first characters). A caller may bring its own
(`"secret"`, e.g. one secret for all its flows) or ask for a new one
(`"rotate_secret": true`, returned in that answer); an update without either keeps
the secret, so changing a threshold does not break the receiver."""

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.debugger.alerts import AlertStore
from shared import standard_webhooks
from shared.api_auth import MANAGE_SCOPES, require_scope
from shared.errors import BadRequest, NotFound
from shared.messaging.rpc import RpcClient
from shared.outbound import AddressPolicy, OutboundRefused, check_destination
from shared.web import json_response, read_api_body

MIN_WINDOW_S = 10
MAX_WINDOW_S = 7 * 86400
MAX_URL_CHARS = 2048
SECRET_HINT_CHARS = 10  # "whsec_" and 4 characters of base64: 24 of at least 192 bits
RECENT_NOTICES = 10

VisibleFlow = Callable[[web.Request, str], Awaitable[uuid.UUID]]


class AlertConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    url: str = Field(min_length=1, max_length=MAX_URL_CHARS)
    failure_rate: float = Field(gt=0, le=1)
    window_s: int = Field(ge=MIN_WINDOW_S, le=MAX_WINDOW_S)
    min_requests: int = Field(ge=1, le=1_000_000)
    secret: str | None = None
    rotate_secret: bool = False


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
    def __init__(
        self,
        store: AlertStore,
        rpc: RpcClient,
        visible_flow: VisibleFlow,
        policy: AddressPolicy,
    ) -> None:
        self.store = store
        self.rpc = rpc
        # The requests API's ownership check: another workspace's flow is 404.
        self.visible_flow = visible_flow
        self.policy = policy

    async def _flow(self, request: web.Request) -> tuple[uuid.UUID, str]:
        caller = await require_scope(self.rpc, request, MANAGE_SCOPES)
        return await self.visible_flow(request, caller.workspace_id), caller.workspace_id

    async def put(self, request: web.Request) -> web.Response:
        flow_id, workspace_id = await self._flow(request)
        try:
            raw = orjson.loads(await read_api_body(request))
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"the body is not valid JSON: {exc}") from None
        config = parse_config(raw)
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
        return json_response(body, status=201 if created else 200)

    async def get(self, request: web.Request) -> web.Response:
        flow_id, workspace_id = await self._flow(request)
        alert = await self.store.get(flow_id, workspace_id)
        if alert is None:
            raise NotFound("this flow has no alert")
        return json_response(view(alert, await self.store.recent_notices(flow_id, RECENT_NOTICES)))

    async def delete(self, request: web.Request) -> web.Response:
        flow_id, workspace_id = await self._flow(request)
        if not await self.store.delete(flow_id, workspace_id):
            raise NotFound("this flow has no alert")
        return web.Response(status=204)

"""The flows API: `/v1/flows...`. Personal tokens with `automation` or
`automation.manage`, own workspace only (anything else is 404: `FlowVisibility`)."""

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.runner.access import FlowAccess
from services.runner.definition import parse_definition
from services.runner.flow_tokens import new_nonce
from services.runner.store import FlowRow, FlowStore
from services.runner.templates import TemplateEngine
from services.runner.webhook_secrets import (
    held_callback_secret,
    held_secrets,
    held_verify_token,
    keep_learned_secret,
    seal_callback_secret,
    seal_secrets,
    seal_verify_token,
)
from shared.errors import BadRequest, NotFound
from shared.http_api import Call
from shared.openapi import Page
from shared.outbound import AddressPolicy, OutboundRefused, check_destination
from shared.schemas.access import FlowStatus, TokenIdentity
from shared.secret_box import SecretBox

MAX_PAGE = 200


class FlowListQuery(BaseModel):
    limit: int = Field(default=50, ge=1, le=MAX_PAGE, description="Page size")
    cursor: str | None = Field(default=None, description="`next_cursor` of the previous page")

    @field_validator("limit", mode="before")
    @classmethod
    def _limit(cls, value: Any) -> int:
        try:
            # Out of range is brought into it, not refused (as always).
            return max(1, min(int(value), MAX_PAGE))
        except ValueError:
            raise BadRequest("limit must be a whole number", data={"field": "limit"}) from None


class FlowView(BaseModel):
    """A flow as stored (signing secrets shown as hints)"""

    id: str
    workspace_id: str
    name: str
    status: FlowStatus
    webhook: dict[str, Any]
    steps: list[Any]
    # Left out of the answer while the flow has none (the kernel leaves unset fields out).
    on_error: list[Any] | None = None
    version: int
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, flow: FlowRow) -> "FlowView":
        return cls.model_validate(flow.public())


class FlowList(Page):
    """The workspace's flows, oldest first"""

    items: list[FlowView]


class WebhookInfo(BaseModel):
    """Where and how to call the flow's webhook"""

    model_config = ConfigDict(populate_by_name=True)

    url: str
    token: str
    is_async: bool = Field(alias="async")


class FlowVisibility:
    """The path's `{flow_id}`, if it is a flow of the caller's workspace; else 404."""

    def __init__(self, store: FlowStore) -> None:
        self.store = store

    async def find(self, request: web.Request, caller: TokenIdentity | None) -> FlowRow:
        assert caller is not None, "flow routes declare a scope"
        flow = await self.store.get(request.match_info["flow_id"], caller.workspace_id)
        if flow is None:
            raise NotFound("no such flow")
        return flow


class FlowsApi:
    def __init__(
        self,
        store: FlowStore,
        access: FlowAccess,
        templates: TemplateEngine,
        max_timeout_s: float,
        webhook_base_url: str,
        secret_box: SecretBox | None = None,
        callback_policy: AddressPolicy | None = None,
        after_change: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.secret_box = secret_box
        # Told the flow's id once a change is committed (the sources routing to it).
        self.after_change = after_change
        # Where `webhook.callback.url` may lead (FLOWHOOKS_RUNNER_CALLBACK_ALLOW_NETWORKS).
        self.callback_policy = callback_policy or AddressPolicy([])
        self.store = store
        self.access = access
        self.templates = templates
        self.max_timeout_s = max_timeout_s
        self.webhook_base_url = webhook_base_url.rstrip("/")

    async def _save(
        self, flow: FlowRow | None, workspace_id: str, raw: Any, rotate: bool = False
    ) -> FlowRow:
        """Validate, write and publish `flow.changed` in one transaction."""
        definition = parse_definition(raw, self.templates, self.max_timeout_s)
        held = held_secrets(flow.definition["webhook"] if flow is not None else None)
        keep_learned_secret(definition, flow.definition["webhook"] if flow is not None else None)
        seal_secrets(definition, held, self.secret_box, workspace_id)
        stored_webhook = flow.definition["webhook"] if flow is not None else None
        seal_verify_token(
            definition, held_verify_token(stored_webhook), self.secret_box, workspace_id
        )
        if definition.webhook.callback is not None:
            try:
                # Said at once on save; checked again at each attempt (names change).
                await check_destination(self.callback_policy, definition.webhook.callback.url)
            except OutboundRefused as exc:
                field = "webhook.callback.url"
                raise BadRequest(f"{field}: {exc}", data={"field": field}) from None
            held_callback = held_callback_secret(
                flow.definition["webhook"] if flow is not None else None
            )
            seal_callback_secret(definition, held_callback, self.secret_box, workspace_id)
        public = definition.public()
        stored = {"webhook": public["webhook"], "steps": public["steps"]}
        if "on_error" in public:
            stored["on_error"] = public["on_error"]
        async with self.store.pool.acquire() as conn, conn.transaction():
            current_key = self.access.ring.current.key_id
            if flow is None:
                saved = await self.store.insert(
                    conn,
                    workspace_id,
                    definition.name,
                    definition.status,
                    stored,
                    new_nonce(),
                    current_key,
                )
            else:
                # A new nonce is picked under the current key: previous keys' tokens for
                # it were never shown, so they are not published (access.py).
                nonce, key_id = (
                    (new_nonce(), current_key) if rotate else (flow.token_nonce, flow.token_key_id)
                )
                updated = await self.store.update(
                    conn, flow, definition.name, definition.status, stored, nonce, key_id
                )
                if updated is None:
                    raise BadRequest("the flow was changed meanwhile; read it and try again")
                saved = updated
            await self.access.publish(saved)
        if self.after_change is not None:
            await self.after_change(saved.id)
        return saved

    def webhook_info(self, flow: FlowRow) -> WebhookInfo:
        return WebhookInfo(
            url=f"{self.webhook_base_url}/v1/flow-webhook/{flow.id}",
            token=self.access.token(flow),
            is_async=bool(flow.definition["webhook"].get("async", False)),
        )

    # Bodies: the kernel decodes the JSON (`body_as_json`); `_save` validates it with
    # `parse_definition`, which needs this service's template engine and bounds.

    async def create(self, call: Call[None, Any]) -> FlowView:
        return FlowView.of(await self._save(None, call.caller.workspace_id, call.body))

    async def list(self, call: Call[FlowListQuery, None]) -> FlowList:
        query = call.query
        flows = await self.store.in_workspace(call.caller.workspace_id, query.cursor, query.limit)
        return FlowList(
            items=[FlowView.of(flow) for flow in flows],
            next_cursor=flows[-1].id if len(flows) == query.limit else None,
        )

    async def get(self, call: Call[None, None]) -> FlowView:
        return FlowView.of(call.resource)

    async def replace(self, call: Call[None, Any]) -> FlowView:
        return FlowView.of(await self._save(call.resource, call.caller.workspace_id, call.body))

    async def patch(self, call: Call[None, Any]) -> FlowView:
        flow: FlowRow = call.resource
        patch = call.body
        if not isinstance(patch, dict):
            raise BadRequest("the patch must be a JSON object")
        merged: dict[str, Any] = {"name": flow.name, "status": flow.status, **flow.definition}
        for key, value in patch.items():
            if key == "webhook" and isinstance(value, dict):
                merged["webhook"] = {**merged["webhook"], **value}
            else:
                merged[key] = value
        return FlowView.of(await self._save(flow, call.caller.workspace_id, merged))

    async def delete(self, call: Call[None, None]) -> None:
        flow: FlowRow = call.resource
        async with self.store.pool.acquire() as conn, conn.transaction():
            if not await self.store.delete(conn, flow):
                raise BadRequest("the flow was changed meanwhile; read it and try again")
            await self.access.publish(flow, deleted=True)
        if self.after_change is not None:
            await self.after_change(flow.id)

    async def webhook(self, call: Call[None, None]) -> WebhookInfo:
        return self.webhook_info(call.resource)

    async def rotate_token(self, call: Call[None, None]) -> WebhookInfo:
        flow: FlowRow = call.resource
        raw = {"name": flow.name, "status": flow.status, **flow.definition}
        saved = await self._save(flow, call.caller.workspace_id, raw, rotate=True)
        return self.webhook_info(saved)

"""The flows API: `/v1/flows...`. Personal tokens with `automation` or
`automation.manage`, own workspace only (anything else is 404)."""

from typing import Any

import orjson
from aiohttp import web

from services.runner.access import FlowAccess
from services.runner.definition import parse_definition
from services.runner.flow_tokens import new_nonce
from services.runner.store import FlowRow, FlowStore
from services.runner.templates import TemplateEngine
from services.runner.webhook_secrets import (
    held_callback_secret,
    held_secrets,
    seal_callback_secret,
    seal_secrets,
)
from shared.api_auth import require_scope
from shared.errors import BadRequest, NotFound
from shared.messaging.rpc import RpcClient
from shared.outbound import AddressPolicy, OutboundRefused, check_destination
from shared.schemas.access import TokenIdentity
from shared.secret_box import SecretBox
from shared.web import json_response, read_api_body

MAX_PAGE = 200


class FlowsApi:
    def __init__(
        self,
        store: FlowStore,
        access: FlowAccess,
        rpc: RpcClient,
        templates: TemplateEngine,
        max_timeout_s: float,
        webhook_base_url: str,
        secret_box: SecretBox | None = None,
        callback_policy: AddressPolicy | None = None,
    ) -> None:
        self.secret_box = secret_box
        # Where `webhook.callback.url` may lead (FLOWHOOKS_RUNNER_CALLBACK_ALLOW_NETWORKS).
        self.callback_policy = callback_policy or AddressPolicy([])
        self.store = store
        self.access = access
        self.rpc = rpc
        self.templates = templates
        self.max_timeout_s = max_timeout_s
        self.webhook_base_url = webhook_base_url.rstrip("/")

    async def _caller(self, request: web.Request) -> TokenIdentity:
        return await require_scope(self.rpc, request)

    async def _flow(self, request: web.Request, caller: TokenIdentity) -> FlowRow:
        flow = await self.store.get(request.match_info["flow_id"], caller.workspace_id)
        if flow is None:
            raise NotFound("no such flow")
        return flow

    @staticmethod
    async def _json(request: web.Request) -> Any:
        try:
            return orjson.loads(await read_api_body(request))
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"the body is not valid JSON: {exc}") from None

    async def _save(
        self, flow: FlowRow | None, workspace_id: str, raw: Any, rotate: bool = False
    ) -> FlowRow:
        """Validate, write and publish `flow.changed` in one transaction."""
        definition = parse_definition(raw, self.templates, self.max_timeout_s)
        held = held_secrets(flow.definition["webhook"] if flow is not None else None)
        seal_secrets(definition, held, self.secret_box, workspace_id)
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
        return saved

    def webhook_info(self, flow: FlowRow) -> dict[str, Any]:
        return {
            "url": f"{self.webhook_base_url}/v1/flow-webhook/{flow.id}",
            "token": self.access.token(flow),
            "async": bool(flow.definition["webhook"].get("async", False)),
        }

    async def create(self, request: web.Request) -> web.Response:
        caller = await self._caller(request)
        flow = await self._save(None, caller.workspace_id, await self._json(request))
        return json_response(flow.public(), status=201)

    async def list(self, request: web.Request) -> web.Response:
        caller = await self._caller(request)
        try:
            limit = max(1, min(int(request.query.get("limit", "50")), MAX_PAGE))
        except ValueError:
            raise BadRequest("limit must be a whole number", data={"field": "limit"}) from None
        flows = await self.store.in_workspace(
            caller.workspace_id, request.query.get("cursor"), limit
        )
        return json_response(
            {
                "items": [flow.public() for flow in flows],
                "next_cursor": flows[-1].id if len(flows) == limit else None,
            }
        )

    async def get(self, request: web.Request) -> web.Response:
        caller = await self._caller(request)
        return json_response((await self._flow(request, caller)).public())

    async def replace(self, request: web.Request) -> web.Response:
        caller = await self._caller(request)
        flow = await self._flow(request, caller)
        saved = await self._save(flow, caller.workspace_id, await self._json(request))
        return json_response(saved.public())

    async def patch(self, request: web.Request) -> web.Response:
        caller = await self._caller(request)
        flow = await self._flow(request, caller)
        patch = await self._json(request)
        if not isinstance(patch, dict):
            raise BadRequest("the patch must be a JSON object")
        merged: dict[str, Any] = {"name": flow.name, "status": flow.status, **flow.definition}
        for key, value in patch.items():
            if key == "webhook" and isinstance(value, dict):
                merged["webhook"] = {**merged["webhook"], **value}
            else:
                merged[key] = value
        saved = await self._save(flow, caller.workspace_id, merged)
        return json_response(saved.public())

    async def delete(self, request: web.Request) -> web.Response:
        caller = await self._caller(request)
        flow = await self._flow(request, caller)
        async with self.store.pool.acquire() as conn, conn.transaction():
            if not await self.store.delete(conn, flow):
                raise BadRequest("the flow was changed meanwhile; read it and try again")
            await self.access.publish(flow, deleted=True)
        return web.Response(status=204)

    async def webhook(self, request: web.Request) -> web.Response:
        caller = await self._caller(request)
        return json_response(self.webhook_info(await self._flow(request, caller)))

    async def rotate_token(self, request: web.Request) -> web.Response:
        caller = await self._caller(request)
        flow = await self._flow(request, caller)
        raw = {"name": flow.name, "status": flow.status, **flow.definition}
        saved = await self._save(flow, caller.workspace_id, raw, rotate=True)
        return json_response(self.webhook_info(saved))

"""Sources (contract: "Sources: one URL, many flows"): `/v1/sources...` and their routes
on the runner, the `runner.get_source` RPC the ingress asks (cached there), and the
`source.changed` event that makes every ingress replica forget a source it cached.

A source's `auth` and `dedup` are a flow's `webhook.auth` and `webhook.dedup`, judged
and sealed by the same code (definition.py, webhook_secrets.py); its bearer token is
derived like a flow's from a nonce and the token key ring (never stored). Personal
tokens of the workspace, `automation` or `automation.manage`, own workspace only
(anything else is 404)."""

from datetime import UTC, datetime
from typing import Any

import asyncpg
import structlog
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from services.runner.access import FlowAccess, signing_settings
from services.runner.definition import LEARNED_SECRET_MODES, parse_definition
from services.runner.flow_tokens import flow_token, new_nonce
from services.runner.flows_api import FlowListQuery
from services.runner.source_store import MAX_ROUTES, RouteRow, SourceRow, SourceStore
from services.runner.store import FlowStore
from services.runner.templates import TemplateEngine
from services.runner.webhook_secrets import (
    held_secrets,
    held_verify_token,
    public_webhook,
    seal_secrets,
    seal_verify_token,
)
from shared.bearer import hash_token
from shared.errors import ApiError, BadRequest, Conflict, NotFound, Unavailable
from shared.filters import check_filter
from shared.http_api import Call
from shared.messaging.connection import Broker
from shared.messaging.contracts import SOURCE_CHANGED
from shared.openapi import Page
from shared.schemas.access import DedupSettings, FlowOwner, FlowOwnerQuery, TokenIdentity
from shared.schemas.sources import (
    GetSource,
    ListedRoute,
    ListedSource,
    ListedSources,
    ListSources,
    SourceAccess,
    SourceChanged,
    SourceRoute,
)
from shared.secret_box import SecretBox

log = structlog.get_logger(__name__)


class SourceView(BaseModel):
    """A source as stored (signing secrets shown as hints), its URL and bearer token"""

    id: str
    workspace_id: str
    name: str
    url: str
    token: str
    auth: dict[str, Any] | None = None
    dedup: dict[str, Any] | None = None
    version: int
    created_at: datetime
    updated_at: datetime


class SourceBody(BaseModel):
    """A source as saved: `auth` and `dedup` as a flow's `webhook.auth` and `webhook.dedup`"""

    name: str = Field(min_length=1, max_length=200)
    auth: dict[str, Any] | None = Field(default=None, description="as a flow's webhook.auth")
    dedup: dict[str, Any] | None = Field(default=None, description="as a flow's webhook.dedup")


class SourceList(Page):
    """The workspace's sources, oldest id first"""

    items: list[SourceView]


class RouteBody(BaseModel):
    """A route's filter (shared/filters.py); none or null: every request"""

    model_config = ConfigDict(extra="forbid")

    filter: dict[str, Any] | None = Field(default=None, description="the route's filter")


class RouteView(BaseModel):
    """A flow subscribed to the source, and its filter"""

    source_id: str
    flow_id: str
    filter: dict[str, Any] | None
    created_at: datetime


class RouteList(BaseModel):
    """The source's routes, oldest first"""

    items: list[RouteView]


class SourceVisibility:
    """The path's `{source_id}`, if it is a source of the caller's workspace; else 404."""

    def __init__(self, store: SourceStore) -> None:
        self.store = store

    async def find(self, request: web.Request, caller: TokenIdentity | None) -> SourceRow:
        assert caller is not None, "source routes declare a scope"
        source = await self.store.get(request.match_info["source_id"], caller.workspace_id)
        if source is None:
            raise NotFound("no such source")
        return source


def _as_source_field(error: ApiError) -> ApiError:
    """A flow's error about `webhook.<field>` said about the source's `<field>`."""
    field = error.data.get("field") if isinstance(error.data, dict) else None
    if isinstance(field, str) and field.startswith("webhook."):
        field = field.removeprefix("webhook.")
        error.message = error.message.replace("webhook.", "", 1)
        error.data = {**error.data, "field": field}
    return error


class SourcesApi:
    def __init__(
        self,
        store: SourceStore,
        flows: FlowStore,
        access: FlowAccess,
        broker: Broker,
        templates: TemplateEngine,
        webhook_base_url: str,
        secret_box: SecretBox | None,
    ) -> None:
        self.store = store
        self.flows = flows
        self.access = access
        self.broker = broker
        self.templates = templates
        self.webhook_base_url = webhook_base_url.rstrip("/")
        self.secret_box = secret_box

    # -- the API

    def view(self, source: SourceRow) -> SourceView:
        shown = public_webhook(source.definition)
        return SourceView(
            id=source.id,
            workspace_id=source.workspace_id,
            name=source.name,
            url=f"{self.webhook_base_url}/v1/source-webhook/{source.id}",
            token=self.token(source),
            auth=shown.get("auth"),
            dedup=shown.get("dedup"),
            version=source.version,
            created_at=source.created_at,
            updated_at=source.updated_at,
        )

    def token(self, source: SourceRow) -> str:
        return flow_token(
            self.access.ring.current.secret, _token_subject(source.id), source.token_nonce
        )

    def _judge(
        self, source: SourceRow | None, workspace_id: str, raw: Any
    ) -> tuple[str, dict[str, Any]]:
        """The name and the stored definition (`auth` sealed, `dedup`) of a save."""
        if not isinstance(raw, dict):
            raise BadRequest("the source must be a JSON object")
        unknown = set(raw) - {"name", "auth", "dedup"}
        if unknown:
            field = sorted(unknown)[0]
            raise BadRequest(f"{field}: unknown field", data={"field": field})
        webhook: dict[str, Any] = {"async": True}
        for name in ("auth", "dedup"):
            if name in raw:
                webhook[name] = raw[name]
        try:
            definition = parse_definition(
                {"name": raw.get("name"), "webhook": webhook}, self.templates, 30.0
            )
        except ApiError as error:
            raise _as_source_field(error) from None
        auth = definition.webhook.auth
        if auth is not None and auth.mode in LEARNED_SECRET_MODES:
            # Its secret is learned by a flow's handshake (runner.learn_webhook_secret).
            raise BadRequest(
                f"auth.mode: {auth.mode} is for flows only", data={"field": "auth.mode"}
            )
        stored_webhook = source.definition if source is not None else None
        try:
            seal_secrets(definition, held_secrets(stored_webhook), self.secret_box, workspace_id)
            seal_verify_token(
                definition, held_verify_token(stored_webhook), self.secret_box, workspace_id
            )
        except ApiError as error:
            raise _as_source_field(error) from None
        public = definition.public()["webhook"]
        return definition.name, {name: public[name] for name in ("auth", "dedup") if name in public}

    async def create(self, call: Call[None, Any]) -> SourceView:
        workspace_id = call.caller.workspace_id
        name, stored = self._judge(None, workspace_id, call.body)
        source = await self.store.insert(
            workspace_id, name, stored, new_nonce(), self.access.ring.current.key_id
        )
        return self.view(source)

    async def list(self, call: Call[FlowListQuery, None]) -> SourceList:
        query = call.query
        sources = await self.store.in_workspace(call.caller.workspace_id, query.cursor, query.limit)
        return SourceList(
            items=[self.view(source) for source in sources],
            next_cursor=sources[-1].id if len(sources) == query.limit else None,
        )

    async def get(self, call: Call[None, None]) -> SourceView:
        return self.view(call.resource)

    async def patch(self, call: Call[None, Any]) -> SourceView:
        source: SourceRow = call.resource
        if not isinstance(call.body, dict):
            raise BadRequest("the patch must be a JSON object")
        merged = {"name": source.name, **source.definition, **call.body}
        name, stored = self._judge(source, call.caller.workspace_id, merged)
        saved = await self.store.update(source, name, stored)
        if saved is None:
            raise Conflict("the source was changed meanwhile; read it and try again")
        await self.changed(SourceChanged(source_id=source.id))
        return self.view(saved)

    async def delete(self, call: Call[None, None]) -> None:
        source: SourceRow = call.resource
        await self.store.delete(source)
        await self.changed(SourceChanged(source_id=source.id))

    async def routes(self, call: Call[None, None]) -> RouteList:
        source: SourceRow = call.resource
        rows = await self.store.routes(source.id)
        return RouteList(items=[_route_view(source.id, row) for row in rows if row.flow_version])

    async def put_route(self, call: Call[None, RouteBody]) -> RouteView:
        source: SourceRow = call.resource
        flow_id = call.path("flow_id")
        # A flow of another workspace is no flow at all, as everywhere.
        if await self.flows.get(flow_id, source.workspace_id) is None:
            raise NotFound("no such flow")
        filter_ = call.body.filter if call.body is not None else None
        if filter_ is not None:
            check_filter(filter_, "filter")
        row = await self.store.put_route(source.id, flow_id, filter_)
        if row is None:
            raise Conflict(f"a source routes to at most {MAX_ROUTES} flows")
        await self.changed(SourceChanged(source_id=source.id))
        return _route_view(source.id, row)

    async def delete_route(self, call: Call[None, None]) -> None:
        source: SourceRow = call.resource
        if not await self.store.delete_route(source.id, call.path("flow_id")):
            raise NotFound("the flow is not routed from this source")
        await self.changed(SourceChanged(source_id=source.id))

    # -- the ingress's side

    async def get_source(self, query: GetSource) -> SourceAccess:
        """`runner.get_source`: what the ingress needs to take a source's request."""
        source = await self.store.get(query.source_id)
        if source is None:
            return SourceAccess(source_id=query.source_id, found=False)
        routes = await self.store.routes(source.id)
        now = datetime.now(UTC)
        keys = [
            key
            for key in self.access.ring.issuers_since(source.token_key_id)
            if key.not_after is None or key.not_after > now
        ]
        dedup = source.definition.get("dedup")
        return SourceAccess(
            source_id=source.id,
            found=True,
            workspace_id=source.workspace_id,
            version=source.version,
            token_hashes={
                key.key_id: hash_token(
                    flow_token(key.secret, _token_subject(source.id), source.token_nonce)
                )
                for key in keys
            },
            signing=signing_settings(source.definition),
            dedup=DedupSettings.model_validate(dedup) if dedup else None,
            dedup_default=not ("dedup" in source.definition and dedup is None),
            routes=[
                SourceRoute(
                    flow_id=row.flow_id,
                    flow_version=row.flow_version,
                    paused=row.flow_status == "paused",
                    filter=row.filter,
                )
                for row in routes
                if row.flow_version is not None
            ],
        )

    async def listed(self, query: ListSources) -> ListedSources:
        """`runner.list_sources`: the debugger page's sources and their routes, two
        statements for the whole list. Nothing secret: no token, no secret or its hint."""
        sources = await self.store.in_workspace(query.workspace_id, None, query.limit + 1)
        shown = sources[: query.limit]
        routes = await self.store.routes_of([source.id for source in shown])
        return ListedSources(
            items=[
                ListedSource(
                    id=source.id,
                    name=source.name,
                    url=f"{self.webhook_base_url}/v1/source-webhook/{source.id}",
                    auth_mode=(source.definition.get("auth") or {}).get("mode"),
                    routes=[
                        ListedRoute(
                            flow_id=row.flow_id,
                            filter=row.filter,
                            paused=row.flow_status == "paused",
                        )
                        for row in routes[source.id]
                        if row.flow_version is not None  # its flow deleted
                    ],
                )
                for source in shown
            ],
            more=len(sources) > query.limit,
        )

    async def owner(self, query: FlowOwnerQuery) -> FlowOwner:
        """A source's owner, for the debugger (which lists a source's requests as a
        flow's): `runner.get_flow_owner` asks here for ids that are no flow."""
        source = await self.store.get(query.flow_id)
        if source is None:
            return FlowOwner(flow_id=query.flow_id, found=False)
        return FlowOwner(
            flow_id=source.id, found=True, workspace_id=source.workspace_id, version=source.version
        )

    async def changed(self, change: SourceChanged) -> None:
        """After the change is committed, so that an ingress that forgets and asks again
        reads it. Unconfirmed: logged; the ingress's TTL still bounds how long it keeps
        the stale answer (FLOWHOOKS_INGRESS_SOURCE_CACHE_TTL_S)."""
        try:
            await self.broker.publish_event(SOURCE_CHANGED, change)
        except Unavailable:
            log.warning(
                "source_change_not_published", source_id=change.source_id, flow_id=change.flow_id
            )

    async def flow_changed(self, flow_id: str) -> None:
        """A flow was saved or deleted: the ingresses forget the sources routing to it
        (its version, its pause)."""
        try:
            routed = await self.store.routing(flow_id)
        except (asyncpg.PostgresError, OSError) as exc:
            # The flow's change is committed and answered; the ingresses' TTL still
            # bounds how long they route with the flow's previous state.
            log.warning("source_routes_unread", flow_id=flow_id, error=repr(exc))
            return
        if routed:
            await self.changed(SourceChanged(flow_id=flow_id))


def _token_subject(source_id: str) -> str:
    """What a source's token is derived from: never equal to a flow id's."""
    return f"source:{source_id}"


def _route_view(source_id: str, row: RouteRow) -> RouteView:
    return RouteView(
        source_id=source_id, flow_id=row.flow_id, filter=row.filter, created_at=row.created_at
    )

"""What a caller may see in the debugger: a flow of its own workspace (`FlowVisibility`)
and a stored request of its own workspace (`StoredRequests`). Both are the path's
resource of the routes that name one (`shared/http_api.py`): looked up after the token
and before the query or body are judged, so a caller learns nothing about another
workspace's flow or request, whatever else it sends (404 either way)."""

import uuid
from typing import Any

from aiohttp import web

from services.debugger.store import FlowRow, RequestStore
from shared.errors import NotFound, Timeout, Unavailable
from shared.messaging.contracts import GET_FLOW_OWNER
from shared.messaging.rpc import RpcClient
from shared.schemas.access import FlowOwnerQuery, TokenIdentity


class FlowVisibility:
    """May this caller see this flow? From `debugger.flows` (`flow.changed`'s ownership
    fields), read through to the runner for a flow the debugger has not heard of yet."""

    def __init__(self, store: RequestStore, rpc: RpcClient) -> None:
        self.store = store
        self.rpc = rpc

    async def find(self, request: web.Request, caller: TokenIdentity | None) -> uuid.UUID:
        """The path's `{flow_id}`, if `caller`'s workspace may see it; else 404."""
        assert caller is not None, "flow routes declare a scope"
        return await self.visible(request.match_info["flow_id"], caller.workspace_id)

    async def visible(self, flow_id: str, workspace_id: str) -> uuid.UUID:
        try:
            flow = uuid.UUID(flow_id)
        except ValueError:
            raise NotFound("no such flow") from None
        owner = await self.store.flow_owner(flow)
        if owner is None:
            owner = await self._ask_runner(flow)
        if owner is None or owner[1] or owner[0] != workspace_id:
            raise NotFound("no such flow")
        return flow

    async def _ask_runner(self, flow_id: uuid.UUID) -> tuple[str, bool] | None:
        """Read-through for a flow whose `flow.changed` the debugger has not consumed
        yet (it arrives asynchronously, after the flows API has answered): the runner
        says who owns it, and the answer joins `debugger.flows` under the version rule
        (a later event, a deletion included, still wins). None: unknown or deleted."""
        try:
            owner = await self.rpc.call(GET_FLOW_OWNER, FlowOwnerQuery(flow_id=str(flow_id)))
        except Timeout:
            raise Unavailable("the runner did not answer") from None
        if not owner.found or owner.workspace_id is None or owner.version is None:
            return None
        await self.store.remember_flow(
            FlowRow(
                flow_id,
                uuid.UUID(owner.workspace_id),
                owner.version,
                False,
                owner.name,
                owner.status,
            )
        )
        # Read back: a deletion stored meanwhile with a higher version is the answer.
        return await self.store.flow_owner(flow_id)


class StoredRequests:
    """The path's `{request_id}`, stored in the caller's workspace; else 404."""

    def __init__(self, store: RequestStore) -> None:
        self.store = store

    async def find(self, request: web.Request, caller: TokenIdentity | None) -> dict[str, Any]:
        assert caller is not None, "request routes declare a scope"
        row = await self.store.get(request.match_info["request_id"], caller.workspace_id)
        if row is None:
            raise NotFound("no such request")
        return row

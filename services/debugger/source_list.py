"""The debugger page's sources and their routes (`GET /v1/debugger/sources`).

Sources live in the runner and the page talks to the debugger's origin only, so the
debugger asks the runner (`runner.list_sources`, one RPC per page load: a source is
changed rarely and read by a person, so no copy is kept here) and adds what only it
knows: each routed flow's name (`debugger.flows`) and how many of the source's requests
were routed and filtered over the last 24 h (its requests are stored under its id as a
flow's are). Those counts are one grouped statement over the listed sources' index
ranges, under the listing's fair share and statement timeout; past the timeout the list
is still answered, without them."""

import uuid
from typing import Any

import asyncpg
from pydantic import BaseModel, Field

from services.debugger.workspace_limiter import WorkspaceLimiter
from shared.errors import Timeout, Unavailable
from shared.http_api import Call
from shared.messaging.contracts import LIST_SOURCES
from shared.messaging.rpc import RpcClient
from shared.schemas.sources import ListSources
from shared.schemas.vocabulary import Outcome

FLOW_NAMES = (
    "SELECT flow_id::text AS id, name FROM debugger.flows"
    " WHERE flow_id = ANY($1::uuid[]) AND workspace_id = $2 AND NOT deleted"
)
DAY_COUNTS = (
    "SELECT flow_id::text AS id, outcome, count(*) AS n FROM debugger.requests"
    " WHERE flow_id = ANY($1::uuid[]) AND workspace_id = $2"
    " AND received_at >= now() - interval '24 hours' AND outcome = ANY($3::text[])"
    " GROUP BY 1, 2"
)
COUNTED = (Outcome.ROUTED, Outcome.FILTERED)


class RouteShown(BaseModel):
    flow_id: str
    # None: a flow the debugger has not heard a name for (the page shows its id).
    flow_name: str | None
    filter: dict[str, Any] | None = Field(description="null: every request")
    paused: bool


class SourceShown(BaseModel):
    id: str
    name: str
    url: str
    auth_mode: str | None = Field(description="`auth.mode`; null: the bearer token only")
    routes: list[RouteShown]
    # The source's requests over the last 24 h; null when they could not be counted in
    # the statement timeout.
    routed_24h: int | None
    filtered_24h: int | None


class KnownSources(BaseModel):
    """The workspace's sources, oldest id first (at most 200; `more`: there are more)"""

    items: list[SourceShown]
    more: bool


class SourceList:
    def __init__(self, pool: asyncpg.Pool, rpc: RpcClient, limiter: WorkspaceLimiter) -> None:
        self.pool = pool
        self.rpc = rpc
        self.limiter = limiter

    async def list(self, call: Call[None, None]) -> KnownSources:
        return await self.sources(call.caller.workspace_id)

    async def sources(self, workspace_id: str) -> KnownSources:
        try:
            listed = await self.rpc.call(LIST_SOURCES, ListSources(workspace_id=workspace_id))
        except Timeout:
            raise Unavailable("the runner did not answer") from None
        source_ids = [source.id for source in listed.items]
        flow_ids = sorted({route.flow_id for s in listed.items for route in s.routes})
        workspace = uuid.UUID(workspace_id)
        flows = await self.pool.fetch(FLOW_NAMES, [uuid.UUID(f) for f in flow_ids], workspace)
        names = {row["id"]: row["name"] for row in flows}
        counts: dict[str, dict[str, int]] | None
        try:
            async with self.limiter.slot(workspace_id):
                rows = await self.pool.fetch(
                    DAY_COUNTS, [uuid.UUID(s) for s in source_ids], workspace, list(COUNTED)
                )
        except asyncpg.QueryCanceledError:
            counts = None
        else:
            counts = {s: {} for s in source_ids}
            for row in rows:
                counts[row["id"]][row["outcome"]] = row["n"]
        return KnownSources(
            items=[
                SourceShown(
                    id=source.id,
                    name=source.name,
                    url=source.url,
                    auth_mode=source.auth_mode,
                    routes=[
                        RouteShown(
                            flow_id=route.flow_id,
                            flow_name=names.get(route.flow_id),
                            filter=route.filter,
                            paused=route.paused,
                        )
                        for route in source.routes
                    ],
                    routed_24h=None if counts is None else counts[source.id].get(Outcome.ROUTED, 0),
                    filtered_24h=None
                    if counts is None
                    else counts[source.id].get(Outcome.FILTERED, 0),
                )
                for source in listed.items
            ],
            more=listed.more,
        )

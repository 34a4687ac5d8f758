"""runner's SQL for sources and their routes (`runner.sources`, `runner.source_routes`)."""

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson

# A source fans each request out to at most this many flows (Trigger.dev's bound): the
# runs of one request travel in one message (none or all), so their count is bounded.
MAX_ROUTES = 25


@dataclass(frozen=True)
class SourceRow:
    id: str
    workspace_id: str
    name: str
    definition: dict[str, Any]  # `auth` (secrets sealed) and `dedup`, as saved
    version: int
    token_nonce: str
    token_key_id: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class RouteRow:
    flow_id: str
    filter: dict[str, Any] | None
    created_at: datetime
    # Of the routed flow, read with the route (None: the flow was deleted).
    flow_version: int | None = None
    flow_status: str | None = None


_COLUMNS = (
    "id::text, workspace_id::text, name, definition::text AS definition, version,"
    " token_nonce, token_key_id, created_at, updated_at"
)


def _source(record: asyncpg.Record) -> SourceRow:
    values = dict(record)
    values["definition"] = orjson.loads(values["definition"])
    return SourceRow(**values)


def _route(record: asyncpg.Record | dict[str, Any]) -> RouteRow:
    values = dict(record)
    values["filter"] = orjson.loads(values["filter"]) if values["filter"] is not None else None
    return RouteRow(**values)


def as_uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


class SourceStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def get(self, source_id: str, workspace_id: str | None = None) -> SourceRow | None:
        key = as_uuid(source_id)
        if key is None:
            return None
        record = await self.pool.fetchrow(
            f"SELECT {_COLUMNS} FROM runner.sources WHERE id = $1", key
        )
        if record is None:
            return None
        source = _source(record)
        if workspace_id is not None and source.workspace_id != workspace_id:
            return None
        return source

    async def in_workspace(
        self, workspace_id: str, after: str | None, limit: int
    ) -> list[SourceRow]:
        records = await self.pool.fetch(
            f"SELECT {_COLUMNS} FROM runner.sources WHERE workspace_id = $1"
            " AND ($2::uuid IS NULL OR id > $2::uuid) ORDER BY id LIMIT $3",
            uuid.UUID(workspace_id),
            as_uuid(after) if after else None,
            limit,
        )
        return [_source(r) for r in records]

    async def insert(
        self, workspace_id: str, name: str, definition: dict[str, Any], nonce: str, key_id: str
    ) -> SourceRow:
        record = await self.pool.fetchrow(
            "INSERT INTO runner.sources"
            " (id, workspace_id, name, definition, token_nonce, token_key_id)"
            f" VALUES ($1, $2, $3, $4::jsonb, $5, $6) RETURNING {_COLUMNS}",
            uuid.uuid4(),
            uuid.UUID(workspace_id),
            name,
            orjson.dumps(definition).decode(),
            nonce,
            key_id,
        )
        assert record is not None
        return _source(record)

    async def update(
        self, source: SourceRow, name: str, definition: dict[str, Any]
    ) -> SourceRow | None:
        """A new version, only if nobody changed the source meanwhile (None otherwise)."""
        record = await self.pool.fetchrow(
            "UPDATE runner.sources SET name = $3, definition = $4::jsonb,"
            " version = version + 1, updated_at = now()"
            f" WHERE id = $1 AND version = $2 RETURNING {_COLUMNS}",
            uuid.UUID(source.id),
            source.version,
            name,
            orjson.dumps(definition).decode(),
        )
        return _source(record) if record else None

    async def delete(self, source: SourceRow) -> None:
        await self.pool.execute("DELETE FROM runner.sources WHERE id = $1", uuid.UUID(source.id))

    async def routes(self, source_id: str) -> list[RouteRow]:
        """The source's routes, each with its flow's version and status (None: deleted)."""
        records = await self.pool.fetch(
            "SELECT r.flow_id::text, r.filter::text AS filter, r.created_at,"
            " f.version AS flow_version, f.status AS flow_status"
            " FROM runner.source_routes r LEFT JOIN runner.flows f ON f.id = r.flow_id"
            " WHERE r.source_id = $1 ORDER BY r.created_at, r.flow_id",
            uuid.UUID(source_id),
        )
        return [_route(r) for r in records]

    async def routes_of(self, source_ids: list[str]) -> dict[str, list[RouteRow]]:
        """The routes of many sources in one statement (each at most `MAX_ROUTES`)."""
        records = await self.pool.fetch(
            "SELECT r.source_id::text, r.flow_id::text, r.filter::text AS filter, r.created_at,"
            " f.version AS flow_version, f.status AS flow_status"
            " FROM runner.source_routes r LEFT JOIN runner.flows f ON f.id = r.flow_id"
            " WHERE r.source_id = ANY($1::uuid[]) ORDER BY r.created_at, r.flow_id",
            [uuid.UUID(source_id) for source_id in source_ids],
        )
        routes: dict[str, list[RouteRow]] = {source_id: [] for source_id in source_ids}
        for record in records:
            values = dict(record)
            routes[values.pop("source_id")].append(_route(values))
        return routes

    async def put_route(
        self, source_id: str, flow_id: str, filter_: dict[str, Any] | None
    ) -> RouteRow | None:
        """Adds or replaces the route; None: the source is at `MAX_ROUTES` already."""
        async with self.pool.acquire() as conn, conn.transaction():
            # One writer per source at a time, so the bound holds under concurrency.
            await conn.execute(
                "SELECT 1 FROM runner.sources WHERE id = $1 FOR UPDATE", uuid.UUID(source_id)
            )
            count = await conn.fetchval(
                "SELECT count(*) FROM runner.source_routes WHERE source_id = $1 AND flow_id <> $2",
                uuid.UUID(source_id),
                uuid.UUID(flow_id),
            )
            if count >= MAX_ROUTES:
                return None
            record = await conn.fetchrow(
                "INSERT INTO runner.source_routes (source_id, flow_id, filter)"
                " VALUES ($1, $2, $3::jsonb) ON CONFLICT (source_id, flow_id)"
                " DO UPDATE SET filter = EXCLUDED.filter"
                " RETURNING flow_id::text, filter::text AS filter, created_at",
                uuid.UUID(source_id),
                uuid.UUID(flow_id),
                orjson.dumps(filter_).decode() if filter_ is not None else None,
            )
            assert record is not None
            return _route(record)

    async def delete_route(self, source_id: str, flow_id: str) -> bool:
        key = as_uuid(flow_id)
        if key is None:
            return False
        deleted = await self.pool.fetchval(
            "DELETE FROM runner.source_routes WHERE source_id = $1 AND flow_id = $2"
            " RETURNING flow_id",
            uuid.UUID(source_id),
            key,
        )
        return deleted is not None

    async def routing(self, flow_id: str) -> list[str]:
        """The sources that route to `flow_id`."""
        key = as_uuid(flow_id)
        if key is None:
            return []
        records = await self.pool.fetch(
            "SELECT source_id::text FROM runner.source_routes WHERE flow_id = $1", key
        )
        return [r["source_id"] for r in records]

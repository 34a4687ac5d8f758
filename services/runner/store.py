"""runner's SQL: flow definitions."""

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from services.runner.webhook_secrets import public_webhook


@dataclass(frozen=True)
class FlowRow:
    id: str
    workspace_id: str
    name: str
    status: str
    definition: dict[str, Any]  # webhook, steps and on_error (if any), as saved
    version: int
    token_nonce: str
    # The ring key that was current when the nonce was picked (None: before the ring).
    token_key_id: str | None
    created_at: datetime
    updated_at: datetime

    def public(self) -> dict[str, Any]:
        public = {
            "id": self.id,
            "workspace_id": self.workspace_id,
            "name": self.name,
            "status": self.status,
            # Signing secrets as hints only, never sealed or plain.
            "webhook": public_webhook(self.definition["webhook"]),
            "steps": self.definition["steps"],
            "version": self.version,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }
        if "on_error" in self.definition:  # shown only by the flows that have them
            public["on_error"] = self.definition["on_error"]
        return public


_COLUMNS = (
    "id::text, workspace_id::text, name, status, definition::text AS definition, version,"
    " token_nonce, token_key_id, created_at, updated_at"
)


def _row(record: asyncpg.Record) -> FlowRow:
    values = dict(record)
    values["definition"] = orjson.loads(values["definition"])
    return FlowRow(**values)


def _uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


class FlowStore:
    """Reads take the pool; writes take a connection inside the caller's transaction
    (the caller publishes `flow.changed` before it commits)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def get(self, flow_id: str, workspace_id: str | None = None) -> FlowRow | None:
        key = _uuid(flow_id)
        if key is None:
            return None
        record = await self.pool.fetchrow(f"SELECT {_COLUMNS} FROM runner.flows WHERE id = $1", key)
        if record is None:
            return None
        flow = _row(record)
        if workspace_id is not None and flow.workspace_id != workspace_id:
            return None
        return flow

    async def in_workspace(self, workspace_id: str, after: str | None, limit: int) -> list[FlowRow]:
        records = await self.pool.fetch(
            f"SELECT {_COLUMNS} FROM runner.flows WHERE workspace_id = $1"
            " AND ($2::uuid IS NULL OR id > $2::uuid) ORDER BY id LIMIT $3",
            uuid.UUID(workspace_id),
            _uuid(after) if after else None,
            limit,
        )
        return [_row(r) for r in records]

    async def page_all(self, after: str | None, limit: int) -> list[FlowRow]:
        records = await self.pool.fetch(
            f"SELECT {_COLUMNS} FROM runner.flows"
            " WHERE ($1::uuid IS NULL OR id > $1::uuid) ORDER BY id LIMIT $2",
            _uuid(after) if after else None,
            limit,
        )
        return [_row(r) for r in records]

    @staticmethod
    async def insert(
        conn: asyncpg.Connection,
        workspace_id: str,
        name: str,
        status: str,
        definition: dict[str, Any],
        nonce: str,
        token_key_id: str,
    ) -> FlowRow:
        record = await conn.fetchrow(
            "INSERT INTO runner.flows"
            " (id, workspace_id, name, status, definition, token_nonce, token_key_id)"
            f" VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7) RETURNING {_COLUMNS}",
            uuid.uuid4(),
            uuid.UUID(workspace_id),
            name,
            status,
            orjson.dumps(definition).decode(),
            nonce,
            token_key_id,
        )
        assert record is not None
        return _row(record)

    @staticmethod
    async def update(
        conn: asyncpg.Connection,
        flow: FlowRow,
        name: str,
        status: str,
        definition: dict[str, Any],
        nonce: str,
        token_key_id: str | None,
    ) -> FlowRow | None:
        """A new version, only if nobody changed the flow meanwhile (None otherwise)."""
        record = await conn.fetchrow(
            "UPDATE runner.flows SET name = $3, status = $4, definition = $5::jsonb,"
            " token_nonce = $6, token_key_id = $7, version = version + 1, updated_at = now()"
            f" WHERE id = $1 AND version = $2 RETURNING {_COLUMNS}",
            uuid.UUID(flow.id),
            flow.version,
            name,
            status,
            orjson.dumps(definition).decode(),
            nonce,
            token_key_id,
        )
        return _row(record) if record else None

    @staticmethod
    async def delete(conn: asyncpg.Connection, flow: FlowRow) -> bool:
        deleted = await conn.fetchval(
            "DELETE FROM runner.flows WHERE id = $1 AND version = $2 RETURNING id",
            uuid.UUID(flow.id),
            flow.version,
        )
        return deleted is not None

    @staticmethod
    async def rotate_nonce(
        conn: asyncpg.Connection, flow: FlowRow, nonce: str, token_key_id: str
    ) -> FlowRow | None:
        """A new version with only a new nonce, if nobody changed the flow meanwhile."""
        record = await conn.fetchrow(
            "UPDATE runner.flows SET token_nonce = $3, token_key_id = $4,"
            " version = version + 1, updated_at = now()"
            f" WHERE id = $1 AND version = $2 RETURNING {_COLUMNS}",
            uuid.UUID(flow.id),
            flow.version,
            nonce,
            token_key_id,
        )
        return _row(record) if record else None

    @staticmethod
    async def learn_secret(
        conn: asyncpg.Connection,
        flow_id: str,
        workspace_id: str,
        mode: str,
        stored_secret: dict[str, str],
    ) -> FlowRow | None:
        """A new version holding `stored_secret` as its only signing secret, only if the
        flow (of this workspace, in `mode`) holds none: one statement, so of two
        concurrent handshakes one wins (the other's update finds the row changed and
        matches nothing). None: no such flow, another mode, or a secret already held."""
        key, workspace = _uuid(flow_id), _uuid(workspace_id)
        if key is None or workspace is None:
            return None
        record = await conn.fetchrow(
            "UPDATE runner.flows SET definition = jsonb_set(definition,"
            " '{webhook,auth,secrets}', jsonb_build_array($4::jsonb)),"
            " version = version + 1, updated_at = now()"
            " WHERE id = $1 AND workspace_id = $2"
            " AND definition #>> '{webhook,auth,mode}' = $3"
            " AND jsonb_array_length(COALESCE(definition #> '{webhook,auth,secrets}',"
            " '[]'::jsonb)) = 0"
            f" RETURNING {_COLUMNS}",
            key,
            workspace,
            mode,
            orjson.dumps(stored_secret).decode(),
        )
        return _row(record) if record else None

    async def claim_token_ring(self, fingerprint: str) -> tuple[int, bool]:
        """The generation of this ring, a new one if the last ring announced differs;
        and whether every flow has been announced under it already."""
        record = await self.pool.fetchrow(
            "INSERT INTO runner.token_ring (singleton, fingerprint, generation)"
            " VALUES (true, $1, 1)"
            " ON CONFLICT (singleton) DO UPDATE SET fingerprint = EXCLUDED.fingerprint,"
            " generation = runner.token_ring.generation + 1, announced = false,"
            " updated_at = now()"
            " WHERE runner.token_ring.fingerprint <> EXCLUDED.fingerprint"
            " RETURNING generation, announced",
            fingerprint,
        )
        if record is None:  # the same ring as last time: nothing changed
            record = await self.pool.fetchrow("SELECT generation, announced FROM runner.token_ring")
            assert record is not None
        return int(record["generation"]), bool(record["announced"])

    async def token_ring(self) -> tuple[str, int] | None:
        """The fingerprint and generation of the ring announced last (None: none yet)."""
        record = await self.pool.fetchrow("SELECT fingerprint, generation FROM runner.token_ring")
        return (record["fingerprint"], int(record["generation"])) if record else None

    async def mark_ring_announced(self, generation: int) -> None:
        await self.pool.execute(
            "UPDATE runner.token_ring SET announced = true WHERE generation = $1", generation
        )

"""auth's SQL: workspaces, personal access tokens and the copy of flow access state."""

import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import orjson

from shared.schemas.access import FlowChanged, FlowWebhookSettings


@dataclass(frozen=True)
class AccessToken:
    id: str
    workspace_id: str
    name: str
    token_hash: str
    display_prefix: str
    scopes: list[str]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None

    def usable_at(self, now: datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)

    def public(self) -> dict[str, object]:
        return {
            "id": self.id,
            "workspace_id": self.workspace_id,
            "name": self.name,
            "prefix": self.display_prefix,
            "scopes": self.scopes,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
        }


@dataclass(frozen=True)
class FlowAccess:
    token_hash: str
    settings: FlowWebhookSettings


_TOKEN_COLUMNS = (
    "id::text, workspace_id::text, name, token_hash, display_prefix, scopes, created_at,"
    " expires_at, revoked_at"
)


def _token(row: asyncpg.Record) -> AccessToken:
    return AccessToken(**dict(row))


class AuthStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def ensure_workspace(self, name: str) -> str:
        row = await self.pool.fetchrow(
            "INSERT INTO auth.workspaces (id, name) VALUES ($1, $2)"
            " ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name RETURNING id::text",
            uuid.uuid4(),
            name,
        )
        assert row is not None
        return str(row["id"])

    async def create_token(
        self,
        workspace_id: str,
        name: str,
        token_hash: str,
        display_prefix: str,
        scopes: list[str],
        expires_at: datetime | None,
    ) -> AccessToken:
        row = await self.pool.fetchrow(
            "INSERT INTO auth.access_tokens"
            " (id, workspace_id, name, token_hash, display_prefix, scopes, expires_at)"
            f" VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {_TOKEN_COLUMNS}",
            uuid.uuid4(),
            uuid.UUID(workspace_id),
            name,
            token_hash,
            display_prefix,
            scopes,
            expires_at,
        )
        assert row is not None
        return _token(row)

    async def token_by_hash(self, token_hash: str) -> AccessToken | None:
        row = await self.pool.fetchrow(
            f"SELECT {_TOKEN_COLUMNS} FROM auth.access_tokens WHERE token_hash = $1", token_hash
        )
        return _token(row) if row else None

    async def list_tokens(self, workspace_id: str) -> list[AccessToken]:
        rows = await self.pool.fetch(
            f"SELECT {_TOKEN_COLUMNS} FROM auth.access_tokens WHERE workspace_id = $1"
            " ORDER BY created_at, id",
            uuid.UUID(workspace_id),
        )
        return [_token(row) for row in rows]

    async def revoke_token(self, workspace_id: str, token_id: uuid.UUID) -> AccessToken | None:
        """Revoke (idempotent); None when the workspace has no such token."""
        row = await self.pool.fetchrow(
            "UPDATE auth.access_tokens SET revoked_at = coalesce(revoked_at, now())"
            f" WHERE id = $1 AND workspace_id = $2 RETURNING {_TOKEN_COLUMNS}",
            token_id,
            uuid.UUID(workspace_id),
        )
        return _token(row) if row else None

    async def apply_flow_change(self, change: FlowChanged) -> bool:
        """Keep the newest version only (events may arrive late or twice); True if applied."""
        row = await self.pool.fetchrow(
            "INSERT INTO auth.flow_access"
            " (flow_id, workspace_id, version, token_hash, settings, deleted, updated_at)"
            " VALUES ($1, $2, $3, $4, $5::jsonb, $6, now())"
            " ON CONFLICT (flow_id) DO UPDATE SET workspace_id = EXCLUDED.workspace_id,"
            " version = EXCLUDED.version, token_hash = EXCLUDED.token_hash,"
            " settings = EXCLUDED.settings, deleted = EXCLUDED.deleted, updated_at = now()"
            " WHERE auth.flow_access.version < EXCLUDED.version"
            " RETURNING flow_id",
            uuid.UUID(change.flow_id),
            uuid.UUID(change.workspace_id),
            change.version,
            change.token_hash,
            change.settings.model_dump_json(),
            change.deleted,
        )
        return row is not None

    async def flow_access(self, flow_id: uuid.UUID) -> FlowAccess | None:
        row = await self.pool.fetchrow(
            "SELECT token_hash, settings::text FROM auth.flow_access"
            " WHERE flow_id = $1 AND NOT deleted",
            flow_id,
        )
        if row is None:
            return None
        settings = FlowWebhookSettings.model_validate(orjson.loads(row["settings"]))
        return FlowAccess(row["token_hash"], settings)

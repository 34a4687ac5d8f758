"""auth's SQL: workspaces, personal access tokens and the copy of flow access state."""

import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import orjson

from shared.schemas.access import FlowChanged, FlowWebhookSettings, TokenRingState


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
    # Key id -> hash of the flow's token under that key (this version's nonce).
    token_hashes: dict[str, str]
    settings: FlowWebhookSettings
    # The key ring auth knows (None: none announced yet, every hash counts).
    ring: TokenRingState | None

    def accepted_hashes(self, now: datetime) -> list[tuple[str, datetime | None]]:
        """The hashes a bearer may match now, each with the time its key stops counting:
        only keys in the ring, and not past their end time."""
        if self.ring is None:
            return [(token_hash, None) for token_hash in self.token_hashes.values()]
        keys = {key.key_id: key.not_after for key in self.ring.keys}
        accepted = []
        for key_id, token_hash in self.token_hashes.items():
            if key_id not in keys:
                continue
            not_after = keys[key_id]
            if not_after is None or not_after > now:
                accepted.append((token_hash, not_after))
        return accepted


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
        """Keep the newest version only (events may arrive late or twice); True if applied.
        The same version again adds the hashes of keys it did not have (a runner with a
        new key in its ring republishes every flow): a key id's hash for one version is
        always the same, so merging is safe, and which keys count is the ring's business."""
        hashes = change.token_hashes or {"": change.token_hash}
        row = await self.pool.fetchrow(
            "INSERT INTO auth.flow_access (flow_id, workspace_id, version, token_hash,"
            " token_hashes, settings, deleted, updated_at)"
            " VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb, $7, now())"
            " ON CONFLICT (flow_id) DO UPDATE SET workspace_id = EXCLUDED.workspace_id,"
            " version = EXCLUDED.version, token_hash = EXCLUDED.token_hash,"
            " token_hashes = CASE WHEN auth.flow_access.version = EXCLUDED.version"
            " THEN auth.flow_access.token_hashes || EXCLUDED.token_hashes"
            " ELSE EXCLUDED.token_hashes END,"
            " settings = EXCLUDED.settings, deleted = EXCLUDED.deleted, updated_at = now()"
            " WHERE auth.flow_access.version < EXCLUDED.version"
            " OR (auth.flow_access.version = EXCLUDED.version"
            " AND NOT auth.flow_access.token_hashes @> EXCLUDED.token_hashes)"
            " RETURNING flow_id",
            uuid.UUID(change.flow_id),
            uuid.UUID(change.workspace_id),
            change.version,
            change.token_hash,
            orjson.dumps(hashes).decode(),
            change.settings.model_dump_json(),
            change.deleted,
        )
        return row is not None

    async def apply_token_ring(self, ring: TokenRingState) -> bool:
        """Keep the highest generation; True if this one replaced what auth had."""
        row = await self.pool.fetchrow(
            "INSERT INTO auth.token_ring (singleton, generation, keys) VALUES (true, $1, $2::jsonb)"
            " ON CONFLICT (singleton) DO UPDATE SET generation = EXCLUDED.generation,"
            " keys = EXCLUDED.keys, updated_at = now()"
            " WHERE auth.token_ring.generation < EXCLUDED.generation"
            " RETURNING generation",
            ring.generation,
            orjson.dumps([key.model_dump(mode="json") for key in ring.keys]).decode(),
        )
        return row is not None

    async def flow_access(self, flow_id: uuid.UUID) -> FlowAccess | None:
        row = await self.pool.fetchrow(
            "SELECT f.token_hashes::text, f.settings::text, r.generation,"
            " r.keys::text AS ring_keys"
            " FROM auth.flow_access f LEFT JOIN auth.token_ring r ON true"
            " WHERE f.flow_id = $1 AND NOT f.deleted",
            flow_id,
        )
        if row is None:
            return None
        settings = FlowWebhookSettings.model_validate(orjson.loads(row["settings"]))
        ring = None
        if row["generation"] is not None:
            ring = TokenRingState(generation=row["generation"], keys=orjson.loads(row["ring_keys"]))
        return FlowAccess(orjson.loads(row["token_hashes"]), settings, ring)

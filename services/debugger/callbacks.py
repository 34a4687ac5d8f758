"""Completion callback attempts (`callback.attempted`, sent by the runner: services/runner/
callbacks.py), stored one row each in `debugger.callback_attempts` and shown with their
request (`GET /v1/requests/{id}`: `callback`).

They have their own durable queue (`flowhooks.debugger.callbacks`) and consumer rather
than joining the batched request intake (ingest.py): another table, a few rows per
callback at most, and a failure of one path must not hold up the other."""

import uuid
from typing import Any

import asyncpg
import structlog

from shared.db import delete_in_batches
from shared.schemas.callbacks import CallbackAttempted

_INSERT = (
    "INSERT INTO debugger.callback_attempts (id, request_id, webhook_id, flow_id,"
    " workspace_id, attempt, at, status_code, error, next_attempt_at, state)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (id) DO NOTHING"
)
MAX_ERROR_CHARS = 2000

log = structlog.get_logger(__name__)


class CallbackAttempts:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def record(self, attempt: CallbackAttempted) -> None:
        """Idempotent on the attempt's id (an event delivered again is stored once).
        A database error raises: the kernel requeues the event."""
        await self.pool.execute(
            _INSERT,
            attempt.id,
            attempt.request_id,
            attempt.webhook_id,
            uuid.UUID(attempt.flow_id),
            uuid.UUID(attempt.workspace_id),
            attempt.attempt,
            attempt.at,
            attempt.status_code,
            attempt.error[:MAX_ERROR_CHARS] if attempt.error is not None else None,
            attempt.next_attempt_at,
            attempt.state,
        )

    async def of_request(self, request_id: str, workspace_id: str) -> dict[str, Any] | None:
        """`{"webhook_id", "state", "attempts": [...]}` in the order they were made; the
        state is the last attempt's. None: no callback was attempted for it (yet)."""
        rows = await self.pool.fetch(
            "SELECT webhook_id, attempt, at, status_code, error, next_attempt_at, state"
            " FROM debugger.callback_attempts WHERE request_id = $1 AND workspace_id = $2"
            " ORDER BY at, attempt, id",
            request_id,
            uuid.UUID(workspace_id),
        )
        if not rows:
            return None
        return {
            "webhook_id": rows[-1]["webhook_id"],
            "state": rows[-1]["state"],
            "attempts": [
                {
                    "attempt": row["attempt"],
                    "at": row["at"],
                    "status_code": row["status_code"],
                    "error": row["error"],
                    "next_attempt_at": row["next_attempt_at"],
                }
                for row in rows
            ],
        }

    async def prune(self, max_age_s: float, batch: int) -> int:
        """Deletes attempts older than the requests' retention, in bounded batches."""
        return await delete_in_batches(
            self.pool,
            "DELETE FROM debugger.callback_attempts WHERE id IN (SELECT id FROM"
            " debugger.callback_attempts WHERE at < now() - make_interval(secs => $1)"
            " LIMIT $2)",
            float(max_age_s),
            batch=batch,
        )

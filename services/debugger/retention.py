"""Retention: a periodic job deleting requests older than the maximum age and, per flow,
beyond the newest N. Deletes go in bounded batches (short transactions, no long locks);
one debugger replica at a time runs it (an advisory lock)."""

import uuid

import asyncpg
import structlog

from shared.db import delete_in_batches

log = structlog.get_logger(__name__)

LOCK_KEY = "flowhooks:debugger:retention"


class Retention:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        max_age_s: float,
        max_per_flow: int,
        batch: int,
    ) -> None:
        self.pool = pool
        self.max_age_s = max_age_s
        self.max_per_flow = max_per_flow
        self.batch = batch

    async def sweep(self) -> int:
        """One pass; returns how many requests were deleted (0 if another replica runs it)."""
        async with self.pool.acquire() as conn:
            if not await conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", LOCK_KEY):
                return 0
            try:
                deleted = await self._by_age(conn) + await self._by_count(conn)
            finally:
                await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", LOCK_KEY)
        if deleted:
            log.info("retention_deleted", requests=deleted)
        return deleted

    async def _delete_batches(self, conn: asyncpg.Connection, sql: str, *args: object) -> int:
        return await delete_in_batches(conn, sql, *args, batch=self.batch)

    async def _by_age(self, conn: asyncpg.Connection) -> int:
        return await self._delete_batches(
            conn,
            "DELETE FROM debugger.requests WHERE id IN (SELECT id FROM debugger.requests"
            " WHERE received_at < now() - make_interval(secs => $1) LIMIT $2)",
            float(self.max_age_s),
        )

    async def _by_count(self, conn: asyncpg.Connection) -> int:
        flows = await conn.fetch(
            "SELECT flow_id FROM debugger.requests GROUP BY flow_id HAVING count(*) > $1",
            self.max_per_flow,
        )
        total = 0
        for record in flows:
            flow_id: uuid.UUID = record["flow_id"]
            # The newest row to delete: everything at or after it in listing order goes.
            cutoff = await conn.fetchrow(
                "SELECT received_at, id FROM debugger.requests WHERE flow_id = $1"
                " ORDER BY received_at DESC, id DESC OFFSET $2 LIMIT 1",
                flow_id,
                self.max_per_flow,
            )
            if cutoff is None:
                continue
            total += await self._delete_batches(
                conn,
                "DELETE FROM debugger.requests WHERE id IN (SELECT id FROM debugger.requests"
                " WHERE flow_id = $1 AND (received_at, id) <= ($2, $3::text) LIMIT $4)",
                flow_id,
                cutoff["received_at"],
                cutoff["id"],
            )
        return total

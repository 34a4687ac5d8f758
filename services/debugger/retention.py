"""Retention: a periodic job removing requests older than the maximum age and, per flow,
beyond the newest N; one debugger replica at a time runs it (an advisory lock).

By age, whole partitions go (`DROP TABLE`: no row-by-row delete, no dead tuples, no
vacuum, no index bloat), those whose whole range is past the age: a partition holding
a record younger than the retention stays until that record is old enough (records live
up to one partition interval longer than the age). What is not in a dated partition (the
default partition, the old unpartitioned table while it is being moved) is deleted in
bounded batches as before. By count, bounded deletes; they touch only the partitions
up to the flow's cutoff row."""

import uuid

import asyncpg
import structlog

from services.debugger.legacy_copy import LEGACY
from services.debugger.partitions import DEFAULT, PARENT, Partitions
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
        partitions: Partitions,
    ) -> None:
        self.pool = pool
        self.max_age_s = max_age_s
        self.max_per_flow = max_per_flow
        self.batch = batch
        self.partitions = partitions

    async def sweep(self) -> int:
        """One pass; returns how many requests were deleted row by row (0 if another
        replica runs it). Dropped partitions are logged, not counted."""
        async with self.pool.acquire() as conn:
            if not await conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", LOCK_KEY):
                return 0
            try:
                dropped = await self.partitions.drop_expired()
                deleted = await self._by_age(conn) + await self._by_count(conn)
            finally:
                await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", LOCK_KEY)
        if deleted or dropped:
            log.info("retention_deleted", requests=deleted, partitions_dropped=dropped)
        return deleted

    async def _delete_batches(self, conn: asyncpg.Connection, sql: str, *args: object) -> int:
        return await delete_in_batches(conn, sql, *args, batch=self.batch)

    async def _by_age(self, conn: asyncpg.Connection) -> int:
        """The rows past the age outside the dated partitions."""
        tables = [f"debugger.{DEFAULT}"]
        if await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", LEGACY):
            tables.append(LEGACY)
        total = 0
        for table in tables:
            total += await self._delete_batches(
                conn,
                f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table}"
                " WHERE received_at < now() - make_interval(secs => $1) LIMIT $2)",
                float(self.max_age_s),
            )
        return total

    async def _by_count(self, conn: asyncpg.Connection) -> int:
        flows = await conn.fetch(
            f"SELECT flow_id FROM {PARENT} GROUP BY flow_id HAVING count(*) > $1",
            self.max_per_flow,
        )
        total = 0
        for record in flows:
            flow_id: uuid.UUID = record["flow_id"]
            # The newest row to delete: everything at or after it in listing order goes.
            cutoff = await conn.fetchrow(
                f"SELECT received_at, id FROM {PARENT} WHERE flow_id = $1"
                " ORDER BY received_at DESC, id DESC OFFSET $2 LIMIT 1",
                flow_id,
                self.max_per_flow,
            )
            if cutoff is None:
                continue
            total += await self._delete_batches(
                conn,
                f"DELETE FROM {PARENT} WHERE (id, received_at) IN (SELECT id, received_at"
                f" FROM {PARENT} WHERE flow_id = $1 AND received_at <= $2"
                " AND (received_at, id) <= ($2, $3::text) LIMIT $4)",
                flow_id,
                cutoff["received_at"],
                cutoff["id"],
            )
        return total

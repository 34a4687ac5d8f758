"""The online move from the unpartitioned `debugger.requests` (renamed
`requests_unpartitioned` by migration 016) into the partitioned one, while traffic runs.

- A row is always in exactly one of the two tables: a background job moves rows in
  batches (DELETE ... RETURNING into INSERT, one transaction per batch, newest first),
  and the intake, before it writes a batch, moves the rows of the same ids itself
  (`adopt`), so that the rank rule applies to one row as before.
- Reads consult both (`source()`: a UNION ALL over the columns of the new table) until
  the old table is seen empty; it never fills again (nothing writes to it), so each
  replica stops reading it once it has seen it empty, and the job drops it a grace
  period later.
- Rows older than the retention are deleted instead of moved.
One replica at a time moves (an advisory lock); any replica may adopt."""

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg
import structlog

from services.debugger.partitions import PARENT, Partitions, columns

log = structlog.get_logger(__name__)

LEGACY = "debugger.requests_unpartitioned"
LOCK_KEY = "flowhooks:debugger:legacy_copy"


@dataclass
class LegacyRequests:
    pool: asyncpg.Pool
    partitions: Partitions
    batch: int = 1000
    pause_s: float = 0.05
    # How long the old table stays after it is seen empty, before it is dropped: every
    # replica has looked again (each looks every `refresh_s`) and stopped reading it.
    grace_s: float = 30.0
    refresh_s: float = 5.0
    present: bool = False
    moved: int = 0
    _source: str = PARENT
    _shared: list[str] = field(default_factory=list)
    _empty_since: float | None = None

    async def refresh(self) -> None:
        """Whether the old table still holds rows; the columns the two tables share."""
        async with self.pool.acquire() as conn:
            exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", LEGACY)
            has_rows = exists and await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {LEGACY})")
            if not has_rows:
                self.present, self._source = False, PARENT
                return
            new = await conn.fetch(
                "SELECT attname, format_type(atttypid, atttypmod) AS type FROM pg_attribute"
                " WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped"
                " ORDER BY attnum",
                PARENT,
            )
            old = set(await columns(conn, LEGACY))
        self._shared = [row["attname"] for row in new if row["attname"] in old]
        listed = ", ".join(f'"{row["attname"]}"' for row in new)
        # A column added after the move began is NULL for the old rows.
        legacy = ", ".join(
            f'"{row["attname"]}"' if row["attname"] in old else f"NULL::{row['type']}"
            for row in new
        )
        self._source = (
            f"(SELECT {listed} FROM {PARENT} UNION ALL SELECT {legacy} FROM {LEGACY}) AS requests"
        )
        self.present = True

    def source(self) -> str:
        """What reads select from: the partitioned table, and the old one while it has
        rows (aliased `requests`)."""
        return self._source if self.present else PARENT

    def _move(self, where: str) -> str:
        listed = ", ".join(f'"{name}"' for name in self._shared)
        updates = ", ".join(f'"{name}" = EXCLUDED."{name}"' for name in self._shared[1:])
        # The rank rule, as the intake's upsert: a row written meanwhile with the same or
        # a higher rank stays.
        return (
            f"WITH moved AS (DELETE FROM {LEGACY} AS old WHERE {where} RETURNING {listed})"
            f" INSERT INTO {PARENT} ({listed}) SELECT {listed} FROM moved"
            f" ON CONFLICT (id, received_at) DO UPDATE SET {updates}"
            f" WHERE {PARENT}.source_rank < EXCLUDED.source_rank"
        )

    async def adopt(self, conn: asyncpg.Connection, ids: list[str]) -> None:
        """Moves the rows of these ids (in the caller's transaction) before the caller
        writes them again."""
        if self.present:
            await conn.execute(self._move("old.id = ANY($1::text[])"), ids)

    async def copy_batch(self) -> int:
        """Moves one batch (deletes rows past the retention); 0 when nothing is left."""
        cutoff = datetime.now(UTC) - self.partitions.max_age
        async with self.pool.acquire() as conn:
            span = await conn.fetchrow(
                "SELECT min(received_at) AS low, max(received_at) AS high FROM (SELECT"
                f" received_at FROM {LEGACY} WHERE received_at >= $1"
                " ORDER BY received_at DESC LIMIT $2) AS next",
                cutoff,
                self.batch,
            )
        if span["low"] is not None:
            # Their partitions first, so that nothing lands in the default partition.
            await self.partitions.ensure(span["low"], span["high"])
        async with self.pool.acquire() as conn, conn.transaction():
            status = await conn.execute(
                f"DELETE FROM {LEGACY} WHERE id IN (SELECT id FROM {LEGACY}"
                " WHERE received_at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED)",
                cutoff,
                self.batch,
            )
            expired = int(status.split()[-1])
            status = await conn.execute(
                self._move(
                    f"old.id IN (SELECT id FROM {LEGACY} WHERE received_at >= $1"
                    " ORDER BY received_at DESC LIMIT $2 FOR UPDATE SKIP LOCKED)"
                ),
                cutoff,
                self.batch,
            )
        moved = int(status.split()[-1])
        self.moved += moved
        return moved + expired

    async def run_forever(self) -> None:
        """Every replica: looks again every `refresh_s`; the one holding the lock moves
        batches until the old table is empty, then drops it after `grace_s`."""
        while True:
            try:
                await self._run_once()
            except Exception as exc:
                log.warning("legacy_copy_failed", error=repr(exc))
            await asyncio.sleep(self.refresh_s)

    async def _run_once(self) -> None:
        await self.refresh()
        async with self.pool.acquire() as conn:
            if not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", LEGACY):
                return
            if not await conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", LOCK_KEY):
                return
            try:
                await self._copy_all(conn)
            finally:
                await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", LOCK_KEY)

    async def _copy_all(self, conn: asyncpg.Connection) -> None:
        started, before = asyncio.get_running_loop().time(), self.moved
        while self.present:
            if not await self.copy_batch():
                break
            await asyncio.sleep(self.pause_s)  # leaves room for the intake and the API
        if self.moved > before:
            took = asyncio.get_running_loop().time() - started
            log.info("legacy_rows_moved", rows=self.moved - before, seconds=round(took, 1))
        await self.refresh()
        now = asyncio.get_running_loop().time()
        if self._empty_since is None:
            self._empty_since = now
            return
        if now - self._empty_since < self.grace_s:
            return
        await conn.execute("SET lock_timeout = '2s'")
        try:
            await conn.execute(f"DROP TABLE IF EXISTS {LEGACY}")
        finally:
            await conn.execute("RESET lock_timeout")
        log.info("legacy_table_dropped", moved=self.moved)


def requests_source(legacy: LegacyRequests | None) -> str:
    """What a reader outside the store selects requests from (see `LegacyRequests`)."""
    return legacy.source() if legacy is not None else PARENT

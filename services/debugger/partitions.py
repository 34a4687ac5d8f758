"""The time partitions of `debugger.requests` (migration 016): created ahead of need by
a periodic job, rows that landed in the default partition moved into their own, and
whole partitions past the retention dropped.

Every change runs in one transaction under an advisory lock with a short lock_timeout:
two replicas never create the same partition twice (the second one finds it there), and
a partition change never waits long in PostgreSQL's lock queue in front of the intake
(it gives up and is tried again next run). A partition is created beside the table
and then attached, the rows of its range taken out of the default partition in the same
transaction: readers see them in one place or the other, never in both or neither."""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise

import asyncpg
import structlog

log = structlog.get_logger(__name__)

LOCK_KEY = "flowhooks:debugger:partitions"
PARENT = "debugger.requests"
DEFAULT = "requests_default"
# A partition change gives up rather than queue for its lock longer than this.
LOCK_TIMEOUT = "2s"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Range:
    start: datetime
    end: datetime


def slot_start(at: datetime, interval: timedelta) -> datetime:
    """The start of the partition slot holding `at`: slots are aligned on the epoch."""
    return at - (at - _EPOCH) % interval


def partition_name(start: datetime) -> str:
    start = start.astimezone(UTC)
    if start.hour == start.minute == start.second == 0:
        return f"requests_p{start:%Y%m%d}"
    return f"requests_p{start:%Y%m%d_%H%M%S}"


def missing_ranges(
    existing: Sequence[Range], since: datetime, until: datetime, interval: timedelta
) -> list[Range]:
    """The ranges to create so that every slot touching [since, until] is covered: each
    slot, minus what existing partitions already cover (an interval changed since they
    were made leaves partial slots, filled up to their neighbours)."""
    wanted: list[Range] = []
    start = slot_start(since, interval)
    while start <= until:
        gaps = [Range(start, start + interval)]
        for taken in existing:
            gaps = [
                piece
                for gap in gaps
                for piece in (
                    Range(gap.start, min(gap.end, taken.start)),
                    Range(max(gap.start, taken.end), gap.end),
                )
                if piece.start < piece.end
            ]
        wanted.extend(gaps)
        start += interval
    return wanted


async def columns(conn: asyncpg.Connection, table: str) -> list[str]:
    """A table's columns in order, from the catalogue (other migrations add columns)."""
    rows = await conn.fetch(
        "SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0"
        " AND NOT attisdropped ORDER BY attnum",
        table,
    )
    return [row["attname"] for row in rows]


async def partitions(conn: asyncpg.Connection) -> list[tuple[str, Range]]:
    """The partitions of `debugger.requests` with their ranges (the default left out)."""
    rows = await conn.fetch(
        "SELECT c.relname, bound[1]::timestamptz AS start, bound[2]::timestamptz AS end"
        " FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid,"
        " regexp_match(pg_get_expr(c.relpartbound, c.oid),"
        " 'FROM \\(''([^'']+)''\\) TO \\(''([^'']+)''\\)') AS bound"
        " WHERE i.inhparent = $1::regclass AND bound IS NOT NULL ORDER BY start",
        PARENT,
    )
    return [(row["relname"], Range(row["start"], row["end"])) for row in rows]


@dataclass
class Partitions:
    pool: asyncpg.Pool
    interval: timedelta
    ahead: timedelta
    max_age: timedelta
    # Rows in the default partition at the last look (a gauge: expected 0).
    default_rows: int = 0
    # The one contiguous range the partitions cover, as of the last look; None when
    # there are gaps (see `listing_bounds`).
    covered: Range | None = None

    def listing_bounds(self) -> Range | None:
        """Bounds a listing may add as constants, so that PostgreSQL prunes the default
        partition when it plans: with it pruned the partitions are read newest first and
        the scan stops at the page (an ordered Append); with it, every partition's index
        is merged (measured 2-4x slower, docs/performance.md). Only while they hide
        nothing: the partitions contiguous, the default partition empty at the last
        look, and their end well after now."""
        covered = self.covered
        if covered is None or self.default_rows:
            return None
        if covered.end < datetime.now(UTC) + timedelta(hours=1):
            return None
        return covered

    async def _look(self, conn: asyncpg.Connection) -> None:
        ranges = [bounds for _, bounds in await partitions(conn)]
        contiguous = all(a.end == b.start for a, b in pairwise(ranges))
        self.covered = Range(ranges[0].start, ranges[-1].end) if ranges and contiguous else None

    async def maintain(self) -> list[str]:
        """The periodic job: partitions from one slot back to `ahead`, and a home for whatever
        landed in the default partition. Returns the partitions it created."""
        now = datetime.now(UTC)
        # The slot before now too: on a fresh install, a late event of a request
        # received just before midnight finds its partition.
        created = await self.ensure(now - self.interval, now + self.ahead)
        created += await self.move_default()
        return created

    async def ensure(self, since: datetime, until: datetime) -> list[str]:
        """Partitions covering [since, until]; any rows of their ranges in the default
        partition moved into them. Idempotent, and safe from any number of replicas."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", LOCK_KEY)
            existing = [bounds for _, bounds in await partitions(conn)]
            missing = missing_ranges(existing, since, until, self.interval)
            if not missing:
                await self._look(conn)
                return []
            names = await columns(conn, PARENT)
            listed = ", ".join(f'"{name}"' for name in names)
            created = []
            for gap in missing:
                name = partition_name(gap.start)
                await conn.execute(
                    f'CREATE TABLE debugger."{name}" (LIKE {PARENT}'
                    " INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE"
                    " INCLUDING COMPRESSION)"  # lz4 for the large values (migration 018)
                )
                moved = await conn.execute(
                    f"WITH moved AS (DELETE FROM debugger.{DEFAULT} WHERE received_at >= $1"
                    f" AND received_at < $2 RETURNING {listed})"
                    f' INSERT INTO debugger."{name}" ({listed}) SELECT {listed} FROM moved',
                    gap.start,
                    gap.end,
                )
                # A statement planned before the attach commits keeps the old list of
                # partitions but may take its snapshot after: it would miss rows moved
                # into the new one (from the default partition here, from the old table
                # by legacy_copy.py right after). Holding the parent exclusively until
                # commit lets every such statement end first; ATTACH alone takes a
                # lighter lock. Rare (a slot is made `ahead` of time) and brief.
                await conn.execute(f"LOCK TABLE {PARENT} IN ACCESS EXCLUSIVE MODE")
                await conn.execute(
                    f'ALTER TABLE {PARENT} ATTACH PARTITION debugger."{name}"'
                    f" FOR VALUES FROM ('{gap.start.isoformat()}') TO ('{gap.end.isoformat()}')"
                )
                rows = int(moved.split()[-1])
                log.info("partition_created", partition=name, moved_from_default=rows)
                created.append(name)
            await self._look(conn)
            return created

    async def move_default(self) -> list[str]:
        """Rows in the default partition (a partition was missing when they came: the
        job was late, or their time is far from now) moved into partitions of their own;
        those past the retention are left to it."""
        cutoff = datetime.now(UTC) - self.max_age
        async with self.pool.acquire() as conn:
            self.default_rows = await conn.fetchval(
                f"SELECT count(*) FROM (SELECT 1 FROM debugger.{DEFAULT} LIMIT 100000) AS s"
            )
            if not self.default_rows:
                return []
            log.warning("default_partition_not_empty", rows=self.default_rows)
            times = await conn.fetch(
                f"SELECT DISTINCT received_at FROM debugger.{DEFAULT}"
                " WHERE received_at >= $1 ORDER BY received_at LIMIT 1000",
                cutoff,
            )
        created: list[str] = []
        slots = sorted({slot_start(row["received_at"], self.interval) for row in times})
        for start in slots:
            created += await self.ensure(start, start)
        return created

    async def drop_expired(self) -> list[str]:
        """Drops every partition whose whole range is older than the retention: never
        one holding a record younger than it."""
        cutoff = datetime.now(UTC) - self.max_age
        dropped = []
        async with self.pool.acquire() as conn:
            for name, bounds in await partitions(conn):
                if bounds.end > cutoff:
                    break
                async with conn.transaction():
                    await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
                    await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", LOCK_KEY)
                    await conn.execute(f'DROP TABLE IF EXISTS debugger."{name}"')
                log.info("partition_dropped", partition=name, until=bounds.end.isoformat())
                dropped.append(name)
            await self._look(conn)
        return dropped

"""The debugger's time-partitioned requests on a real PostgreSQL (a database of each
test's own): partitions made ahead by two replicas at once, a record with no partition
for its day kept in the default partition and moved later, retention dropping whole
partitions only, reads across partitions, and the online move of an unpartitioned table
while records keep arriving."""

import asyncio
import shutil
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from services.debugger.app import DATABASE
from services.debugger.legacy_copy import LEGACY, LegacyRequests
from services.debugger.partitions import Partitions, partition_name, partitions, slot_start
from services.debugger.retention import Retention
from services.debugger.store import RequestRow, RequestStore
from shared.db import apply_migrations, create_pool, open_pool
from shared.request_ids import new_request_id

pytestmark = pytest.mark.integration

FLOW = uuid.UUID("00000000-0000-0000-0000-0000000000f1")
WORKSPACE = "00000000-0000-0000-0000-0000000000a1"
DAY = timedelta(days=1)


def row(request_id: str, received_at: datetime, rank: int = 3, **kw: Any) -> RequestRow:
    fields: dict[str, Any] = {
        "id": request_id,
        "flow_id": str(FLOW),
        "workspace_id": WORKSPACE,
        "received_at": received_at,
        "method": "POST",
        "path": "/hook",
        "query": "{}",
        "headers": '{"x-event": "push"}',
        "content_type": "application/json",
        "raw_body": "{}",
        "raw_body_truncated": False,
        "input": '{"n": 1}',
        "mode": "async",
        "outcome": {0: "queued", 1: "running"}.get(rank, "succeeded"),
        "status_code": 200 if rank == 3 else None,
        "response_content_type": None,
        "response_body": None,
        "error": None,
        "steps": "[]",
        "started_at": None,
        "finished_at": None,
        "source_rank": rank,
        "replay_of": None,
        "truncated": None,
    }
    return RequestRow(**{**fields, **kw})


def maintainer(pool: asyncpg.Pool, max_age: timedelta = 30 * DAY) -> Partitions:
    return Partitions(pool, interval=DAY, ahead=3 * DAY, max_age=max_age)


JSONB = {"query", "headers", "input", "steps", "truncated", "response_headers"}


async def insert_unpartitioned(pool: asyncpg.Pool, rows: list[RequestRow]) -> None:
    """Rows as today's code wrote them into the unpartitioned table."""
    names = RequestRow._fields
    casts = [
        "::jsonb" if name in JSONB else "::uuid" if name.endswith("_id") else "" for name in names
    ]
    values = ", ".join(f"${n + 1}{cast}" for n, cast in enumerate(casts))
    await pool.executemany(
        f"INSERT INTO debugger.requests ({', '.join(names)}) VALUES ({values})",
        [
            [str(v) if name.endswith("_id") and v else v for name, v in zip(names, r, strict=True)]
            for r in rows
        ],
    )


async def where(pool: asyncpg.Pool, request_id: str) -> list[str]:
    """The tables holding this request's row."""
    rows = await pool.fetch(
        "SELECT tableoid::regclass::text AS t FROM debugger.requests WHERE id = $1", request_id
    )
    return [r["t"] for r in rows]


async def test_two_replicas_make_each_partition_ahead_once(database_url: str) -> None:
    pools = [await open_pool(database_url, 3, DATABASE.schema, DATABASE.migrations)]
    pools.append(await create_pool(database_url, 3))
    try:
        replicas = [maintainer(pool) for pool in pools]
        created = await asyncio.gather(*(r.maintain() for r in replicas for _ in range(3)))
        async with pools[0].acquire() as conn:
            made = await partitions(conn)
        today = slot_start(datetime.now(UTC), DAY)
        # The migration's four days (yesterday to today + 2), the job's fifth (now + 3
        # days), each made once.
        days = [today + n * DAY for n in range(-1, 4)]
        assert [(name, bounds.start) for name, bounds in made] == [
            (partition_name(day), day) for day in days
        ]
        assert sorted(name for names in created for name in names) == [partition_name(days[-1])]
    finally:
        for pool in pools:
            await pool.close()


async def test_a_record_without_its_partition_waits_in_the_default_and_is_moved(
    database_url: str,
) -> None:
    pool = await open_pool(database_url, 4, DATABASE.schema, DATABASE.migrations)
    try:
        store, parts = RequestStore(pool), maintainer(pool)
        later = datetime.now(UTC) + 10 * DAY  # no partition that far ahead
        far = new_request_id(later)
        await store.write([row(far, later, rank=1)])
        assert await where(pool, far) == ["debugger.requests_default"]
        assert (await store.get(far, WORKSPACE) or {})["outcome"] == "running"
        await parts.maintain()
        assert parts.default_rows == 1  # seen (the gauge), then moved
        assert await where(pool, far) == [f"debugger.{partition_name(slot_start(later, DAY))}"]
        # Its later events find it in its partition (the rank rule still holds).
        await store.write([row(far, later, rank=3)])
        assert (await store.get(far, WORKSPACE) or {})["outcome"] == "succeeded"
        await parts.maintain()
        assert parts.default_rows == 0
        assert await pool.fetchval("SELECT count(*) FROM debugger.requests") == 1
        # Its partition is apart from the others: listings add no bounds, and find it.
        assert parts.covered is None and parts.listing_bounds() is None
        listed = await RequestStore(pool, partitions=parts).list_for_flow(
            FLOW,
            WORKSPACE,
            limit=5,
            before=None,
            outcome=None,
            mode=None,
            since=None,
            until=None,
        )
        assert [r["id"] for r in listed] == [far]
    finally:
        await pool.close()


async def test_retention_drops_old_partitions_only_and_keeps_counts(database_url: str) -> None:
    pool = await open_pool(database_url, 4, DATABASE.schema, DATABASE.migrations)
    try:
        now = datetime.now(UTC)
        parts = maintainer(pool, max_age=30 * DAY)
        store = RequestStore(pool)
        old_day = slot_start(now - 32 * DAY, DAY)
        edge = now - 30 * DAY + timedelta(minutes=5)  # younger than the retention
        await parts.ensure(old_day, edge)
        rows = [
            row(new_request_id(old_day + timedelta(hours=h)), old_day + timedelta(hours=h))
            for h in range(3)
        ]
        young = row(new_request_id(edge), edge)
        await store.write([*rows, young])
        retention = Retention(
            pool, max_age_s=30 * 86400, max_per_flow=1000, batch=100, partitions=parts
        )
        assert await retention.sweep() == 0  # no row deleted one by one
        async with pool.acquire() as conn:
            names = [name for name, _ in await partitions(conn)]
        assert partition_name(old_day) not in names
        assert partition_name(slot_start(edge, DAY)) in names  # holds a younger record
        assert await pool.fetchval("SELECT array_agg(id) FROM debugger.requests") == [young.id]
        # By count per flow: the newest N stay, whichever partitions they are in.
        recent = [row(new_request_id(now - n * DAY), now - n * DAY) for n in range(3)]
        await store.write(recent)
        retention.max_per_flow = 2
        assert await retention.sweep() == 2
        assert sorted(await pool.fetchval("SELECT array_agg(id) FROM debugger.requests")) == sorted(
            r.id for r in recent[:2]
        )
    finally:
        await pool.close()


async def test_listing_search_lookup_and_stats_span_partitions(database_url: str) -> None:
    pool = await open_pool(database_url, 4, DATABASE.schema, DATABASE.migrations)
    try:
        now = datetime.now(UTC)
        parts = maintainer(pool)
        await parts.ensure(now - 3 * DAY, now)
        # The listing adds the partitions' range as constants (default partition pruned).
        assert parts.listing_bounds() is not None
        store = RequestStore(pool, partitions=parts)
        times = [now - timedelta(hours=9 * n) for n in range(8)]  # over three days
        rows = [row(new_request_id(t), t, input=f'{{"n": {n % 2}}}') for n, t in enumerate(times)]
        old_style = row(uuid.uuid4().hex, now - timedelta(hours=30))  # an id with no time
        await store.write([*rows, old_style])
        assert (await store.get(old_style.id, WORKSPACE) or {})["id"] == old_style.id
        assert (await store.get(rows[5].id, WORKSPACE) or {})["id"] == rows[5].id
        assert await store.get(rows[5].id, str(uuid.uuid4())) is None  # another workspace
        seen: list[str] = []
        before = None
        while True:  # keyset pages of 3, newest first, across the partitions
            page = await store.list_for_flow(
                FLOW,
                WORKSPACE,
                limit=3,
                before=before,
                outcome=None,
                mode=None,
                since=None,
                until=None,
            )
            seen += [r["id"] for r in page]
            if len(page) < 3:
                break
            before = (page[-1]["received_at"], page[-1]["id"])
        expected = sorted([*rows, old_style], key=lambda r: (r.received_at, r.id), reverse=True)
        assert seen == [r.id for r in expected]
        found = await store.list_for_flow(
            FLOW,
            WORKSPACE,
            limit=50,
            before=None,
            outcome=None,
            mode=None,
            since=now - 2 * DAY,
            until=None,
            input_match='{"n": 1}',
            headers_match='{"x-event": "push"}',
        )
        # Within two days, newest first: 9 h, 27 h, the old-style id's 30 h, 45 h.
        assert [r["id"] for r in found] == [rows[1].id, rows[3].id, old_style.id, rows[5].id]
        stats = await store.stats(FLOW, WORKSPACE, 3 * 86400)
        assert stats["total"] == 9
    finally:
        await pool.close()


async def test_the_unpartitioned_table_moves_over_while_records_arrive(
    database_url: str, tmp_path: Path
) -> None:
    # Today's schema first (the migrations before 016), with records of three days.
    for path in sorted(DATABASE.migrations.glob("*.sql")):
        if path.name < "016":
            shutil.copy(path, tmp_path)
    pool = await create_pool(database_url, 8)
    try:
        async with pool.acquire() as conn:
            await apply_migrations(conn, DATABASE.schema, tmp_path)
        now = datetime.now(UTC)
        old = [
            row(uuid.uuid4().hex, now - timedelta(minutes=7 * n), rank=n % 2) for n in range(1500)
        ]
        await insert_unpartitioned(pool, old)
        async with pool.acquire() as conn:  # the deploy: migration 016, catalogue only
            applied = await apply_migrations(conn, DATABASE.schema, DATABASE.migrations)
        assert applied[0] == "016_partitioned_requests.sql"
        later = sorted(path.name for path in DATABASE.migrations.glob("*.sql"))
        assert applied == [name for name in later if name >= "016"]  # the ones after it too
        parts = maintainer(pool)
        legacy = LegacyRequests(pool, parts, batch=100, pause_s=0.01, grace_s=0, refresh_s=0.05)
        await legacy.refresh()
        store = RequestStore(pool, legacy)
        written: dict[str, RequestRow] = {r.id: r for r in old}
        stop = asyncio.Event()
        missing: list[str] = []

        rounds = [0]

        async def traffic() -> None:
            n = 0
            while not stop.is_set():
                # New requests, and the later events of old ones (which upgrade them).
                fresh = [row(new_request_id(), datetime.now(UTC), rank=1) for _ in range(20)]
                upgraded = [
                    old[(n * 20 + k) % len(old)]._replace(source_rank=3, outcome="succeeded")
                    for k in range(20)
                ]
                await store.write([*fresh, *upgraded])
                written.update({r.id: r for r in [*fresh, *upgraded]})
                n += 1
                rounds[0] = n
                await asyncio.sleep(0.01)

        async def reads() -> None:
            while not stop.is_set():
                expected = set(written)
                async with pool.acquire() as conn:
                    ids = {r["id"] for r in await conn.fetch(f"SELECT id FROM {store.source}")}
                missing.extend(expected - ids)
                await asyncio.sleep(0.02)

        running = [asyncio.create_task(traffic()), asyncio.create_task(reads())]
        mover = asyncio.create_task(legacy.run_forever())
        for _ in range(600):
            if not await pool.fetchval("SELECT to_regclass($1) IS NOT NULL", LEGACY):
                break
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.gather(*running)
        mover.cancel()
        assert not await pool.fetchval("SELECT to_regclass($1) IS NOT NULL", LEGACY)
        assert not legacy.present and store.source == "debugger.requests"
        assert missing == []  # every record readable all along
        assert rounds[0] >= 3 and legacy.moved > 0  # the move ran under the traffic
        stored = {
            r["id"]: r["source_rank"]
            for r in await pool.fetch("SELECT id, source_rank FROM debugger.requests")
        }
        assert len(stored) == await pool.fetchval("SELECT count(*) FROM debugger.requests")
        assert stored == {i: r.source_rank for i, r in written.items()}
        assert await pool.fetchval("SELECT count(*) FROM debugger.requests_default") == 0
    finally:
        await pool.close()

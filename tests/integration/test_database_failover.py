"""Database failover on a private primary + synchronous replica (harness/pg_replica.py):
the primary is SIGKILLed, writes fail fast with a connection error (no hang), the
replica is promoted, the same pool writes again within seconds through the multi-host
URL, and every write acknowledged before the crash is on the new primary. The same for
the debugger's intake: every event published across the failover is stored, none
dropped. Recovery times are printed (`pytest -s`).

Each test gets its own pair (about 1.5 s to start): a failover uses a pair up."""

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import aio_pika
import asyncpg
import pytest

from harness.pg_replica import PostgresPair, postgres_pair
from services.debugger.ingest import classify
from services.debugger.records import Redaction
from shared import db
from shared.db import UNAVAILABLE, ensure_database, open_pool
from shared.messaging import naming
from tests.integration.test_debugger_ingest import debugger, eventually, finished, webhook_request

pytestmark = pytest.mark.integration


@pytest.fixture
def pair() -> Iterator[PostgresPair]:
    with postgres_pair() as started:
        yield started


@pytest.fixture
def migrations(tmp_path: Path) -> Path:
    (tmp_path / "001_rows.sql").write_text("CREATE TABLE failover.rows (n int PRIMARY KEY)")
    return tmp_path


class Writer:
    """Writes rows 1, 2, 3, ... one commit each, remembering which were acknowledged."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.acknowledged: set[int] = set()
        self.errors: list[BaseException] = []
        self.next = 0
        self.first_write_after: float | None = None  # set by `watch_from`
        self._watch_from: float | None = None

    def watch_from(self, moment: float) -> None:
        self._watch_from, self.first_write_after = moment, None

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.next += 1
            try:
                async with asyncio.timeout(10):  # bounded: never a hang
                    await self.pool.execute("INSERT INTO failover.rows VALUES ($1)", self.next)
            except UNAVAILABLE as exc:
                self.errors.append(exc)
                await asyncio.sleep(0.02)
                continue
            self.acknowledged.add(self.next)
            if self._watch_from is not None and self.first_write_after is None:
                self.first_write_after = time.monotonic()
            await asyncio.sleep(0.002)


async def test_the_pool_writes_again_after_promotion_and_keeps_every_acknowledged_row(
    pair: PostgresPair, migrations: Path
) -> None:
    dsn = pair.dsn("flowhooks")
    await ensure_database(dsn)
    pool = await open_pool(dsn, 4, "failover", migrations)
    writer = Writer(pool)
    stop = asyncio.Event()
    task = asyncio.create_task(writer.run(stop))
    try:
        await eventually(lambda: _at_least(len(writer.acknowledged), 200))
        before_kill = set(writer.acknowledged)

        killed = time.monotonic()
        await asyncio.to_thread(pair.kill_primary)
        writer.watch_from(killed)  # rows acknowledged after this are the new primary's
        # No primary: each write fails, quickly, with a connection error (not a hang).
        outage_errors: list[str] = []
        for _ in range(5):  # the first ones may still find a pooled connection open
            started = time.monotonic()
            with pytest.raises(UNAVAILABLE) as raised:
                async with asyncio.timeout(10):
                    await pool.execute("INSERT INTO failover.rows VALUES (-1)")
            failed_in = time.monotonic() - started
            assert failed_in < db.CONNECT_TIMEOUT_S
            outage_errors.append(type(raised.value).__name__)
        assert outage_errors[-1] == "ConnectionRefusedError", outage_errors
        # A host up but not writable (the replica before its promotion): retried too.
        with pytest.raises(asyncpg.exceptions.TargetServerAttributeNotMatched) as standby:
            await db.connect(pair.replica_dsn("flowhooks") + "?target_session_attrs=read-write")
        assert classify(standby.value) == "unavailable"
        assert writer.first_write_after is None  # nothing was written meanwhile

        promoting = time.monotonic()
        await asyncio.to_thread(pair.promote)
        promoted = time.monotonic()
        await eventually(lambda: _truthy(writer.first_write_after), timeout_s=10)
        assert writer.first_write_after is not None
        written_again = writer.first_write_after
        assert written_again - promoting < 5
        await eventually(lambda: _at_least(len(writer.acknowledged - before_kill), 100))
    finally:
        stop.set()
        await task
        await pool.close()

    # Read straight from the promoted replica: every acknowledged row is there.
    conn = await asyncpg.connect(pair.replica_dsn("flowhooks"))
    try:
        stored = {row["n"] for row in await conn.fetch("SELECT n FROM failover.rows")}
    finally:
        await conn.close()
    assert writer.acknowledged <= stored
    print(
        f"\npool failover: {len(writer.acknowledged)} rows acknowledged, all on the new"
        f" primary; writes without a primary failed in {failed_in * 1000:.0f} ms"
        f" ({', '.join(outage_errors)});"
        f" promote took {promoted - promoting:.2f} s; kill -> first write"
        f" {written_again - killed:.2f} s (promote called -> first write"
        f" {(written_again - promoting) * 1000:.0f} ms); {len(writer.errors)} failed writes"
        f" ({', '.join(sorted({type(e).__name__ for e in writer.errors}))})"
    )


async def test_the_debugger_stores_every_event_across_a_failover(
    pair: PostgresPair, amqp_url: str
) -> None:
    dsn = pair.dsn("flowhooks")
    await ensure_database(dsn)
    published: list[str] = []

    async def stored(conn: asyncpg.Connection | asyncpg.Pool, prefix: str) -> set[str]:
        rows = await conn.fetch("SELECT id FROM debugger.requests WHERE id LIKE $1", prefix + "%")
        return {row["id"] for row in rows}

    async with debugger(amqp_url, dsn, Redaction(), batch_size=20) as dbg:
        commits: list[float] = []
        dbg.ingest.after_write = lambda rows: commits.append(time.monotonic())
        await dbg.consume()

        async def publish(prefix: str, count: int) -> None:
            for n in range(count):
                request_id = f"{prefix}-{n}"
                await dbg.publish(finished(webhook_request(request_id)))  # confirmed
                published.append(request_id)
                await asyncio.sleep(0.005)

        await publish("before", 100)

        async def all_before() -> bool:
            return len(await stored(dbg.pool, "before")) == 100

        await eventually(all_before)
        # Events keep coming while the primary dies and the replica takes over.
        during = asyncio.create_task(publish("during", 200))
        await asyncio.sleep(0.2)
        killed = time.monotonic()
        await asyncio.to_thread(pair.kill_primary)
        failures_at_kill = dbg.ingest.write_failures
        await asyncio.sleep(1)  # an outage the intake has to sit through
        promoting = time.monotonic()
        await asyncio.to_thread(pair.promote)
        await during
        await publish("after", 50)

        replica = await asyncpg.connect(pair.replica_dsn("flowhooks"))
        try:

            async def everything() -> bool:
                return len(await stored(replica, "")) == len(published)

            await eventually(everything, timeout_s=30)
            recovered = time.monotonic()
            assert await stored(replica, "") == set(published)
        finally:
            await replica.close()
        await eventually(lambda: _truthy(dbg.ingest.pending == 0))
        assert (dbg.ingest.dropped, dbg.ingest.reduced) == (0, 0)
        first_commit = min(moment for moment in commits if moment > promoting)
        assert dbg.ingest.write_failures > failures_at_kill  # it did sit through the outage
        write_failures = dbg.ingest.write_failures
    # Closed: whatever the intake had not acked would be back in the queue.
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        queue = await channel.get_queue(naming.DEBUGGER_EVENTS_QUEUE)
        assert queue.declaration_result.message_count == 0
    finally:
        await connection.close()
    print(
        f"\ndebugger failover: {len(published)} events, all stored, none dropped;"
        f" {write_failures} failed batch writes retried; promote called -> first commit"
        f" {(first_commit - promoting) * 1000:.0f} ms, kill -> all stored"
        f" {recovered - killed:.2f} s (a 1 s outage and the publishing included)"
    )


async def test_a_first_host_that_hangs_costs_one_connect_timeout(
    pair: PostgresPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host that accepts TCP and never answers (a frozen server, a half-dead machine):
    asyncpg's timeout covers all hosts together, so it alone would never reach the next
    one; shared.db gives each host its own."""
    monkeypatch.setattr(db, "CONNECT_TIMEOUT_S", 1.0)
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(8)  # never accepted: the handshake completes, nothing answers
        port = hung.getsockname()[1]
        dsn = (
            f"postgresql://postgres@127.0.0.1:{port},127.0.0.1:{pair.primary_port}"
            "/postgres?target_session_attrs=read-write"
        )
        with pytest.raises(TimeoutError):
            await asyncpg.connect(dsn, timeout=1.5)
        started = time.monotonic()
        conn = await db.connect(dsn)
        took = time.monotonic() - started
        assert await conn.fetchval("SELECT inet_server_port()") == pair.primary_port
        await conn.close()
    assert 1.0 <= took < 2.5
    print(f"\nhung first host: connected to the second after {took:.2f} s")


async def _at_least(value: int, floor: int) -> bool:
    return value >= floor


async def _truthy(value: object) -> bool:
    return bool(value)

"""Debugger figures: `python -m bench.debugger [--rows 1000000] [--events 20000]
[--items 1,10,50] [--ingest-only | --listing-only]`.

1. Ingest rate: with the debugger stopped, `--events` RunFinished records are queued,
   `--items` of them to a message (1: one message per record, the worst case and what
   an idle runner sends; 10 and 50: `RunsFinished` batches as the runner's group
   commit sends them under load); the debugger is started and timed until every one
   is stored.
   Reported per setting: `records_per_s` over the steady window (from the first
   stored row to the last, so the process's start-up is not counted),
   `records_per_s_incl_start` (from launching the process), and the debugger
   process's CPU per record over the steady window (`cpu_ms_per_record`, 1.0 = one
   core-millisecond) and its PostgreSQL backends' (`postgres_cpu_ms_per_record`; the
   WAL writer, the checkpointer and RabbitMQ are not counted).
2. Listing latency at scale: `--rows` requests are COPYed into the table (one hot flow
   with a fifth of them, the rest spread over 500 flows), then the listing query the
   API runs is timed: the first page, and a page deep in the hot flow via the cursor.
3. Search at the same scale (`?match=`, jsonb containment on the input, GIN index
   `jsonb_path_ops`): each row's input holds a customer id, 100 distinct ones spread
   evenly, so `{"customer": {"id": k}}` matches 1 % of the hot flow's rows (and 1 % of
   the table); the first page of 50 is timed for k = 0..99 in turn (`search_1pct`),
   and a match that only one row of the table holds (`search_one_row`).
"""

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from harness.infra import fresh_database, fresh_vhost
from harness.system import System
from services.debugger.store import COLUMNS, RequestStore
from shared.messaging import naming
from shared.messaging.connection import Broker
from shared.schemas.runs import RunFinished, RunResult, RunsFinished, WebhookRequest
from shared.schemas.vocabulary import Outcome, RunMode

WORKSPACE = str(uuid.uuid4())


def finished(flow_id: str, n: int) -> RunFinished:
    now = datetime.now(UTC)
    request = WebhookRequest(
        request_id=uuid.uuid4().hex,
        flow_id=flow_id,
        workspace_id=WORKSPACE,
        received_at=now,
        method="POST",
        path=f"/v1/flow-webhook/{flow_id}",
        query={},
        headers={"content-type": "application/json", "user-agent": "bench"},
        content_type="application/json",
        raw_body=f'{{"n": {n}}}',
        input={"n": n},
    )
    result = RunResult(
        request_id=request.request_id,
        outcome=Outcome.SUCCEEDED,
        status_code=200,
        content_type="application/json",
        body='{"ok": true}',
        started_at=now,
        finished_at=now,
    )
    return RunFinished(request=request, result=result)


def event(flow_id: str, n: int, items: int = 1) -> bytes:
    """One `run.finished` message of `items` records, numbered from `n`."""
    records = [finished(flow_id, n + i) for i in range(items)]
    return RunsFinished(items=records).model_dump_json().encode()


async def queue_events(amqp_url: str, count: int, flow_id: str, items: int = 1) -> None:
    broker = Broker(amqp_url, "bench")
    await broker.connect()
    try:
        bodies = [event(flow_id, n, min(items, count - n)) for n in range(0, count, items)]
        for start in range(0, len(bodies), 500):
            await asyncio.gather(
                *(
                    broker.publish(body, routing_key=naming.RUN_FINISHED, to_events=True)
                    for body in bodies[start : start + 500]
                )
            )
    finally:
        await broker.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def backends_cpu_seconds(conn: asyncpg.Connection) -> float:
    """CPU time so far of the PostgreSQL backends of this database (the debugger's
    connections), but for `conn`'s own."""
    pids = await conn.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        " AND pid <> pg_backend_pid()"
    )
    total = 0.0
    for row in pids:
        with contextlib.suppress(OSError):
            total += cpu_seconds(row["pid"])
    return total


async def watch_ingest(database_url: str, events: int, pid: int) -> dict[str, float]:
    """Poll the row count until `events` rows are stored: when the first and the last
    showed up, and the CPU time in between of the debugger and of its PostgreSQL
    backends."""
    conn = await asyncpg.connect(database_url)
    try:
        first: tuple[float, int, float, float] | None = None
        while True:
            count = int(await conn.fetchval("SELECT count(*) FROM debugger.requests"))
            now = time.monotonic()
            if count and first is None:
                first = (now, count, cpu_seconds(pid), await backends_cpu_seconds(conn))
            if count >= events:
                assert first is not None
                return {
                    "first_at": first[0],
                    "first_count": first[1],
                    "last_at": now,
                    "cpu_s": cpu_seconds(pid) - first[2],
                    "postgres_cpu_s": await backends_cpu_seconds(conn) - first[3],
                }
            await asyncio.sleep(0.01)
    finally:
        await conn.close()


def ingest_rate(events: int, items: int = 1) -> dict[str, float]:
    with fresh_vhost() as amqp_url, fresh_database() as database_url:
        system = System(amqp_url, database_url, extra_env={"FLOWHOOKS_LOG_LEVEL": "warning"})
        try:
            first = system.start("debugger")  # migrates and declares the queue
            system.stop(first)
            asyncio.run(queue_events(amqp_url, events, str(uuid.uuid4()), items))
            started = time.monotonic()
            debugger = system.start("debugger")
            seen = asyncio.run(watch_ingest(database_url, events, debugger.process.pid))
        finally:
            system.stop_all()
    steady_records = events - seen["first_count"]
    steady_s = max(seen["last_at"] - seen["first_at"], 1e-3)
    return {
        "events": events,
        "items_per_message": items,
        "seconds": round(seen["last_at"] - started, 2),
        "records_per_s": round(steady_records / steady_s, 1),
        "records_per_s_incl_start": round(events / (seen["last_at"] - started), 1),
        "cpu_ms_per_record": round(1000 * seen["cpu_s"] / max(steady_records, 1), 4),
        "postgres_cpu_ms_per_record": round(
            1000 * seen["postgres_cpu_s"] / max(steady_records, 1), 4
        ),
    }


async def fill_and_list(database_url: str, rows: int) -> dict[str, object]:
    from services.debugger.app import DATABASE
    from shared.db import migrate

    await migrate(database_url, DATABASE.schema, DATABASE.migrations)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    assert pool is not None
    hot = uuid.uuid4()
    others = [uuid.uuid4() for _ in range(500)]
    base = datetime.now(UTC) - timedelta(days=20)
    began = time.monotonic()
    async with pool.acquire() as conn:
        batch = 50_000
        for offset in range(0, rows, batch):
            records = []
            for i in range(offset, min(rows, offset + batch)):
                flow = hot if i % 5 == 0 else others[i % 500]
                at = base + timedelta(milliseconds=i * 1.7)
                records.append(
                    (
                        uuid.uuid4().hex,
                        flow,
                        uuid.UUID(WORKSPACE),
                        at,
                        "POST",
                        "/v1/x",
                        "{}",
                        '{"content-type": "application/json"}',
                        "application/json",
                        f'{{"n": {i}}}',
                        False,
                        # Consecutive rows of the hot flow (every fifth row) cycle
                        # through 100 customer ids: each id is 1 % of the flow.
                        f'{{"n": {i}, "customer": {{"id": {(i // 5) % 100}}}}}',
                        RunMode.SYNC,
                        Outcome.SUCCEEDED,
                        200,
                        "application/json",
                        '{"ok": true}',
                        None,
                        "[]",
                        at,
                        at + timedelta(milliseconds=3),
                        2,
                    )
                )
            await conn.copy_records_to_table(
                "requests",
                schema_name="debugger",
                records=records,
                # Up to source_rank: replay_of and truncated are left NULL.
                columns=COLUMNS[: COLUMNS.index("source_rank") + 1],
            )
        await conn.execute("ANALYZE debugger.requests")
    fill_s = time.monotonic() - began
    store = RequestStore(pool)

    async def timed(queries: list[dict[str, Any]], found: int | None = None) -> list[float]:
        """Milliseconds of each listing of `hot` with the given filters (and, where
        `found` is given, the check that it found that many rows)."""
        samples = []
        for query in queries:
            filters: dict[str, Any] = {"before": None, "outcome": None, "mode": None}
            t0 = time.perf_counter()
            page = await store.list_for_flow(
                hot, WORKSPACE, limit=50, since=None, until=None, **{**filters, **query}
            )
            samples.append((time.perf_counter() - t0) * 1000)
            assert found is None or len(page) == found, len(page)
        samples.sort()
        return samples

    first = await timed([{}] * 50)
    deep_rows = await store.list_for_flow(
        hot,
        WORKSPACE,
        limit=1,
        before=None,
        outcome=None,
        mode=None,
        since=base + timedelta(days=1),
        until=base + timedelta(days=1, seconds=1),
    )
    cursor = (deep_rows[0]["received_at"], deep_rows[0]["id"]) if deep_rows else None
    deep = await timed([{"before": cursor}] * 50)
    filtered = await timed([{"outcome": Outcome.FAILED}] * 50)
    search = await timed(
        [{"input_match": json.dumps({"customer": {"id": k % 100}})} for k in range(200)], 50
    )
    # Rows of the hot flow are those with n % 5 == 0, spread over the whole range.
    one_row = await timed(
        [{"input_match": json.dumps({"n": (k * rows // 50) // 5 * 5})} for k in range(50)], 1
    )
    await pool.close()

    def summary(samples: list[float]) -> dict[str, float]:
        return {
            "p50_ms": round(statistics.median(samples), 2),
            "p99_ms": round(samples[int(len(samples) * 0.99) - 1], 2),
        }

    return {
        "rows": rows,
        "fill_s": round(fill_s, 1),
        "first_page": summary(first),
        "deep_page": summary(deep),
        "outcome_filter_no_match": summary(filtered),
        "search_1pct": summary(search),
        "search_one_row": summary(one_row),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument(
        "--items",
        default="1,10,50",
        help="records per message, one ingest run for each (comma-separated)",
    )
    parser.add_argument("--ingest-only", action="store_true", help="skip the listing figures")
    parser.add_argument(
        "--listing-only", action="store_true", help="skip the ingest rate (listing and search)"
    )
    args = parser.parse_args()
    results: dict[str, object] = {}
    if not args.listing_only:
        results["ingest"] = [ingest_rate(args.events, int(i)) for i in args.items.split(",")]
        print(json.dumps(results), flush=True)
    if not args.ingest_only:
        with fresh_database() as database_url:
            results["listing"] = asyncio.run(fill_and_list(database_url, args.rows))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

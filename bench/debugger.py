"""Debugger figures: `python -m bench.debugger [--rows 1000000] [--events 20000]`.

1. Ingest rate: with the debugger stopped, `--events` RunFinished events are queued;
   the debugger is started and timed until every one is stored (records a second).
2. Listing latency at scale: `--rows` requests are COPYed into the table (one hot flow
   with a fifth of them, the rest spread over 500 flows), then the listing query the
   API runs is timed: the first page, and a page deep in the hot flow via the cursor.
"""

import argparse
import asyncio
import json
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg

from services.debugger.store import COLUMNS, RequestStore
from shared.messaging import naming
from shared.messaging.connection import Broker
from shared.schemas.runs import RunFinished, RunResult, RunsFinished, WebhookRequest
from tests.e2e.system import System
from tests.infra import fresh_database, fresh_vhost

WORKSPACE = str(uuid.uuid4())


def event(flow_id: str, n: int) -> bytes:
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
        outcome="succeeded",
        status_code=200,
        content_type="application/json",
        body='{"ok": true}',
        started_at=now,
        finished_at=now,
    )
    return (
        RunsFinished(items=[RunFinished(request=request, result=result)]).model_dump_json().encode()
    )


async def queue_events(amqp_url: str, count: int, flow_id: str) -> None:
    broker = Broker(amqp_url, "bench")
    await broker.connect()
    try:
        for start in range(0, count, 500):
            await asyncio.gather(
                *(
                    broker.publish(
                        event(flow_id, n), routing_key=naming.RUN_FINISHED, to_events=True
                    )
                    for n in range(start, min(count, start + 500))
                )
            )
    finally:
        await broker.close()


async def count_rows(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM debugger.requests"))
    finally:
        await conn.close()


def ingest_rate(events: int) -> dict[str, float]:
    with fresh_vhost() as amqp_url, fresh_database() as database_url:
        system = System(amqp_url, database_url, extra_env={"FLOWHOOKS_LOG_LEVEL": "warning"})
        try:
            first = system.start("debugger")  # migrates and declares the queue
            system.stop(first)
            asyncio.run(queue_events(amqp_url, events, str(uuid.uuid4())))
            started = time.monotonic()
            system.start("debugger")
            while asyncio.run(count_rows(database_url)) < events:
                time.sleep(0.1)
            elapsed = time.monotonic() - started
        finally:
            system.stop_all()
    return {
        "events": events,
        "seconds": round(elapsed, 2),
        "records_per_s": round(events / elapsed, 1),
    }


async def fill_and_list(database_url: str, rows: int) -> dict[str, object]:
    from services.debugger.app import MIGRATIONS, SCHEMA
    from shared.db import migrate

    await migrate(database_url, SCHEMA, MIGRATIONS)
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
                        f'{{"n": {i}}}',
                        "sync",
                        "succeeded",
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
                columns=COLUMNS[:-1],  # all but replay_of
            )
        await conn.execute("ANALYZE debugger.requests")
    fill_s = time.monotonic() - began
    store = RequestStore(pool)

    async def timed(**kwargs: object) -> list[float]:
        samples = []
        for _ in range(50):
            t0 = time.perf_counter()
            await store.list_for_flow(
                hot, WORKSPACE, limit=50, outcome=None, mode=None, since=None, until=None, **kwargs
            )  # type: ignore[arg-type]
            samples.append((time.perf_counter() - t0) * 1000)
        samples.sort()
        return samples

    first = await timed(before=None)
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
    deep = await timed(before=cursor)
    filtered = []
    for _ in range(50):
        t0 = time.perf_counter()
        await store.list_for_flow(
            hot,
            WORKSPACE,
            limit=50,
            before=None,
            outcome="failed",
            mode=None,
            since=None,
            until=None,
        )
        filtered.append((time.perf_counter() - t0) * 1000)
    filtered.sort()
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
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=20_000)
    args = parser.parse_args()
    results: dict[str, object] = {"ingest": ingest_rate(args.events)}
    print(json.dumps(results), flush=True)
    with fresh_database() as database_url:
        results["listing"] = asyncio.run(fill_and_list(database_url, args.rows))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

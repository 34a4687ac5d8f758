"""Debugger figures: `python -m bench.debugger [--rows 1000000] [--events 20000]
[--items 1,10,50] [--scenario sync,async,async-apart] [--sql STATEMENT ...]
[--env NAME=VALUE ...] [--ingest-only | --listing-only]`,
`python -m bench.debugger --live SECONDS`, and
`python -m bench.debugger --partitions [--records 20000000] [--days 14]`.

1. Ingest rate: the debugger is started (idle), then `--events` requests' events are
   published to it, `--items` requests to a message, and timed until every request
   has its outcome. `--scenario`: `sync` (`run.finished` only), `async`
   (`request.queued`, `run.started`, `run.finished`, a message of each in turn per
   group of requests: a request's events mostly in one batch), `async-no-started`
   (no `run.started`); `-apart` after a name: each kind of event for every request
   before the next kind (each event in a batch of its own: one row version per
   event). `--sql`: a variant of the schema (run after the migrations; one ingest
   run for each, beside none), e.g. an index dropped. Reported per run:
   `requests_per_s`, the debugger process's CPU per request (`cpu_ms_per_request`,
   1.0 = one core-millisecond) and its PostgreSQL backends'
   (`postgres_cpu_ms_per_request`; the WAL writer, the checkpointer and RabbitMQ
   are not counted), and the row versions written per request (PostgreSQL's
   statistics: inserts, updates, HOT updates).
2. Listing latency at scale: `--rows` requests are COPYed into the table (one hot flow
   with a fifth of them, the rest spread over 500 flows), then the listing query the
   API runs is timed: the first page, and a page deep in the hot flow via the cursor.
3. Search at the same scale (`?match=`, jsonb containment on the input, GIN index
   `jsonb_path_ops`): each row's input holds a customer id, 100 distinct ones spread
   evenly, so `{"customer": {"id": k}}` matches 1 % of the hot flow's rows (and 1 % of
   the table); the first page of 50 is timed for k = 0..99 in turn (`search_1pct`),
   and a match that only one row of the table holds (`search_one_row`).
4. `--partitions` (issue 28): the time-partitioned table (migration 016, one partition a
   day) against today's unpartitioned one, the same `--records` over `--days` of
   simulated time COPYed into both in the same run (one hot flow with a fifth of the
   rows, the rest over 500 flows), then on each: the intake's statement (COPY to the
   staging table + upsert) for 20,000 more records, the listing's first page and a
   search (1 % match) in a recent (1 day) and a 7-day window, a page deep in the
   7-day window by cursor, lookups by id, and retention of the oldest day: `DROP` of
   its partition vs the batched `DELETE` of today's retention (time, WAL bytes, table
   and index size after; the DELETE's space only comes back after a VACUUM, timed too).
5. `--live SECONDS`: the whole system under the closed loop (bench.budget's load, sync
   then async, each after 3 s unmeasured): the debugger's and its PostgreSQL backends'
   CPU per request, the items per message of every hop, the row versions written per
   stored request and the database's commits per request.
6. `--write-cost ROUNDS`: the intake's write alone (`RequestStore.write`, in this
   process, no broker): the debugger's and PostgreSQL's CPU per write and per row at
   1, 15 and 100 rows a write, inserts (a new request) and updates (its outcome after
   its queued row); the schema variants of `VARIANTS` (indexes dropped, json instead of
   jsonb) at 50 rows a write; rows with a few-kilobyte step trace compressed with pglz
   and with lz4.
"""

import argparse
import asyncio
import contextlib
import json
import os
import re
import statistics
import time
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from harness.infra import fresh_database, fresh_vhost
from harness.system import System
from services.debugger.records import RANK_OUTCOME
from services.debugger.store import COLUMNS, RequestRow, RequestStore
from shared.messaging import naming
from shared.messaging.connection import Broker
from shared.request_ids import new_request_id
from shared.schemas.runs import (
    RunFinished,
    RunProgress,
    RunResult,
    RunsFinished,
    RunsProgressed,
    StepTrace,
    WebhookRequest,
)
from shared.schemas.vocabulary import Outcome, RunMode

WORKSPACE = str(uuid.uuid4())


# What the bench's own flow makes of a request (bench/__main__.py): the load
# generator's headers, a small JSON body, one template step, a small JSON answer.
HEADERS = {
    "host": "127.0.0.1:8080",
    "user-agent": "Python/3.11 aiohttp/3.9.5",
    "accept": "*/*",
    "accept-encoding": "gzip, deflate",
    "content-length": "62",
    "content-type": "application/json",
}


def webhook_request(flow_id: str, n: int, mode: RunMode, at: datetime) -> WebhookRequest:
    body = {"kind": "myResult", "company_id": 123456, "user_id": 789123 + n}
    return WebhookRequest(
        request_id=new_request_id(at),
        flow_id=flow_id,
        workspace_id=WORKSPACE,
        received_at=at,
        method="POST",
        path=f"/v1/flow-webhook/{flow_id}",
        query={},
        headers=HEADERS,
        content_type="application/json",
        raw_body=json.dumps(body),
        input=body,
        mode=mode,
    )


def finished(request: WebhookRequest) -> RunFinished:
    at = request.received_at
    step = StepTrace(
        ref_id="res1",
        type="template",
        input={"template": "{{ web1.kind }}"},
        output={"value": "myResult"},
        started_at=at,
        duration_ms=0.05,
    )
    result = RunResult(
        request_id=request.request_id,
        outcome=Outcome.SUCCEEDED,
        status_code=200,
        content_type="application/json",
        body='{"valid": "myResult"}',
        steps=[step],
        started_at=at,
        finished_at=at,
    )
    return RunFinished(request=request, result=result)


# The events of one request, by scenario (the routing keys in the order they are sent).
SCENARIOS = {
    # A sync request: its outcome only.
    "sync": (naming.RUN_FINISHED,),
    # An async request: queued (ingress), started and finished (runner).
    "async": (naming.REQUEST_QUEUED, naming.RUN_STARTED, naming.RUN_FINISHED),
    # An async request whose run finished before `run.started` was sent (or without it).
    "async-no-started": (naming.REQUEST_QUEUED, naming.RUN_FINISHED),
}
# "<scenario>-apart": every request's first event, then every second, ... (each event
# in a batch of its own: one write per event); else a message of each event in turn
# per group of requests (a request's events in one batch but at a batch's edge).
APART = "-apart"


def event_body(routing_key: str, requests: list[WebhookRequest]) -> bytes:
    if routing_key == naming.RUN_FINISHED:
        return RunsFinished(items=[finished(r) for r in requests]).model_dump_json().encode()
    return (
        RunsProgressed(items=[RunProgress(request=r, at=r.received_at) for r in requests])
        .model_dump_json()
        .encode()
    )


def messages(count: int, flow_id: str, items: int, scenario: str) -> list[tuple[str, bytes]]:
    """(routing key, body) of every message, in the order they are published, `items`
    requests to a message (see SCENARIOS and APART)."""
    apart = scenario.endswith(APART)
    scenario = scenario.removesuffix(APART)
    mode = RunMode.SYNC if scenario == "sync" else RunMode.ASYNC
    now = datetime.now(UTC)
    requests = [webhook_request(flow_id, n, mode, now) for n in range(count)]
    groups = [requests[n : n + items] for n in range(0, count, items)]
    keys = SCENARIOS[scenario]
    if apart:
        return [(key, event_body(key, group)) for key in keys for group in groups]
    return [(key, event_body(key, group)) for group in groups for key in keys]


async def queue_events(amqp_url: str, bodies: list[tuple[str, bytes]]) -> None:
    broker = Broker(amqp_url, "bench")
    await broker.connect()
    try:
        for start in range(0, len(bodies), 500):
            await asyncio.gather(
                *(
                    broker.publish(body, routing_key=key, to_events=True)
                    for key, body in bodies[start : start + 500]
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


# Row versions written to the requests' tables (all partitions), from PostgreSQL's
# statistics: inserts, updates, and the updates that were HOT (no index touched).
WRITES = (
    "SELECT coalesce(sum(n_tup_ins), 0) AS inserts, coalesce(sum(n_tup_upd), 0) AS updates,"
    " coalesce(sum(n_tup_hot_upd), 0) AS hot_updates FROM pg_stat_user_tables"
    " WHERE schemaname = 'debugger' AND relname LIKE 'requests%'"
)
DONE = f"SELECT count(*) FROM debugger.requests WHERE source_rank = {RANK_OUTCOME}"


async def publish_and_watch(
    amqp_url: str, database_url: str, bodies: list[tuple[str, bytes]], events: int, pid: int
) -> dict[str, float]:
    """Publish the messages to the running (idle) debugger and poll the count of
    requests with their outcome until `events` are: how long from the first publish,
    and the CPU time meanwhile of the debugger and of its PostgreSQL backends."""
    conn = await asyncpg.connect(database_url)
    try:
        cpu, postgres_cpu = cpu_seconds(pid), await backends_cpu_seconds(conn)
        began = time.monotonic()
        publishing = asyncio.create_task(queue_events(amqp_url, bodies))
        while True:
            if int(await conn.fetchval(DONE)) >= events:
                break
            await asyncio.sleep(0.05)
        took = time.monotonic() - began
        await publishing
        return {
            "seconds": took,
            "cpu_s": cpu_seconds(pid) - cpu,
            "postgres_cpu_s": await backends_cpu_seconds(conn) - postgres_cpu,
        }
    finally:
        await conn.close()


async def row_writes(database_url: str) -> dict[str, int]:
    conn = await asyncpg.connect(database_url)
    try:
        # The backends' counts reach the statistics when they are flushed (at most
        # once a second, and when a backend exits: the debugger has stopped).
        await asyncio.sleep(1.5)
        return {kind: int(count) for kind, count in (await conn.fetchrow(WRITES)).items()}
    finally:
        await conn.close()


async def alter_schema(database_url: str, statements: list[str]) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def ingest_rate(
    events: int,
    items: int = 1,
    scenario: str = "sync",
    sql: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, object]:
    """`events` requests of `scenario`, `items` to a message; `sql` run on the migrated
    schema first (a variant: an index dropped, ...), `env` for the debugger."""
    with fresh_vhost() as amqp_url, fresh_database() as database_url:
        system = System(
            amqp_url, database_url, extra_env={"FLOWHOOKS_LOG_LEVEL": "warning", **(env or {})}
        )
        try:
            first = system.start("debugger")  # migrates and declares the queue
            system.stop(first)
            asyncio.run(alter_schema(database_url, sql or []))
            bodies = messages(events, str(uuid.uuid4()), items, scenario)
            debugger = system.start("debugger")
            seen = asyncio.run(
                publish_and_watch(amqp_url, database_url, bodies, events, debugger.process.pid)
            )
        finally:
            system.stop_all()
        writes = asyncio.run(row_writes(database_url))
    return {
        "scenario": scenario,
        "variant": "; ".join(sql or []) or "as migrated",
        "env": env or {},
        "events": events,
        "items_per_message": items,
        "seconds": round(seen["seconds"], 2),
        "requests_per_s": round(events / seen["seconds"], 1),
        "cpu_ms_per_request": round(1000 * seen["cpu_s"] / events, 4),
        "postgres_cpu_ms_per_request": round(1000 * seen["postgres_cpu_s"] / events, 4),
        "row_writes_per_request": {
            kind: round(count / events, 2) for kind, count in writes.items()
        },
    }


async def writes_when_done(database_url: str, flow_id: str, count: int) -> dict[str, int]:
    """Once every request of the flow has its outcome (at least `count` of them): the
    row versions written to the requests' tables so far, and the requests stored."""
    conn = await asyncpg.connect(database_url)
    try:
        deadline = time.monotonic() + 120
        stored = 0
        while time.monotonic() < deadline:
            stored, pending = await conn.fetchrow(
                "SELECT count(*), count(*) FILTER (WHERE source_rank < $2)"
                " FROM debugger.requests WHERE flow_id = $1::uuid",
                flow_id,
                RANK_OUTCOME,
            )
            if stored >= count and not pending:
                break
            await asyncio.sleep(0.2)
        # A backend's statistics reach the view within a second while it is busy, in
        # up to 10 s once idle: until they show every stored row, and stop moving.
        total = await conn.fetchval("SELECT count(*) FROM debugger.requests")
        writes, previous = await conn.fetchrow(WRITES), None
        while writes != previous or writes["inserts"] < total:
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(1)
            previous, writes = writes, await conn.fetchrow(WRITES)
        # Transactions of the whole database: the debugger's writes, its other work
        # (alerts, partitions), the runner's, this poll's (5 a second).
        commits = await conn.fetchval(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        )
        return {
            "requests": int(stored),
            "commits": int(commits),
            **{kind: int(n) for kind, n in writes.items()},
        }
    finally:
        await conn.close()


_WRITE_COUNTER = re.compile(r"^flowhooks_debugger_(rows_stored|writes)(?:_total)? ([0-9.e+]+)$")


def write_counts(system: System) -> dict[str, float]:
    """Rows stored and writes so far by the debugger (its `/metrics`)."""
    counts = {"rows_stored": 0.0, "writes": 0.0}
    for service in system.processes.get("debugger", []):
        # A loopback http URL of our own (harness/system.py).
        with urllib.request.urlopen(f"{service.ops_url}/metrics", timeout=10) as answer:  # noqa: S310
            for line in answer.read().decode().splitlines():
                found = _WRITE_COUNTER.match(line)
                if found:
                    counts[found[1]] += float(found[2])
    return counts


def live(seconds: float, concurrency: int, env: dict[str, str]) -> dict[str, object]:
    """The whole system under the closed loop (bench.budget's load: the bench flow, sync
    then async, each after unmeasured load): the debugger's and its PostgreSQL
    backends' CPU per request, the items per message of the debugger's events, and
    the row versions written per stored request (PostgreSQL's statistics: inserts,
    updates, of which HOT)."""
    from bench.measure import SMALL_JSON, api_setup, loadgen, system_bench

    results: dict[str, object] = {"env": env}
    with system_bench(seconds, concurrency, env=env) as (bench, database_url):
        system = bench.system
        flows = asyncio.run(api_setup(system, system.create_token("bench", "automation")))
        ingress = system.url("ingress")
        before = {"inserts": 0, "updates": 0, "hot_updates": 0, "requests": 0, "commits": 0}
        for scenario in ("sync", "async"):
            load = {
                "url": f"{ingress}/v1/flow-webhook/{flows[scenario]}",
                "headers": {"Authorization": f"Bearer {flows[scenario + '_token']}"},
                "body": SMALL_JSON,
            }
            loadgen({**load, "seconds": 3, "concurrency": concurrency})
            counted = write_counts(system)
            measured = bench.measure(scenario, load)
            written = write_counts(system)
            after = asyncio.run(writes_when_done(database_url, flows[scenario], 1))
            requests = max(1, after["requests"])  # the scenario's own flow
            results[scenario] = {
                "rps": measured["rps"],
                "cpu_ms_per_request": {
                    hop: measured["cpu_ms_per_request"].get(hop)
                    for hop in ("debugger", "postgresql")
                },
                "items_per_message": measured["items_per_message"],
                # Over the warm-up and the measured load: every stored request.
                "row_writes_per_request": {
                    kind: round((after[kind] - before[kind]) / requests, 3)
                    for kind in ("inserts", "updates", "hot_updates")
                },
                # The debugger's writes during the measured load.
                "rows_per_write": round(
                    (written["rows_stored"] - counted["rows_stored"])
                    / max(1.0, written["writes"] - counted["writes"]),
                    1,
                ),
                "database_commits_per_request": round(
                    (after["commits"] - before["commits"]) / requests, 3
                ),
            }
            before = after
    return results


# Schema variants for `--write-cost` (each beside the schema as migrated): what each
# index and the row's shape cost a row version.
VARIANTS = {
    "no GIN index on input (search)": ["DROP INDEX debugger.requests_input_search"],
    "no received_at index": ["DROP INDEX debugger.requests_received_at"],
    "no outcome index": ["DROP INDEX debugger.requests_flow_outcome"],
    "steps and headers json, not jsonb": [
        "ALTER TABLE debugger.requests ALTER COLUMN steps TYPE json, ALTER COLUMN headers TYPE json"
    ],
}


async def backend_pids(pool: asyncpg.Pool) -> list[int]:
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        )
    return [row["pid"] for row in rows]


async def timed_writes(
    store: RequestStore, pids: list[int], batches: list[list[Any]]
) -> tuple[float, float]:
    """The debugger's (this process's) and the backends' CPU seconds for the writes."""
    client, backends = time.process_time(), sum(cpu_seconds(pid) for pid in pids)
    for rows in batches:
        await store.write(rows)
    return time.process_time() - client, sum(cpu_seconds(pid) for pid in pids) - backends


def request_rows(flow_id: str, count: int, scenario: str) -> dict[str, list[Any]]:
    """The rows the intake writes for `count` requests of `scenario`, by event."""
    from services.debugger.records import Redaction, rows_from_event

    made: dict[str, list[Any]] = {}
    for key, body in messages(count, flow_id, count, scenario):
        made.setdefault(key, []).extend(rows_from_event(key, body, Redaction(), {}))
    return made


async def write_cost(url: str, sql: list[str], sizes: tuple[int, ...]) -> dict[str, object]:
    """In this process, against `url` (migrated, then `sql`): the intake's write alone
    (store.RequestStore.write), per batch size: new rows (`insert`, a sync request or
    an async one's queued row), then the same requests' outcomes (`update`)."""
    from services.debugger.app import DATABASE
    from shared.db import open_pool

    pool = await open_pool(url, 2, DATABASE.schema, DATABASE.migrations)
    try:
        async with pool.acquire() as conn:
            for statement in sql:
                await conn.execute(statement)
        store = RequestStore(pool)
        flow = str(uuid.uuid4())
        warm = request_rows(flow, 10, "async")
        await store.write(warm[naming.REQUEST_QUEUED])
        await store.write(warm[naming.RUN_FINISHED])
        pids = await backend_pids(pool)
        figures: dict[str, object] = {}
        for size in sizes:
            count = max(10 * size, 2000 // size * size)
            made = request_rows(flow, count, "async")
            for kind, key in (("insert", naming.REQUEST_QUEUED), ("update", naming.RUN_FINISHED)):
                rows = made[key]
                batches = [rows[n : n + size] for n in range(0, count, size)]
                client, backends = await timed_writes(store, pids, batches)
                figures[f"{size} rows a write, {kind}"] = {
                    "debugger_ms_per_write": round(1000 * client / len(batches), 3),
                    "postgres_ms_per_write": round(1000 * backends / len(batches), 3),
                    "debugger_ms_per_row": round(1000 * client / count, 4),
                    "postgres_ms_per_row": round(1000 * backends / count, 4),
                }
        return figures
    finally:
        await pool.close()


async def trace_compression(url: str, method: str, count: int = 2000) -> dict[str, object]:
    """PostgreSQL's CPU per row for rows whose step trace is a few kilobytes (8 http
    steps), compressed with `method` (set on the table and its partitions)."""
    from services.debugger.app import DATABASE
    from services.debugger.records import Redaction, finished_row
    from shared.db import open_pool

    pool = await open_pool(url, 2, DATABASE.schema, DATABASE.migrations)
    try:
        async with pool.acquire() as conn:
            tables = await conn.fetch(
                "SELECT 'debugger.requests'::regclass::text AS t UNION ALL SELECT"
                " inhrelid::regclass::text FROM pg_inherits"
                " WHERE inhparent = 'debugger.requests'::regclass"
            )
            for table in tables:
                await conn.execute(
                    f"ALTER TABLE {table['t']} ALTER COLUMN steps SET COMPRESSION {method}"
                )
        flow = str(uuid.uuid4())
        rows = []
        for n in range(count):
            request = webhook_request(flow, n, RunMode.SYNC, datetime.now(UTC))
            steps = [
                StepTrace(
                    ref_id=f"s{i}",
                    type="http",
                    input={"url": f"https://example.com/api/{i}/{n}"},
                    output={
                        "status": 200,
                        "body": {
                            "items": [{"id": k, "name": f"item {k} of {n}"} for k in range(12)]
                        },
                    },
                    started_at=request.received_at,
                    duration_ms=1.5,
                )
                for i in range(8)
            ]
            outcome = finished(request)
            outcome.result.steps = steps
            rows.append(finished_row(outcome, Redaction()))
        store = RequestStore(pool)
        await store.write(rows[:50])
        pids = await backend_pids(pool)
        _, backends = await timed_writes(
            store, pids, [rows[n : n + 50] for n in range(50, count, 50)]
        )
        async with pool.acquire() as conn:
            stored = await conn.fetchrow(
                "SELECT avg(length(steps::text))::int AS text_bytes,"
                " avg(pg_column_size(steps))::int AS stored_bytes,"
                " min(pg_column_compression(steps)) AS method FROM debugger.requests"
            )
        return {
            **dict(stored),
            "postgres_ms_per_row": round(1000 * backends / (count - 50), 4),
        }
    finally:
        await pool.close()


def write_costs(rounds: int) -> dict[str, list[object]]:
    """`--write-cost`: the intake's write alone, in this process (no broker): CPU per
    write and per row at 1, 15 and 100 rows a write; the schema variants (VARIANTS) at
    50 rows a write; a few-kilobyte step trace with pglz and lz4. `rounds` times each,
    interleaved (the machine's load moves)."""
    results: dict[str, list[object]] = {}

    def measured(name: str, figures: object) -> None:
        results.setdefault(name, []).append(figures)
        print(name, json.dumps(figures), flush=True)

    for _ in range(rounds):
        with fresh_database() as url:
            measured("batch sizes", asyncio.run(write_cost(url, [], (1, 15, 100))))
        for name, sql in {"as migrated": [], **VARIANTS}.items():
            with fresh_database() as url:
                measured(f"variant: {name}", asyncio.run(write_cost(url, sql, (50,))))
        for method in ("pglz", "lz4"):
            with fresh_database() as url:
                measured(
                    f"trace compression: {method}", asyncio.run(trace_compression(url, method))
                )
    return results


def stored_row(
    request_id: str,
    flow: uuid.UUID,
    workspace: uuid.UUID,
    at: datetime,
    i: int,
    headers: dict[str, str],
    source_rank: int,
) -> tuple[Any, ...]:
    """The `i`th succeeded sync request of a filled table, as COPY takes it (the
    columns up to `source_rank`); `headers`: beside the content type."""
    return (
        request_id,
        flow,
        workspace,
        at,
        "POST",
        "/v1/x",
        "{}",
        json.dumps({"content-type": "application/json", **headers}),
        "application/json",
        f'{{"n": {i}}}',
        False,
        # Consecutive rows of the hot flow (every fifth row) cycle through 100 customer
        # ids: each id is 1 % of the flow.
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
        source_rank,
    )


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
                    stored_row(uuid.uuid4().hex, flow, uuid.UUID(WORKSPACE), at, i, {}, 2)
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

    async def timed(queries: list[dict[str, Any]], found: list[int] | None = None) -> list[float]:
        """Milliseconds of each listing of `hot` with the given filters (and, where
        `found` is given, the check that each found that many rows)."""
        samples = []
        for index, query in enumerate(queries):
            filters: dict[str, Any] = {"before": None, "outcome": None, "mode": None}
            t0 = time.perf_counter()
            page = await store.list_for_flow(
                hot, WORKSPACE, limit=50, since=None, until=None, **{**filters, **query}
            )
            samples.append((time.perf_counter() - t0) * 1000)
            assert found is None or len(page) == found[index], (len(page), found[index])
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
    # The hot flow's rows cycle through the 100 customers: a page of 50, or all of a
    # customer's rows where there are fewer (under 25,000 rows).
    hot_rows = len(range(0, rows, 5))
    customers = [k % 100 for k in range(200)]
    search = await timed(
        [{"input_match": json.dumps({"customer": {"id": c}})} for c in customers],
        [min(50, len(range(c, hot_rows, 100))) for c in customers],
    )
    # Rows of the hot flow are those with n % 5 == 0, spread over the whole range.
    one_row = await timed(
        [{"input_match": json.dumps({"n": (k * rows // 50) // 5 * 5})} for k in range(50)],
        [1] * 50,
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


async def partitions_vs_today(records: int, days: int) -> dict[str, object]:
    """Section 4 of the module's doc: both schemas, the same rows, the same queries."""
    import shutil
    import tempfile

    from services.debugger import store as store_module
    from services.debugger.app import DATABASE
    from services.debugger.partitions import Partitions, slot_start
    from shared.db import migrate

    now = datetime.now(UTC)
    start = slot_start(now - timedelta(days=days - 1), timedelta(days=1))
    step = (now - start) / records
    hot = uuid.uuid4()
    others = [uuid.uuid4() for _ in range(500)]
    workspace = uuid.UUID(WORKSPACE)

    sampled: list[str] = []  # ids looked up afterwards: 200 spread over the days
    every = max(1, records // 200)

    def rows(first: int, count: int) -> list[tuple[Any, ...]]:
        made = []
        for i in range(first, first + count):
            at = start + step * i
            request_id = new_request_id(at)
            if i % every == 0 and i < records:
                sampled.append(request_id)
            flow = hot if i % 5 == 0 else others[i % 500]
            made.append(stored_row(request_id, flow, workspace, at, i, {"x-event": "push"}, 3))
        return made

    columns = COLUMNS[: COLUMNS.index("source_rank") + 1]
    results: dict[str, object] = {"records": records, "days": days}
    with contextlib.ExitStack() as stack:
        urls = {
            "partitioned": stack.enter_context(fresh_database()),
            "today": stack.enter_context(fresh_database()),
        }
        before_016 = Path(tempfile.mkdtemp())
        stack.callback(shutil.rmtree, before_016)
        for path in DATABASE.migrations.glob("*.sql"):
            if path.name < "016":
                shutil.copy(path, before_016)
        await migrate(urls["today"], DATABASE.schema, before_016)
        await migrate(urls["partitioned"], DATABASE.schema, DATABASE.migrations)
        pools = {
            name: await asyncpg.create_pool(url, min_size=1, max_size=4)
            for name, url in urls.items()
        }
        parts = Partitions(
            pools["partitioned"],
            interval=timedelta(days=1),
            ahead=timedelta(days=3),
            max_age=timedelta(days=days),
        )
        await parts.ensure(start, now + timedelta(days=3))
        # The same rows into both, a batch at a time, each schema timed on its own.
        fill_s = {name: 0.0 for name in pools}
        batch = 50_000
        for first in range(0, records, batch):
            made = rows(first, min(batch, records - first))
            for name, pool in pools.items():
                t0 = time.perf_counter()
                async with pool.acquire() as conn:
                    await conn.copy_records_to_table(
                        "requests", schema_name="debugger", records=made, columns=columns
                    )
                fill_s[name] += time.perf_counter() - t0
            if first // batch % 20 == 0:
                print(f"filled {first + len(made)} of {records}", flush=True)
        for pool in pools.values():
            await pool.execute("ANALYZE debugger.requests")
        for name, pool in pools.items():
            figures: dict[str, object] = {"copy_records_per_s": round(records / fill_s[name])}
            upsert = store_module.UPSERT
            if name == "today":
                upsert = upsert.replace("ON CONFLICT (id, received_at)", "ON CONFLICT (id)")
            figures["intake_records_per_s"] = await _intake_rate(pool, upsert, rows, records)
            store = RequestStore(pool, partitions=parts if name == "partitioned" else None)
            figures.update(await _queries(store, hot, now, sampled))
            figures["retention_one_day"] = await _retention_day(pool, name, start, parts)
            results[name] = figures
        for pool in pools.values():
            await pool.close()
    return results


async def _intake_rate(
    pool: asyncpg.Pool, upsert: str, rows: Any, records: int, count: int = 20_000
) -> int:
    """Records a second through the intake's write (one statement per batch of 1,000,
    store.UPSERT), for `count` new records of now."""
    # Whole rows, as the intake writes them (the columns after source_rank at their
    # defaults).
    defaults = RequestRow._field_defaults
    rest = [defaults.get(name) for name in COLUMNS[COLUMNS.index("source_rank") + 1 :]]
    made = [(*row, *rest) for row in rows(records, count)]
    t0 = time.perf_counter()
    async with pool.acquire() as conn:
        for offset in range(0, count, 1000):
            await conn.execute(upsert, *zip(*made[offset : offset + 1000], strict=True))
    return round(count / (time.perf_counter() - t0))


async def _queries(
    store: RequestStore, hot: uuid.UUID, now: datetime, ids: list[str]
) -> dict[str, object]:
    def summary(samples: list[float]) -> dict[str, float]:
        samples.sort()
        return {
            "p50_ms": round(statistics.median(samples), 2),
            "p99_ms": round(samples[max(0, int(len(samples) * 0.99) - 1)], 2),
        }

    async def listing(runs: int, **query: Any) -> dict[str, float]:
        samples = []
        for k in range(runs):
            filters: dict[str, Any] = {
                "before": None,
                "outcome": None,
                "mode": None,
                "since": None,
                "until": None,
            }
            given = {key: value(k) if callable(value) else value for key, value in query.items()}
            t0 = time.perf_counter()
            await store.list_for_flow(hot, WORKSPACE, limit=50, **{**filters, **given})
            samples.append((time.perf_counter() - t0) * 1000)
        return summary(samples)

    day, week = now - timedelta(days=1), now - timedelta(days=7)
    deep = await store.list_for_flow(
        hot,
        WORKSPACE,
        limit=1,
        before=None,
        outcome=None,
        mode=None,
        since=now - timedelta(days=6),
        until=now - timedelta(days=6) + timedelta(seconds=60),
    )
    cursor = (deep[0]["received_at"], deep[0]["id"]) if deep else None

    def match(k: int) -> str:
        return json.dumps({"customer": {"id": k % 100}})

    figures: dict[str, object] = {
        "list_recent": await listing(50),
        "list_7d": await listing(50, since=week),
        "list_7d_deep_page": await listing(50, since=week, before=cursor),
        "search_1pct_1d": await listing(50, since=day, input_match=match),
        "search_1pct_7d": await listing(50, since=week, input_match=match),
    }
    samples = []
    for request_id in ids:
        t0 = time.perf_counter()
        found = await store.get(request_id, WORKSPACE)
        samples.append((time.perf_counter() - t0) * 1000)
        assert found is not None
    figures["lookup_by_id"] = summary(samples)
    return figures


async def _retention_day(
    pool: asyncpg.Pool, name: str, start: datetime, parts: Any
) -> dict[str, object]:
    """The oldest day gone: DROP of its partition, or today's batched DELETE."""
    async with pool.acquire() as conn:
        size = (
            "SELECT sum(pg_table_size(c.oid)) AS t, sum(pg_indexes_size(c.oid)) AS i"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'debugger' AND c.relkind = 'r' AND c.relname LIKE 'requests%'"
        )
        before = await conn.fetchrow(size)
        lsn = await conn.fetchval("SELECT pg_current_wal_lsn()")  # an int (asyncpg)
        delete_wal = 0
        t0 = time.perf_counter()
        if name == "partitioned":
            # What Retention runs: the partitions whose whole range is past the age.
            parts.max_age = datetime.now(UTC) - (start + timedelta(days=1))
            dropped = await parts.drop_expired()
            assert len(dropped) == 1, dropped
        else:
            # Today's retention statement, batch by batch; each one's own WAL (EXPLAIN's
            # count: the server is shared, its WAL position moves with others' work).
            while True:
                plan = await conn.fetchval(
                    "EXPLAIN (ANALYZE, WAL, FORMAT JSON) DELETE FROM debugger.requests"
                    " WHERE id IN (SELECT id FROM debugger.requests WHERE received_at < $1"
                    " LIMIT 1000)",
                    start + timedelta(days=1),
                )
                top = json.loads(plan)[0]["Plan"]
                delete_wal += top.get("WAL Bytes", 0)
                if not top.get("WAL Records"):  # nothing left to delete
                    break
        took = time.perf_counter() - t0
        # The DROP: the server's WAL position (others' work included: an upper bound).
        wal = delete_wal or await conn.fetchval("SELECT pg_current_wal_lsn()") - lsn
        after = await conn.fetchrow(size)
        figures: dict[str, object] = {
            "seconds": round(took, 3),
            "wal_bytes": int(wal),
            "table_bytes_before": int(before["t"]),
            "index_bytes_before": int(before["i"]),
            "table_bytes_after": int(after["t"]),
            "index_bytes_after": int(after["i"]),
        }
        if name == "today":
            t0 = time.perf_counter()
            await conn.execute("VACUUM debugger.requests")
            figures["vacuum_seconds"] = round(time.perf_counter() - t0, 3)
            vacuumed = await conn.fetchrow(size)
            figures["table_bytes_after_vacuum"] = int(vacuumed["t"])
            figures["index_bytes_after_vacuum"] = int(vacuumed["i"])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument(
        "--items",
        default="1,10,50",
        help="records per message, one ingest run for each (comma-separated)",
    )
    parser.add_argument(
        "--scenario",
        default="sync",
        help=f"the events of each request, comma-separated: {', '.join(SCENARIOS)}; with"
        f" '{APART}': each kind of event for every request before the next kind (one write"
        " per event instead of one per request)",
    )
    parser.add_argument(
        "--sql",
        action="append",
        default=[],
        help="a variant of the schema: a statement run after the migrations (repeatable:"
        " one ingest run per statement, beside none)",
    )
    parser.add_argument(
        "--env", action="append", default=[], help="NAME=VALUE for the debugger (repeatable)"
    )
    parser.add_argument(
        "--live",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="only the whole system under the closed loop for this long, sync and async:"
        " the debugger's and PostgreSQL's CPU and the row versions written per request",
    )
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument(
        "--write-cost",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="only the intake's write alone (section 6), this many rounds",
    )
    parser.add_argument("--ingest-only", action="store_true", help="skip the listing figures")
    parser.add_argument(
        "--partitions",
        action="store_true",
        help="only the time-partitioned table against today's (section 4)",
    )
    parser.add_argument("--records", type=int, default=20_000_000)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument(
        "--listing-only", action="store_true", help="skip the ingest rate (listing and search)"
    )
    args = parser.parse_args()
    results: dict[str, object] = {}
    if args.write_cost:
        results["write_cost"] = write_costs(args.write_cost)
        print(json.dumps(results, indent=2))
        return
    if args.live:
        env = dict(pair.split("=", 1) for pair in args.env)
        results["live"] = live(args.live, args.concurrency, env)
        print(json.dumps(results, indent=2))
        return
    if args.partitions:
        results["partitions"] = asyncio.run(partitions_vs_today(args.records, args.days))
        print(json.dumps(results, indent=2))
        return
    if not args.listing_only:
        env = dict(pair.split("=", 1) for pair in args.env)
        runs: list[dict[str, object]] = []
        for variant in [[], *([statement] for statement in args.sql)]:
            for scenario in args.scenario.split(","):
                for items in args.items.split(","):
                    runs.append(ingest_rate(args.events, int(items), scenario, variant, env))
                    print(json.dumps(runs[-1]), flush=True)
        results["ingest"] = runs
    if not args.ingest_only:
        with fresh_database() as database_url:
            results["listing"] = asyncio.run(fill_and_list(database_url, args.rows))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

"""The debugger's chart and sparkline statements at scale: `python -m bench.debugger_stats
[--rows 1000000] [--flows 500] [--repeat 5]`.

`--rows` requests are COPYed into a fresh database (migrated as the debugger does), all
of one hot flow and all inside the last 7 days (the worst case for the 7 d chart: every
row is in its window), plus one request an hour over the last day for each of `--flows`
other flows (the flows list's sparklines). Outcomes: 90 % succeeded, 7 % failed, 3 %
timeout; durations spread from 1 to 2,000 ms.

Timed, `--repeat` times each (median and worst, ms), on a pool like the API's:
- `series_1h`, `series_24h`, `series_7d`: `FlowSeries.series` (stats.py), the statement
  behind `GET /v1/flows/{id}/stats/series` and the page's chart;
- `sparklines`: `FlowSeries.sparklines` over the hot flow and the `--flows` others (the
  flows list, `GET /v1/debugger/flows`);
- `baseline_stats_7d`: the existing `GET /v1/flows/{id}/stats?window_s=604800` statements
  (`RequestStore.stats`: counts by outcome and one set of percentiles), over the same rows
  in the same run. Each figure is also given as a ratio to it.
The API runs these under FLOWHOOKS_DEBUGGER_API_STATEMENT_TIMEOUT_MS (3,000 ms by
default): a figure near it means the chart would be refused at that size.
"""

import argparse
import asyncio
import json
import random
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from harness.infra import fresh_database
from services.debugger.stats import WINDOWS, FlowSeries
from services.debugger.store import COLUMNS, RequestStore
from shared.schemas.vocabulary import Outcome, RunMode

WORKSPACE = str(uuid.uuid4())
FILLED = COLUMNS[: COLUMNS.index("source_rank") + 1]


def record(flow: uuid.UUID, at: datetime, rng: random.Random) -> tuple[Any, ...]:
    roll = rng.random()
    outcome = (
        Outcome.SUCCEEDED if roll < 0.9 else Outcome.FAILED if roll < 0.97 else Outcome.TIMEOUT
    )
    duration = timedelta(milliseconds=1 + rng.random() ** 3 * 2000)
    return (
        uuid.uuid4().hex,
        flow,
        uuid.UUID(WORKSPACE),
        at,
        "POST",
        "/v1/x",
        "{}",
        '{"content-type": "application/json"}',
        "application/json",
        "{}",
        False,
        "{}",
        RunMode.SYNC,
        outcome,
        200 if outcome == Outcome.SUCCEEDED else 500,
        "application/json",
        '{"ok": true}',
        None,
        "[]",
        at,
        at + duration,
        3,
    )


async def fill(
    conn: asyncpg.Connection, rows: int, hot: uuid.UUID, others: list[uuid.UUID]
) -> None:
    rng = random.Random(7)
    now = datetime.now(UTC)
    span = timedelta(days=7) - timedelta(minutes=1)
    batch = 50_000
    for offset in range(0, rows, batch):
        records = [
            record(hot, now - span * (i / rows), rng)
            for i in range(offset, min(rows, offset + batch))
        ]
        await conn.copy_records_to_table(
            "requests", schema_name="debugger", records=records, columns=FILLED
        )
    records = [
        record(flow, now - timedelta(hours=h, minutes=rng.random() * 59), rng)
        for flow in others
        for h in range(24)
    ]
    await conn.copy_records_to_table(
        "requests", schema_name="debugger", records=records, columns=FILLED
    )
    await conn.executemany(
        "INSERT INTO debugger.flows (flow_id, workspace_id, version, name, status)"
        " VALUES ($1, $2, 1, $3, 'live')",
        [(flow, uuid.UUID(WORKSPACE), f"flow {i}") for i, flow in enumerate([hot, *others])],
    )
    await conn.execute("ANALYZE debugger.requests")


async def timed(repeat: int, run: Callable[[], Awaitable[object]]) -> list[float]:
    await run()  # warm: the first run also plans and reads from disk
    samples = []
    for _ in range(repeat):
        began = time.perf_counter()
        await run()
        samples.append((time.perf_counter() - began) * 1000)
    return sorted(samples)


async def measure(database_url: str, rows: int, flows: int, repeat: int) -> dict[str, Any]:
    from services.debugger.app import DATABASE
    from shared.db import migrate

    await migrate(database_url, DATABASE.schema, DATABASE.migrations)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    assert pool is not None
    hot = uuid.uuid4()
    others = [uuid.uuid4() for _ in range(flows)]
    began = time.monotonic()
    async with pool.acquire() as conn:
        await fill(conn, rows, hot, others)
    fill_s = time.monotonic() - began
    series = FlowSeries(pool)
    store = RequestStore(pool)
    figures: dict[str, list[float]] = {
        "baseline_stats_7d": await timed(
            repeat, lambda: store.stats(hot, WORKSPACE, WINDOWS["7d"].seconds)
        )
    }
    for name, window in WINDOWS.items():
        figures[f"series_{name}"] = await timed(
            repeat, lambda window=window: series.series(hot, WORKSPACE, window)
        )
    flow_ids = [str(hot), *map(str, others)]
    figures["sparklines"] = await timed(repeat, lambda: series.sparklines(flow_ids, WORKSPACE))
    check = await series.series(hot, WORKSPACE, WINDOWS["7d"])
    await pool.close()
    baseline = statistics.median(figures["baseline_stats_7d"])
    return {
        "rows": rows + flows * 24,
        "hot_flow_rows_in_7d": check["total"],
        "fill_s": round(fill_s, 1),
        **{
            name: {
                "median_ms": round(statistics.median(samples), 1),
                "max_ms": round(samples[-1], 1),
                "vs_baseline": round(statistics.median(samples) / baseline, 2),
            }
            for name, samples in figures.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--flows", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with fresh_database() as database_url:
        result = asyncio.run(measure(database_url, args.rows, args.flows, args.repeat))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""A flow's requests over time, aggregated in PostgreSQL: the page's chart and the
flows list's sparklines (`GET /v1/flows/{flow_id}/stats/series`, `GET
/v1/debugger/flows`, `flowhooks requests stats`).

Bounded whatever the table holds: a window is one of `WINDOWS` (1 h, 24 h, 7 d), each
cut into at most 168 buckets, and every statement reads only the flow's rows inside
the window through the listing index `(flow_id, received_at, ...)`. The statements are
plain reads of `debugger.requests` by flow and time range, so they keep working when
the table is partitioned by time (issue 28): the range prunes partitions.

Counts are exact. Percentiles are exact up to `SAMPLE_ROWS` requests in the window;
past that they are taken over a fixed hash sample of about that many (sorting a
million durations is what would not fit the statement timeout; counting them does).

Durations are `finished_at - received_at` (what the sender waited, or the run took for
an async request), as the totals of `GET /v1/flows/{flow_id}/stats` count them.
"""

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeAlias

import asyncpg

from shared.schemas.vocabulary import FAILED_OUTCOMES


@dataclass(frozen=True)
class Window:
    name: str
    seconds: int
    bucket_s: int

    @property
    def buckets(self) -> int:
        return self.seconds // self.bucket_s


# At most 168 points a chart: enough to see a shape, few enough to send and draw.
WINDOWS = {
    w.name: w
    for w in (
        Window("1h", 3600, 60),
        Window("24h", 86400, 900),
        Window("7d", 7 * 86400, 3600),
    )
}
# The flows list's sparklines: the last 24 h by hour.
SPARKLINE = Window("24h", 86400, 3600)
# Bucket boundaries are whole multiples of the bucket from this origin (UTC).
ORIGIN = datetime(2001, 1, 1, tzinfo=UTC)

_WINDOWED = (
    " FROM debugger.requests WHERE flow_id = $1 AND workspace_id = $2"
    " AND received_at >= $3 AND received_at < $4"
)
_BUCKET = "date_bin(make_interval(secs => $5), received_at, $6)"
# Exact counts per bucket and outcome: a hash aggregate, no sort.
COUNTS = f"SELECT {_BUCKET} AS bucket, outcome, count(*) AS n{_WINDOWED} GROUP BY 1, 2"
# Percentiles per bucket and over the window: the sort is what costs, so past
# `SAMPLE_ROWS` finished requests in the window they are taken over a fixed sample of
# them (ids whose hash falls in 1 of $7 classes; $7 = 1: every row). Counts stay exact.
PERCENTILES = (
    "SELECT GROUPING(bucket) AS level, bucket,"
    " percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY duration_ms) AS p"
    f" FROM (SELECT {_BUCKET} AS bucket,"
    " extract(epoch FROM finished_at - received_at) * 1000 AS duration_ms"
    f"{_WINDOWED} AND finished_at IS NOT NULL AND abs(hashtext(id) % $7) = 0) AS sampled"
    " GROUP BY GROUPING SETS ((bucket), ())"
)
SAMPLE_ROWS = 100_000
# Requests and failures per flow and hour, for up to the page's flows at once.
SPARKLINES = (
    "SELECT flow_id::text AS flow_id, date_bin(make_interval(secs => $5), received_at, $6)"
    " AS bucket, count(*) AS n, count(*) FILTER (WHERE outcome = ANY($7::text[])) AS failures"
    " FROM debugger.requests WHERE flow_id = ANY($1::uuid[]) AND workspace_id = $2"
    " AND received_at >= $3 AND received_at < $4 GROUP BY 1, 2"
)


def bounds(window: Window, now: datetime) -> tuple[datetime, datetime]:
    """The window's [since, until): ending with the bucket `now` is in, so the last
    bucket is the current (partial) one and every bucket is whole-aligned."""
    step = timedelta(seconds=window.bucket_s)
    until = ORIGIN + ((now - ORIGIN) // step + 1) * step
    return until - timedelta(seconds=window.seconds), until


def _latency(p: Sequence[float] | None) -> dict[str, float] | None:
    if not p or p[0] is None:
        return None
    return {"p50": round(p[0], 3), "p95": round(p[1], 3), "p99": round(p[2], 3)}


# A statement row, or a dict in the unit tests.
Row: TypeAlias = asyncpg.Record | dict[str, Any]


def series_from_rows(
    window: Window, since: datetime, counts: Sequence[Row], percentiles: Sequence[Row]
) -> dict[str, Any]:
    """The statements' rows as the API's answer: every bucket present (zeros where no
    request came), oldest first."""
    step = timedelta(seconds=window.bucket_s)
    buckets: list[dict[str, Any]] = [
        {"start": since + i * step, "total": 0, "by_outcome": {}, "latency_ms": None}
        for i in range(window.buckets)
    ]
    index = {bucket["start"]: bucket for bucket in buckets}
    totals: dict[str, Any] = {"total": 0, "by_outcome": {}, "latency_ms": None}
    for row in counts:
        bucket = index.get(row["bucket"])
        if bucket is None:  # cannot happen: the range is the buckets'
            continue
        outcome, n = row["outcome"], row["n"]
        bucket["by_outcome"][outcome] = n
        bucket["total"] += n
        totals["by_outcome"][outcome] = totals["by_outcome"].get(outcome, 0) + n
        totals["total"] += n
    for row in percentiles:
        if row["level"] == 1:  # the whole window
            totals["latency_ms"] = _latency(row["p"])
        elif (bucket := index.get(row["bucket"])) is not None:
            bucket["latency_ms"] = _latency(row["p"])
    minutes = window.bucket_s / 60
    for bucket in buckets:
        bucket["per_minute"] = round(bucket["total"] / minutes, 3)
    return {
        "window": window.name,
        "window_s": window.seconds,
        "bucket_s": window.bucket_s,
        "since": since,
        "until": since + timedelta(seconds=window.seconds),
        **totals,
        "buckets": buckets,
    }


class FlowSeries:
    """The statements of this module, on the API's pool (under its statement_timeout)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def series(
        self, flow_id: uuid.UUID, workspace_id: str, window: Window, now: datetime | None = None
    ) -> dict[str, Any]:
        since, until = bounds(window, now or datetime.now(UTC))
        args = (flow_id, uuid.UUID(workspace_id), since, until, float(window.bucket_s), ORIGIN)
        async with self.pool.acquire() as conn:
            counts = await conn.fetch(COUNTS, *args)
            total = sum(row["n"] for row in counts)
            classes = max(1, -(-total // SAMPLE_ROWS))
            percentiles = await conn.fetch(PERCENTILES, *args, classes)
        series = series_from_rows(window, since, counts, percentiles)
        # How many of the window's requests the percentiles are taken over (1: all).
        series["latency_sample"] = 1 / classes
        return series

    async def sparklines(
        self, flow_ids: Sequence[str], workspace_id: str, now: datetime | None = None
    ) -> dict[str, dict[str, list[int]]]:
        """Per flow: `requests` and `failures` (FAILED_OUTCOMES) per hour over the last
        24 h, oldest first."""
        window = SPARKLINE
        since, until = bounds(window, now or datetime.now(UTC))
        rows = await self.pool.fetch(
            SPARKLINES,
            [uuid.UUID(flow_id) for flow_id in flow_ids],
            uuid.UUID(workspace_id),
            since,
            until,
            float(window.bucket_s),
            ORIGIN,
            [str(outcome) for outcome in FAILED_OUTCOMES],
        )
        lines = {
            flow_id: {"requests": [0] * window.buckets, "failures": [0] * window.buckets}
            for flow_id in flow_ids
        }
        for row in rows:
            i = int((row["bucket"] - since).total_seconds()) // window.bucket_s
            line = lines.get(row["flow_id"])
            if line is not None and 0 <= i < window.buckets:
                line["requests"][i] = row["n"]
                line["failures"][i] = row["failures"]
        return lines

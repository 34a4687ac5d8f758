"""`runner.paced_runs`: the async runs of paced flows (pacing.py), from the moment a
runner takes their message until they are recorded. One table for every replica:

- `add`: the consumer of the async queue inserts a paced flow's runs (and acks their
  message only after the commit), each with its lane (keys, limits, `not_before`).
- `claim`: every replica's dispatcher (dispatcher.py) takes the runs whose turn it is,
  in one statement under a transaction-scoped advisory lock, so that counts across
  rows (runs of a key or a flow at once, starts of a throttled key) are decided by one
  replica at a time; a claim is a lease (`lease_until`), renewed while the run goes on.
  A replica that dies stops renewing: once its lease lapses the run is claimed again
  (`claims` > 1: marked repeated), still first of its key, so it runs again before the
  next one of its key starts.
- `finish`: the row deleted and the request marked in `runner.finished_runs` in one
  statement, after its `run.finished` was confirmed (a StartRuns message delivered
  again then skips it; `add` skips marked requests too).

Eligible (all of): not running (no live lease); `not_before` passed (`delay_s`); received
at least `settle_s` ago (below); among the first `order_limit` runs of its key (running
ones count), by acceptance time; fewer running runs of the flow than `flow_limit` ahead
of it; fewer starts of its throttle key within the period than `throttle_limit` ahead
of it; for a debounced key: the burst's last request, once `period_s` after it or
`max_wait_s` after the burst's first has passed. Claims go key by key (the first waiting
run of every key before the second of any) and in turns: under a flow's limit, the key
served least recently goes first (`runner.paced_lanes`), and each workspace's first run
before any workspace's second, so a hot key cannot starve the others, nor a busy
workspace another. A flow without keys has one lane: its runs go in arrival order.

Arrival order is the ingress's acceptance time (`received_at`): two replicas consume
one queue, so insertion order can differ from it by the few milliseconds between the
broker's delivery and the commit. `settle_s` covers that: a run is claimed only once
every run of its key accepted before it has had that long to be inserted."""

import uuid
from dataclasses import dataclass

import asyncpg
import structlog

from services.runner.pacing import Lane
from shared.db import delete_in_batches
from shared.schemas.runs import StartRun

log = structlog.get_logger(__name__)

# The advisory lock every claim takes (one claim at a time, across replicas).
CLAIM_LOCK = 0x70616365  # "pace"
ANY_WAITING = "SELECT EXISTS (SELECT 1 FROM runner.paced_runs)"

INSERT = """
INSERT INTO runner.paced_runs (request_id, flow_id, workspace_id, received_at, not_before,
    order_key, order_limit, flow_limit, throttle_key, throttle_limit, throttle_period_s,
    debounce_key, debounce_period_s, debounce_max_s, start)
SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15
WHERE NOT EXISTS (SELECT 1 FROM runner.finished_runs WHERE request_id = $1)
ON CONFLICT (request_id) DO NOTHING
"""

CLAIM = """
WITH live AS (
    SELECT p.request_id, p.flow_id, p.workspace_id, p.received_at, p.seq, p.not_before, p.order_key,
        p.order_limit, p.flow_limit, p.throttle_key, p.throttle_limit, p.debounce_key,
        p.debounce_period_s, p.debounce_max_s, p.claims, p.lane, ln.served_at,
        coalesce(p.lease_until >= now(), false) AS running,
        CASE WHEN p.order_key IS NULL THEN 1 ELSE row_number() OVER (
            PARTITION BY p.flow_id, p.order_key ORDER BY p.received_at, p.seq) END AS order_rank,
        row_number() OVER (PARTITION BY p.flow_id, p.debounce_key, p.claims = 0
            ORDER BY p.received_at DESC, p.seq DESC) AS newest_rank,
        min(p.received_at) OVER (PARTITION BY p.flow_id, p.debounce_key, p.claims = 0)
            AS burst_first
    FROM runner.paced_runs p
    LEFT JOIN runner.paced_lanes ln ON ln.flow_id = p.flow_id AND ln.lane = p.lane
    WHERE p.debounced_by IS NULL
),
running AS (
    SELECT flow_id, count(*) AS n FROM live WHERE running GROUP BY flow_id
),
candidates AS (
    SELECT l.*,
        row_number() OVER (PARTITION BY l.flow_id
            ORDER BY l.served_at NULLS FIRST, l.received_at, l.seq) AS flow_rank,
        row_number() OVER (PARTITION BY l.flow_id, l.throttle_key
            ORDER BY l.received_at, l.seq) AS throttle_rank,
        row_number() OVER (PARTITION BY l.workspace_id
            ORDER BY l.order_rank, l.served_at NULLS FIRST, l.received_at, l.seq)
            AS workspace_rank
    FROM live l
    WHERE NOT l.running
        AND l.not_before <= now()
        AND l.received_at <= now() - make_interval(secs => $1)
        AND l.order_rank <= coalesce(l.order_limit, 1)
        AND (l.debounce_key IS NULL OR l.claims > 0 OR (l.newest_rank = 1 AND now() >= least(
            l.received_at + make_interval(secs => l.debounce_period_s),
            l.burst_first + make_interval(secs => l.debounce_max_s))))
),
chosen AS (
    SELECT c.request_id FROM candidates c LEFT JOIN running r ON r.flow_id = c.flow_id
    WHERE (c.flow_limit IS NULL OR c.flow_rank <= c.flow_limit - coalesce(r.n, 0))
        AND (c.throttle_key IS NULL OR c.throttle_rank <= c.throttle_limit - (
            SELECT count(*) FROM runner.paced_starts s WHERE s.flow_id = c.flow_id
                AND s.throttle_key = c.throttle_key AND s.counts_until > now()))
    ORDER BY c.workspace_rank
    LIMIT $2
)
UPDATE runner.paced_runs p
SET lease_until = now() + make_interval(secs => $3), leased_by = $4, claims = p.claims + 1
FROM chosen WHERE p.request_id = chosen.request_id
RETURNING p.request_id, p.flow_id, p.lane, p.start, p.claims, p.received_at, p.seq, p.throttle_key,
    p.throttle_period_s, p.debounce_key
"""
SERVED = """
INSERT INTO runner.paced_lanes (flow_id, lane, served_at)
SELECT DISTINCT flow_id, lane, now() FROM unnest($1::text[], $2::text[]) AS s (flow_id, lane)
ON CONFLICT (flow_id, lane) DO UPDATE SET served_at = EXCLUDED.served_at
"""
THROTTLED = """
INSERT INTO runner.paced_starts (flow_id, throttle_key, counts_until)
SELECT flow_id, key, now() + make_interval(secs => period)
FROM unnest($1::text[], $2::text[], $3::float8[]) AS s (flow_id, key, period)
"""
# The earlier requests of each claimed burst: debounced, linked to its last one.
DEBOUNCED = """
UPDATE runner.paced_runs p
SET debounced_by = w.request_id, lease_until = now() + make_interval(secs => $5), leased_by = $6
FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::bigint[])
    AS w (request_id, flow_id, received_at, seq)
WHERE p.flow_id = w.flow_id AND p.debounce_key = (
        SELECT debounce_key FROM runner.paced_runs WHERE request_id = w.request_id)
    AND p.claims = 0 AND p.debounced_by IS NULL AND (p.received_at, p.seq) < (w.received_at, w.seq)
RETURNING p.request_id, p.start, p.debounced_by
"""
# Debounced requests whose replica died before recording them.
ORPHANS = """
UPDATE runner.paced_runs
SET lease_until = now() + make_interval(secs => $1), leased_by = $2
WHERE debounced_by IS NOT NULL AND lease_until < now()
RETURNING request_id, start, debounced_by
"""
RENEW = (
    "UPDATE runner.paced_runs SET lease_until = now() + make_interval(secs => $1)"
    " WHERE leased_by = $2 AND request_id = ANY($3::text[])"
)
FINISH = """
WITH gone AS (DELETE FROM runner.paced_runs WHERE request_id = ANY($1::text[]) RETURNING request_id)
INSERT INTO runner.finished_runs (request_id) SELECT request_id FROM gone ON CONFLICT DO NOTHING
"""


@dataclass(frozen=True)
class ClaimedRun:
    start: StartRun
    claims: int  # 1: its first start; more: its runner died while it ran


@dataclass(frozen=True)
class DebouncedRun:
    start: StartRun
    debounced_by: str  # the request that ran in its place


@dataclass(frozen=True)
class Claim:
    runs: list[ClaimedRun]
    debounced: list[DebouncedRun]


class PacedRuns:
    def __init__(
        self, pool: asyncpg.Pool, lease_s: float, settle_s: float, prune_batch: int = 10_000
    ) -> None:
        self.pool = pool
        self.lease_s = lease_s
        self.settle_s = settle_s
        self.prune_batch = prune_batch
        # This process's name on the leases it holds.
        self.holder = uuid.uuid4().hex

    async def add(self, runs: list[tuple[StartRun, Lane]]) -> None:
        """Inserted in one transaction; raises when the database is away (the message is
        then delivered again). A request already here, or already finished, is skipped."""
        rows = [
            (
                start.request.request_id,
                start.request.flow_id,
                start.request.workspace_id,
                start.request.received_at,
                lane.not_before,
                lane.order_key,
                lane.order_limit,
                lane.flow_limit,
                lane.throttle_key,
                lane.throttle_limit,
                lane.throttle_period_s,
                lane.debounce_key,
                lane.debounce_period_s,
                lane.debounce_max_s,
                start.model_dump_json().encode(),
            )
            for start, lane in runs
        ]
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.executemany(INSERT, rows)

    async def claim(self, capacity: int) -> Claim:
        """Up to `capacity` runs whose turn it is, leased to this process; and the
        debounced requests to record (leased too, until `forget`)."""
        async with self.pool.acquire() as conn:
            # Nothing paced waiting (most of the time where no flow is paced): no lock,
            # so idle replicas, polling every FLOWHOOKS_RUNNER_PACED_POLL_S, neither
            # queue on one another nor run the claim's statements. A run added just
            # after this is claimed at the next poll or wake.
            if not await conn.fetchval(ANY_WAITING):
                return Claim(runs=[], debounced=[])
            return await self._claim(conn, capacity)

    async def _claim(self, conn: asyncpg.Connection, capacity: int) -> Claim:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", CLAIM_LOCK)
            rows = (
                await conn.fetch(CLAIM, self.settle_s, capacity, self.lease_s, self.holder)
                if capacity > 0
                else []
            )
            if rows:
                await conn.execute(
                    SERVED, [row["flow_id"] for row in rows], [row["lane"] for row in rows]
                )
            throttled = [row for row in rows if row["throttle_key"] is not None]
            if throttled:
                await conn.execute(
                    THROTTLED,
                    [row["flow_id"] for row in throttled],
                    [row["throttle_key"] for row in throttled],
                    [row["throttle_period_s"] for row in throttled],
                )
            winners = [
                row for row in rows if row["debounce_key"] is not None and row["claims"] == 1
            ]
            debounced = []
            if winners:
                debounced = await conn.fetch(
                    DEBOUNCED,
                    [row["request_id"] for row in winners],
                    [row["flow_id"] for row in winners],
                    [row["received_at"] for row in winners],
                    [row["seq"] for row in winners],
                    self.lease_s,
                    self.holder,
                )
            orphans = await conn.fetch(ORPHANS, self.lease_s, self.holder)
        return Claim(
            runs=[
                ClaimedRun(StartRun.model_validate_json(row["start"]), row["claims"])
                for row in rows
            ],
            debounced=[
                DebouncedRun(StartRun.model_validate_json(row["start"]), row["debounced_by"])
                for row in [*debounced, *orphans]
            ],
        )

    async def renew(self, request_ids: list[str]) -> None:
        if request_ids:
            await self.pool.execute(RENEW, self.lease_s, self.holder, request_ids)

    async def finish(self, request_ids: list[str]) -> None:
        """Deleted and marked finished together: never run again from a message."""
        await self.pool.execute(FINISH, request_ids)

    async def prune(self) -> int:
        """Throttle starts past their period, and lanes idle for an hour, in bounded
        batches."""
        starts = await delete_in_batches(
            self.pool,
            "DELETE FROM runner.paced_starts WHERE ctid IN (SELECT ctid FROM runner.paced_starts"
            " WHERE counts_until < now() LIMIT $1)",
            batch=self.prune_batch,
        )
        lanes = await delete_in_batches(
            self.pool,
            "DELETE FROM runner.paced_lanes WHERE ctid IN (SELECT ctid FROM runner.paced_lanes"
            " WHERE served_at < now() - interval '1 hour' LIMIT $1)",
            batch=self.prune_batch,
        )
        return starts + lanes

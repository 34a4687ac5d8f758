"""Bulk replay jobs: the table side (`ReplayJobs`) and the worker that runs them
(`ReplayWorker`, a background task of every debugger replica).

- A job's items are fixed when it is created: the flow's original requests (not
  replays) matching the filter, oldest first (`debugger.replay_items`). Its own
  replays, which may match the same filter, are never picked up again.
- One replica works a job at a time: it holds the job's lease (`lease_owner`,
  `lease_until`), taken with `FOR UPDATE SKIP LOCKED` and renewed by a heartbeat. It
  sends nothing once its lease may have lapsed, so a replica that takes a lapsed job
  over never races the previous owner.
- Each item's replay has a request id derived from (job, original), so sending it twice
  still stores one record. A replica taking a job over first waits until the previous
  owner's replays in flight have finished or expired (lease end + replay timeout),
  then counts those from their records instead of sending them again.
- Progress is settled per chunk, in one transaction: each item's outcome (settled
  once: its counts cannot double) and the job's counters and cursor.
- Throttle: at most `in_flight` replays awaiting their outcome per process (all jobs
  together) and `rate` started a second per job, through the sync run path: a job
  never puts more than that in the runners' queue ahead of live webhooks, and a
  cancelled or crashed job leaves nothing queued (sync runs expire with their deadline).
"""

import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import structlog

from services.debugger.replay_edit import Edit, Replayer, replay_request
from services.debugger.store import RequestStore
from shared.errors import BadRequest, Conflict, Timeout, Unavailable

log = structlog.get_logger(__name__)

SKIPPED = "skipped"
PAUSED_REASON = "the flow is paused: unpause it, or start the job with force: true"
_JOB = (
    "SELECT id::text, flow_id::text, filter::text, force, status, reason, total, done,"
    " succeeded, failed, skipped, created_at, finished_at FROM debugger.replay_jobs"
)


@dataclass(frozen=True)
class JobFilter:
    outcome: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
        }


@dataclass(frozen=True)
class ClaimedJob:
    id: uuid.UUID
    workspace_id: str
    force: bool
    cursor: int
    # Taken over from a replica that stopped: how long its replays may still be in flight.
    wait_s: float


def job_view(record: asyncpg.Record) -> dict[str, Any]:
    job = dict(record)
    job["filter"] = orjson.loads(job["filter"])
    return job


def replay_id(job_id: uuid.UUID, request_id: str) -> str:
    return uuid.uuid5(job_id, request_id).hex


# A request's detail lists this many of its replays at most (oldest first).
MAX_LISTED_REPLAYS = 100


async def replays_of(pool: asyncpg.Pool, request_id: str, workspace_id: str) -> list[str]:
    """The ids of a request's replays (index `requests_replay_of`)."""
    rows = await pool.fetch(
        "SELECT id FROM debugger.requests WHERE replay_of = $1 AND workspace_id = $2"
        " ORDER BY received_at, id LIMIT $3",
        request_id,
        uuid.UUID(workspace_id),
        MAX_LISTED_REPLAYS,
    )
    return [row["id"] for row in rows]


class ReplayJobs:
    def __init__(self, pool: asyncpg.Pool, max_requests: int) -> None:
        self.pool = pool
        self.max_requests = max_requests

    async def create(
        self, flow_id: uuid.UUID, workspace_id: str, filter: JobFilter, force: bool
    ) -> asyncpg.Record:
        """The new job with its items; `Conflict` while the flow has a running job,
        `BadRequest` when the filter selects more than `max_requests`."""
        job_id = uuid.uuid4()
        args: list[Any] = [job_id, flow_id, uuid.UUID(workspace_id)]
        where = ["flow_id = $2", "workspace_id = $3", "replay_of IS NULL"]
        # Only the filters given are in the statement, so the planner can use the
        # (flow_id, outcome, received_at) index.
        for sql, value in (
            ("outcome = ${}", filter.outcome),
            ("received_at >= ${}", filter.since),
            ("received_at < ${}", filter.until),
        ):
            if value is not None:
                args.append(value)
                where.append(sql.format(len(args)))
        args.append(self.max_requests + 1)
        async with self.pool.acquire() as conn:
            try:
                async with conn.transaction():
                    await conn.execute(
                        "INSERT INTO debugger.replay_jobs (id, flow_id, workspace_id, filter,"
                        " force, status, total) VALUES ($1, $2, $3, $4::jsonb, $5, 'running', 0)",
                        job_id,
                        flow_id,
                        uuid.UUID(workspace_id),
                        orjson.dumps(filter.as_json()).decode(),
                        force,
                    )
                    status = await conn.execute(
                        "INSERT INTO debugger.replay_items (job_id, seq, request_id)"
                        " SELECT $1, row_number() OVER (ORDER BY received_at, id), id FROM"
                        " (SELECT received_at, id FROM debugger.requests"
                        f" WHERE {' AND '.join(where)}"
                        f" ORDER BY received_at, id LIMIT ${len(args)}) AS picked",
                        *args,
                    )
                    total = int(status.split()[-1])
                    if total > self.max_requests:
                        raise BadRequest(
                            f"the filter selects more than {self.max_requests} requests"
                            " (FLOWHOOKS_DEBUGGER_REPLAY_MAX_REQUESTS): narrow it",
                            data={"field": "filter"},
                        )
                    record: asyncpg.Record = await conn.fetchrow(
                        "UPDATE debugger.replay_jobs SET total = $2,"
                        " status = CASE WHEN $2 = 0 THEN 'finished' ELSE status END,"
                        " finished_at = CASE WHEN $2 = 0 THEN now() END"
                        " WHERE id = $1 RETURNING id::text, flow_id::text, filter::text, force,"
                        " status, reason, total, done, succeeded, failed, skipped, created_at,"
                        " finished_at",
                        job_id,
                        total,
                    )
                    return record
            except asyncpg.UniqueViolationError:
                running = await conn.fetchval(
                    "SELECT id::text FROM debugger.replay_jobs"
                    " WHERE flow_id = $1 AND status = 'running'",
                    flow_id,
                )
                raise Conflict(
                    "the flow already has a running replay job", data={"job_id": running}
                ) from None

    async def get(self, job_id: uuid.UUID, workspace_id: str) -> asyncpg.Record | None:
        record: asyncpg.Record | None = await self.pool.fetchrow(
            f"{_JOB} WHERE id = $1 AND workspace_id = $2", job_id, uuid.UUID(workspace_id)
        )
        return record

    async def cancel(self, job_id: uuid.UUID, workspace_id: str) -> asyncpg.Record | None:
        await self.pool.execute(
            "UPDATE debugger.replay_jobs SET status = 'cancelled', reason = 'cancelled',"
            " finished_at = now() WHERE id = $1 AND workspace_id = $2 AND status = 'running'",
            job_id,
            uuid.UUID(workspace_id),
        )
        return await self.get(job_id, workspace_id)

    async def stop(self, job_id: uuid.UUID, reason: str) -> None:
        await self.pool.execute(
            "UPDATE debugger.replay_jobs SET status = 'cancelled', reason = $2,"
            " finished_at = now() WHERE id = $1 AND status = 'running'",
            job_id,
            reason,
        )

    async def claim(self, owner: str, lease_s: float, replay_timeout_s: float) -> ClaimedJob | None:
        """The oldest running job nobody holds (never held, or its lease lapsed)."""
        record = await self.pool.fetchrow(
            "WITH picked AS (SELECT id, lease_owner AS previous_owner,"
            " lease_until AS previous_until FROM debugger.replay_jobs"
            " WHERE status = 'running' AND (lease_until IS NULL OR lease_until < now())"
            " ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED)"
            " UPDATE debugger.replay_jobs AS job SET lease_owner = $1,"
            " lease_until = now() + make_interval(secs => $2) FROM picked"
            " WHERE job.id = picked.id RETURNING job.id, job.workspace_id::text, job.force,"
            " job.cursor, CASE WHEN picked.previous_owner IS NULL THEN 0 ELSE GREATEST(0,"
            " extract(epoch FROM picked.previous_until + make_interval(secs => $3) - now()))"
            " END::float8 AS wait_s",
            owner,
            lease_s,
            replay_timeout_s,
        )
        if record is None:
            return None
        return ClaimedJob(
            record["id"],
            record["workspace_id"],
            record["force"],
            record["cursor"],
            record["wait_s"],
        )

    async def renew(self, job_id: uuid.UUID, owner: str, lease_s: float) -> bool:
        """False once the job is over or another replica holds it."""
        status = await self.pool.execute(
            "UPDATE debugger.replay_jobs SET lease_until = now() + make_interval(secs => $3)"
            " WHERE id = $1 AND lease_owner = $2 AND status = 'running'",
            job_id,
            owner,
            lease_s,
        )
        return bool(status.split()[-1] != "0")

    async def release(self, job_id: uuid.UUID, owner: str) -> None:
        """At shutdown: another replica may take the job over at once."""
        await self.pool.execute(
            "UPDATE debugger.replay_jobs SET lease_until = now()"
            " WHERE id = $1 AND lease_owner = $2 AND status = 'running'",
            job_id,
            owner,
        )

    async def pending(self, job_id: uuid.UUID, after: int, limit: int) -> list[tuple[int, str]]:
        rows = await self.pool.fetch(
            "SELECT seq, request_id FROM debugger.replay_items WHERE job_id = $1 AND seq > $2"
            " AND outcome IS NULL ORDER BY seq LIMIT $3",
            job_id,
            after,
            limit,
        )
        return [(row["seq"], row["request_id"]) for row in rows]

    async def recorded(self, request_ids: list[str]) -> dict[str, str]:
        """The final outcomes already stored for these (replay) request ids."""
        rows = await self.pool.fetch(
            "SELECT id, outcome FROM debugger.requests WHERE id = ANY($1::text[])"
            " AND outcome NOT IN ('queued', 'running')",
            request_ids,
        )
        return {row["id"]: row["outcome"] for row in rows}

    async def settle(
        self, job_id: uuid.UUID, owner: str, outcomes: list[tuple[int, str]], cursor: int | None
    ) -> str | None:
        """Records the items' outcomes (an item already settled is not counted again)
        and moves the cursor; the job's status after it, None if this replica no longer
        holds the job."""
        async with self.pool.acquire() as conn, conn.transaction():
            # The job's row lock: a replica taking the job over waits for this to commit.
            held = await conn.fetchval(
                "SELECT true FROM debugger.replay_jobs WHERE id = $1 AND lease_owner = $2"
                " FOR UPDATE",
                job_id,
                owner,
            )
            if not held:
                return None
            status: str = await conn.fetchval(
                "WITH settled AS (UPDATE debugger.replay_items AS item SET outcome = given.outcome"
                " FROM unnest($2::int[], $3::text[]) AS given (seq, outcome)"
                " WHERE item.job_id = $1 AND item.seq = given.seq AND item.outcome IS NULL"
                " RETURNING item.outcome), counts AS (SELECT count(*) AS n,"
                " count(*) FILTER (WHERE outcome = 'succeeded') AS n_ok,"
                " count(*) FILTER (WHERE outcome = 'skipped') AS n_skipped FROM settled)"
                " UPDATE debugger.replay_jobs SET done = done + counts.n,"
                " succeeded = succeeded + counts.n_ok, skipped = skipped + counts.n_skipped,"
                " failed = failed + counts.n - counts.n_ok - counts.n_skipped,"
                " cursor = GREATEST(cursor, $4),"
                " status = CASE WHEN status = 'running' AND done + counts.n >= total"
                " THEN 'finished' ELSE status END,"
                " finished_at = CASE WHEN status = 'running' AND done + counts.n >= total"
                " THEN now() ELSE finished_at END"
                " FROM counts WHERE id = $1 RETURNING status",
                job_id,
                [seq for seq, _ in outcomes],
                [outcome for _, outcome in outcomes],
                cursor,
            )
            return status


@dataclass
class _Held:
    """A job this process works: stop when set; send nothing past `valid_until`
    (monotonic), the lease's end as far as this process can be sure."""

    job: ClaimedJob
    valid_until: float
    stop: asyncio.Event = field(default_factory=asyncio.Event)


class ReplayWorker:
    def __init__(
        self,
        jobs: ReplayJobs,
        store: RequestStore,
        replayer: Replayer,
        *,
        in_flight: int,
        rate: float,
        chunk: int,
        lease_s: float,
        poll_s: float,
        max_jobs: int,
    ) -> None:
        self.jobs = jobs
        self.store = store
        self.replayer = replayer
        self.rate = rate
        self.chunk = chunk
        self.lease_s = lease_s
        self.poll_s = poll_s
        self.max_jobs = max_jobs
        self.owner = uuid.uuid4().hex
        self._slots = asyncio.Semaphore(in_flight)
        self._wake = asyncio.Event()
        self._working: set[uuid.UUID] = set()

    def wake(self) -> None:
        """Look for jobs now (one was just created here)."""
        self._wake.set()

    async def run_forever(self) -> None:
        # A task group: cancelling this (shutdown) cancels the jobs' tasks with it.
        async with asyncio.TaskGroup() as group:
            while True:
                self._wake.clear()
                try:
                    while len(self._working) < self.max_jobs:
                        started = time.monotonic()
                        job = await self.jobs.claim(
                            self.owner, self.lease_s, self.replayer.timeout_s
                        )
                        if job is None:
                            break
                        self._working.add(job.id)
                        held = _Held(job, started + self.lease_s)
                        group.create_task(self._work(held))
                except (OSError, asyncpg.PostgresError) as exc:
                    log.warning("replay_jobs_not_claimed", error=repr(exc))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_s)

    async def _work(self, held: _Held) -> None:
        job = held.job
        log.info("replay_job_working", job_id=str(job.id), cursor=job.cursor, wait_s=job.wait_s)
        heartbeat = asyncio.create_task(self._heartbeat(held))
        try:
            await self._process(held)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await self.jobs.release(job.id, self.owner)
            raise
        except Exception:
            # The lease lapses; this or another replica takes the job up again.
            log.exception("replay_job_failed", job_id=str(job.id))
        finally:
            heartbeat.cancel()
            self._working.discard(job.id)
            self._wake.set()

    async def _heartbeat(self, held: _Held) -> None:
        while not held.stop.is_set():
            await asyncio.sleep(min(self.lease_s / 3, 1.0))
            started = time.monotonic()
            try:
                if not await self.jobs.renew(held.job.id, self.owner, self.lease_s):
                    held.stop.set()  # cancelled, or no longer ours
                    return
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("replay_job_lease_not_renewed", error=repr(exc))
                continue
            held.valid_until = started + self.lease_s

    async def _pause(self, held: _Held, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(held.stop.wait(), seconds)

    async def _process(self, held: _Held) -> None:
        job = held.job
        if job.wait_s > 0:
            # Taken over: the previous owner's replays finish or expire first, and are
            # then counted from their records instead of being sent again.
            await self._pause(held, job.wait_s + 1.0)
        cursor = job.cursor
        next_start = time.monotonic()
        while not held.stop.is_set():
            items = await self.jobs.pending(job.id, cursor, self.chunk)
            if not items:
                return  # every item is settled: the last settle finished the job
            known = await self.jobs.recorded([replay_id(job.id, rid) for _, rid in items])
            outcomes: dict[int, str | None] = {}
            paused = asyncio.Event()

            tasks = []
            for seq, request_id in items:
                known_outcome = known.get(replay_id(job.id, request_id))
                if known_outcome is not None:
                    outcomes[seq] = known_outcome
                    continue
                delay = next_start - time.monotonic()
                if delay > 0:
                    await self._pause(held, delay)
                if held.stop.is_set() or paused.is_set():
                    break
                next_start = max(next_start, time.monotonic()) + 1 / self.rate
                tasks.append(
                    asyncio.create_task(self._send(held, seq, request_id, outcomes, paused))
                )
            await asyncio.gather(*tasks)
            settled = [(seq, outcome) for seq, outcome in outcomes.items() if outcome is not None]
            whole = len(settled) == len(items)
            status = await self.jobs.settle(
                job.id, self.owner, settled, items[-1][0] if whole else None
            )
            if status != "running":
                log.info("replay_job_left", job_id=str(job.id), status=status)
                return
            if paused.is_set():
                await self.jobs.stop(job.id, PAUSED_REASON)
                log.info("replay_job_paused", job_id=str(job.id))
                return
            if whole:
                cursor = items[-1][0]
            else:
                await self._pause(held, 1.0)  # the broker or a runner was away: try again

    async def _send(
        self,
        held: _Held,
        seq: int,
        request_id: str,
        outcomes: dict[int, str | None],
        paused: asyncio.Event,
    ) -> None:
        async with self._slots:
            if held.stop.is_set() or paused.is_set():
                return
            if time.monotonic() >= held.valid_until:
                return  # the lease may have lapsed: another replica may hold the job
            try:
                outcomes[seq] = await self._replay(held.job, request_id)
            except Conflict:
                paused.set()

    async def _replay(self, job: ClaimedJob, request_id: str) -> str | None:
        """The replay's outcome, `skipped`, or None (not sent or not known: retried)."""
        row = await self.store.get(request_id, job.workspace_id)
        if row is None:
            return SKIPPED  # deleted by retention meanwhile
        try:
            request = replay_request(row, Edit(), replay_id(job.id, request_id), datetime.now(UTC))
        except BadRequest:
            return SKIPPED  # rejected, or stored truncated: nothing whole to replay
        try:
            result = await self.replayer.run(request, force=job.force)
        except Timeout:
            return "timeout"
        except Unavailable:
            return None
        return result.outcome

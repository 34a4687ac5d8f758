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
- Fair per workspace (contract, "Isolation": replay jobs are shared fairly): a replica
  works at most `max_jobs` jobs at once and **one job per workspace**, so one
  workspace's many jobs cannot take every place. The claim takes the job of the
  workspace served least recently (its jobs' latest `lease_until`; never served
  first), so a workspace waiting is next. The `in_flight` replays are shared fairly
  between the jobs worked (`FairSlots`: each at most its share, a freed slot to the job
  holding fewest), so a job whose replays are slow (a flow that waits on an `http`
  step) cannot keep another's at zero. When the replica is full and another
  workspace's job waits, a job worked longer than `slice_s` hands its place over at
  once (no new replay started, those in flight settled, the lease released) and goes
  to the back: round robin. A lease released that way, with every replay sent settled,
  is taken over without the wait above (`lease_owner` cleared).
"""

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Hashable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import structlog

from services.debugger.legacy_copy import LegacyRequests, requests_source
from services.debugger.replay_edit import Edit, Replayer, replay_request
from services.debugger.store import RequestStore
from shared.errors import BadRequest, Conflict, Timeout, Unavailable
from shared.schemas.vocabulary import Outcome

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


class ReplayJobs:
    def __init__(
        self, pool: asyncpg.Pool, max_requests: int, legacy: LegacyRequests | None = None
    ) -> None:
        self.pool = pool
        self.max_requests = max_requests
        self.legacy = legacy

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
                        f" (SELECT received_at, id FROM {requests_source(self.legacy)}"
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

    async def claim(
        self,
        owner: str,
        lease_s: float,
        replay_timeout_s: float,
        busy_workspaces: Sequence[str] = (),
    ) -> ClaimedJob | None:
        """A running job nobody holds (never held, or its lease lapsed or released), of
        a workspace not in `busy_workspaces` (those this replica works already): the
        workspace served least recently first (the latest `lease_until` of its running
        jobs; never served, first), then its job never held, or released longest ago,
        then the oldest. Running jobs are few (one per flow), so ranking them is cheap."""
        record = await self.pool.fetchrow(
            "WITH served AS (SELECT workspace_id, max(lease_until) AS last"
            " FROM debugger.replay_jobs WHERE status = 'running' GROUP BY workspace_id),"
            " picked AS (SELECT job.id, job.lease_owner AS previous_owner,"
            " job.lease_until AS previous_until FROM debugger.replay_jobs AS job"
            " JOIN served USING (workspace_id)"
            " WHERE job.status = 'running'"
            " AND (job.lease_until IS NULL OR job.lease_until < now())"
            " AND job.workspace_id <> ALL($4::uuid[])"
            " ORDER BY served.last NULLS FIRST, job.lease_until NULLS FIRST, job.created_at"
            " LIMIT 1 FOR UPDATE OF job SKIP LOCKED)"
            " UPDATE debugger.replay_jobs AS job SET lease_owner = $1,"
            " lease_until = now() + make_interval(secs => $2) FROM picked"
            " WHERE job.id = picked.id RETURNING job.id, job.workspace_id::text, job.force,"
            " job.cursor, CASE WHEN picked.previous_owner IS NULL THEN 0 ELSE GREATEST(0,"
            " extract(epoch FROM picked.previous_until + make_interval(secs => $3) - now()))"
            " END::float8 AS wait_s",
            owner,
            lease_s,
            replay_timeout_s,
            [uuid.UUID(workspace) for workspace in busy_workspaces],
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

    async def release(self, job_id: uuid.UUID, owner: str, *, settled: bool = False) -> None:
        """Another replica may take the job now. `settled`: every replay this replica
        sent has its outcome recorded (a turn handed over), so the next holder need not
        wait for any (the owner is cleared); otherwise (shutdown) it waits as after a
        lapsed lease."""
        await self.pool.execute(
            "UPDATE debugger.replay_jobs SET lease_until = now(),"
            " lease_owner = CASE WHEN $3 THEN NULL ELSE lease_owner END"
            " WHERE id = $1 AND lease_owner = $2 AND status = 'running'",
            job_id,
            owner,
            settled,
        )

    async def others_waiting(self, busy_workspaces: Sequence[str]) -> bool:
        """Whether a running job nobody holds belongs to a workspace not in
        `busy_workspaces` (one this replica could take if it had a free place)."""
        return bool(
            await self.pool.fetchval(
                "SELECT EXISTS (SELECT 1 FROM debugger.replay_jobs WHERE status = 'running'"
                " AND (lease_until IS NULL OR lease_until < now())"
                " AND workspace_id <> ALL($1::uuid[]))",
                [uuid.UUID(workspace) for workspace in busy_workspaces],
            )
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
            f"SELECT id, outcome FROM {requests_source(self.legacy)} WHERE id = ANY($1::text[])"
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


class FairSlots:
    """At most `total` held at once, shared between holders (jobs): one may take a slot
    while it holds fewer than its share (`total` / holders holding or waiting, at least
    one) and no other waiting holder holds fewer. So a job whose replays are slow keeps
    at most its share once another job waits, and the next freed slot goes to the job
    that holds fewest."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._held: dict[Hashable, int] = {}
        self._waiting: dict[Hashable, int] = {}
        self._changed = asyncio.Condition()

    def held(self, key: Hashable) -> int:
        return self._held.get(key, 0)

    def _may_take(self, key: Hashable) -> bool:
        if sum(self._held.values()) >= self.total:
            return False
        mine = self._held.get(key, 0)
        active = len(self._held.keys() | self._waiting.keys())
        if mine >= max(1, self.total // active):
            return False
        return all(self._held.get(other, 0) >= mine for other in self._waiting)

    @contextlib.asynccontextmanager
    async def hold(self, key: Hashable) -> AsyncIterator[None]:
        async with self._changed:
            self._waiting[key] = self._waiting.get(key, 0) + 1
            try:
                await self._changed.wait_for(lambda: self._may_take(key))
                self._held[key] = self._held.get(key, 0) + 1
            finally:
                self._waiting[key] -= 1
                if not self._waiting[key]:
                    del self._waiting[key]
                self._changed.notify_all()  # another waiter may take what is left
        try:
            yield
        finally:
            async with self._changed:
                self._held[key] -= 1
                if not self._held[key]:
                    del self._held[key]
                self._changed.notify_all()


@dataclass
class _Held:
    """A job this process works: stop when `stop` is set (cancelled, or the lease
    lost); hand the place over when `turn_over` is set; send nothing past `valid_until`
    (monotonic), the lease's end as far as this process can be sure."""

    job: ClaimedJob
    valid_until: float
    since: float = field(default_factory=time.monotonic)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    turn_over: asyncio.Event = field(default_factory=asyncio.Event)
    # Set with either of the two: what pauses wait on.
    interrupted: asyncio.Event = field(default_factory=asyncio.Event)
    # A replay was sent whose outcome is not known (the broker away): a handover must
    # let the next holder wait for it, as after a crash.
    unsure: bool = False

    def halt(self) -> None:
        self.stop.set()
        self.interrupted.set()

    def hand_over(self) -> None:
        self.turn_over.set()
        self.interrupted.set()

    @property
    def ending(self) -> bool:
        return self.interrupted.is_set()


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
        slice_s: float = 30.0,
    ) -> None:
        self.jobs = jobs
        self.store = store
        self.replayer = replayer
        self.rate = rate
        self.chunk = chunk
        self.lease_s = lease_s
        self.poll_s = poll_s
        self.max_jobs = max_jobs
        self.slice_s = slice_s
        self.owner = uuid.uuid4().hex
        self._slots = FairSlots(in_flight)
        self._wake = asyncio.Event()
        self._working: dict[uuid.UUID, _Held] = {}

    def wake(self) -> None:
        """Look for jobs now (one was just created here)."""
        self._wake.set()

    def _busy_workspaces(self) -> list[str]:
        return sorted({held.job.workspace_id for held in self._working.values()})

    async def run_forever(self) -> None:
        # A task group: cancelling this (shutdown) cancels the jobs' tasks with it.
        async with asyncio.TaskGroup() as group:
            while True:
                self._wake.clear()
                try:
                    while len(self._working) < self.max_jobs:
                        started = time.monotonic()
                        job = await self.jobs.claim(
                            self.owner,
                            self.lease_s,
                            self.replayer.timeout_s,
                            self._busy_workspaces(),
                        )
                        if job is None:
                            break
                        held = _Held(job, started + self.lease_s)
                        self._working[job.id] = held
                        group.create_task(self._work(held))
                    if len(self._working) >= self.max_jobs:
                        await self._maybe_turn_over()
                except (OSError, asyncpg.PostgresError) as exc:
                    log.warning("replay_jobs_not_claimed", error=repr(exc))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_s)

    async def _maybe_turn_over(self) -> None:
        """Full, and another workspace's job waits: the job worked longest, if past its
        slice, hands its place over (one at a time; the claim then takes the waiting)."""
        if any(held.turn_over.is_set() for held in self._working.values()):
            return
        longest = min(self._working.values(), key=lambda held: held.since)
        if time.monotonic() - longest.since < self.slice_s:
            return
        if await self.jobs.others_waiting(self._busy_workspaces()):
            log.info("replay_job_turn_over", job_id=str(longest.job.id))
            longest.hand_over()

    async def _work(self, held: _Held) -> None:
        job = held.job
        log.info("replay_job_working", job_id=str(job.id), cursor=job.cursor, wait_s=job.wait_s)
        heartbeat = asyncio.create_task(self._heartbeat(held))
        try:
            await self._process(held)
            if held.turn_over.is_set() and not held.stop.is_set():
                # No renewal may land after the release (it would hold the job again).
                heartbeat.cancel()
                await asyncio.wait([heartbeat])  # (raises only if this task is cancelled)
                await self.jobs.release(job.id, self.owner, settled=not held.unsure)
                log.info("replay_job_handed_over", job_id=str(job.id), settled=not held.unsure)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await self.jobs.release(job.id, self.owner)
            raise
        except Exception:
            # The lease lapses; this or another replica takes the job up again.
            log.exception("replay_job_failed", job_id=str(job.id))
        finally:
            heartbeat.cancel()
            self._working.pop(job.id, None)
            self._wake.set()

    async def _heartbeat(self, held: _Held) -> None:
        while not held.stop.is_set():
            await asyncio.sleep(min(self.lease_s / 3, 1.0))
            started = time.monotonic()
            try:
                if not await self.jobs.renew(held.job.id, self.owner, self.lease_s):
                    held.halt()  # cancelled, or no longer ours
                    return
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("replay_job_lease_not_renewed", error=repr(exc))
                continue
            held.valid_until = started + self.lease_s

    async def _pause(self, held: _Held, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(held.interrupted.wait(), seconds)

    async def _process(self, held: _Held) -> None:
        job = held.job
        if job.wait_s > 0:
            # Taken over: the previous owner's replays finish or expire first, and are
            # then counted from their records instead of being sent again. Handed over
            # before the wait is out, the next holder must wait for them too.
            held.unsure = True
            await self._pause(held, job.wait_s + 1.0)
            if held.ending:
                return
            held.unsure = False
        cursor = job.cursor
        next_start = time.monotonic()
        while not held.ending:
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
                if held.ending or paused.is_set():
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
            elif not held.ending:
                await self._pause(held, 1.0)  # the broker or a runner was away: try again

    async def _send(
        self,
        held: _Held,
        seq: int,
        request_id: str,
        outcomes: dict[int, str | None],
        paused: asyncio.Event,
    ) -> None:
        async with self._slots.hold(held.job.id):
            if held.ending or paused.is_set():
                return  # not sent: stays pending for this job's next turn
            if time.monotonic() >= held.valid_until:
                return  # the lease may have lapsed: another replica may hold the job
            try:
                outcome = await self._replay(held.job, request_id)
            except Conflict:
                paused.set()
                return
            outcomes[seq] = outcome
            if outcome is None:
                held.unsure = True

    async def _replay(self, job: ClaimedJob, request_id: str) -> str | None:
        """The replay's outcome, `skipped`, or None (not sent or not known: retried)."""
        row = await self.store.get(request_id, job.workspace_id)
        if row is None:
            return SKIPPED  # deleted by retention meanwhile
        # A replay sent again (its outcome was not known) keeps the time of its first
        # record: its key in the time-partitioned table, so it stays one record.
        replayed_id = replay_id(job.id, request_id)
        first = await self.store.get(replayed_id, job.workspace_id)
        received_at = first["received_at"] if first is not None else datetime.now(UTC)
        try:
            request = replay_request(row, Edit(), replayed_id, received_at)
        except BadRequest:
            return SKIPPED  # rejected, or stored truncated: nothing whole to replay
        try:
            result = await self.replayer.run(
                request, force=job.force, original_trace=row.get("trace_parent")
            )
        except Timeout:
            return Outcome.TIMEOUT
        except Unavailable:
            return None
        return result.outcome

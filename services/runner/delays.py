"""Runs waiting in a `delay` step: stored in `runner.waiting_runs`, resumed by any runner.

Storing (`store`, when a worker reports a run stopped in a `delay`; group-committed:
the runs stopped while one transaction runs go together in the next): one transaction
inserts the row (the `StartRun` to publish again, its `resume` holding the run's
context, next step, trace and early answer, and the flow as the run began), adds it to
the workspace's totals (past a bound, the transaction is undone and the run fails
naming the bound), and marks the message it came from (`waiting_mark`): a runner
killed before that message is acked has it delivered again, and the redelivery skips
the run instead of running its steps again. Only then is the message acked and the
worker slot long free.

Resuming (`resume_due`, every FLOWHOOKS_RUNNER_DELAY_POLL_S on every replica): one
transaction claims due rows (`FOR UPDATE SKIP LOCKED`: replicas share the work, never
the same row), publishes each as an async run through the broker and waits for the
broker's confirms, then deletes the rows and commits. So:
- a runner killed mid-claim: its transaction rolls back, the rows are claimed again;
- the broker away or failing over: no confirm, rollback, claimed again next time;
- the database failing over after the confirm, before the commit: the row stays and is
  published a second time. Each stored state has a `token`; the first copy a runner
  takes marks it (`resume_copy_mark`) and a later copy is dropped (`fresh_copies`), so
  the run goes on once. A copy delivered again because its runner died is not a second
  copy: it runs again, as any async run does (its steps after the delay may repeat,
  marked `repeated`; those before it never do, they are in the stored state).
A completed `http` step before the delay is never sent again: its output is in the
stored context and the run resumes after it."""

import asyncio
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
import structlog

from services.runner.worker_protocol import Resumed, Suspension
from shared import db
from shared.errors import FlowError, Unavailable
from shared.group_commit import GroupCommit
from shared.messaging.batching import BatchPublisher
from shared.messaging.connection import Broker
from shared.messaging.contracts import ASYNC_RUNS, RUN_STARTED
from shared.schemas.runs import RunProgress, RunResult, StartRun, error_result
from shared.schemas.vocabulary import Outcome

log = structlog.get_logger(__name__)


class WaitingBoundExceeded(Exception):
    """Storing the run would put its workspace past a bound; the message names it."""


def waiting_mark(start: StartRun) -> str:
    """The `finished_runs` key saying that this message's run is stored waiting (its
    redelivery must not run it)."""
    resume = start.resume or {}
    return f"{start.request.request_id}#waiting-from{resume.get('next_step', 0)}"


def resume_copy_mark(start: StartRun) -> str:
    return f"{start.request.request_id}#resumed-{(start.resume or {}).get('token', '')}"


def is_first_copy_candidate(start: StartRun) -> bool:
    """A resumed run as the scheduler published it (not parked since, nor split from a
    message delivered again): the copies `fresh_copies` judges."""
    return start.resume is not None and start.parked == 0 and start.repeated is None


def check_run_bound(size: int, max_run_state_bytes: int) -> None:
    """Raises `WaitingBoundExceeded` for one run's state past its own bound (before any
    write: such a state is never stored)."""
    if size > max_run_state_bytes:
        raise WaitingBoundExceeded(
            f"the run's state of {size} bytes is larger than the bound of"
            f" {max_run_state_bytes} bytes for one waiting run"
            " (FLOWHOOKS_RUNNER_DELAY_MAX_RUN_STATE_BYTES)"
        )


def check_bounds(
    runs: int, state_bytes: int, size: int, max_waiting_runs: int, max_state_bytes: int
) -> None:
    """Raises `WaitingBoundExceeded` when a workspace's totals, this run counted in, are
    past a bound; `size`: this run's stored bytes."""
    if runs > max_waiting_runs:
        raise WaitingBoundExceeded(
            f"the workspace has {max_waiting_runs} runs waiting in delay steps,"
            " its bound (FLOWHOOKS_RUNNER_DELAY_MAX_WAITING_RUNS)"
        )
    if state_bytes > max_state_bytes:
        raise WaitingBoundExceeded(
            f"the run's state of {size} bytes would put the workspace's waiting runs"
            f" past their bound of {max_state_bytes} bytes in all"
            " (FLOWHOOKS_RUNNER_DELAY_MAX_STATE_BYTES)"
        )


@dataclass(frozen=True)
class _ToStore:
    request_id: str
    workspace: str
    resume_at: datetime
    encoded: bytes  # the StartRun to publish again
    mark: str  # `waiting_mark` of the message it came from


class DelayedRuns:
    def __init__(
        self,
        pool: asyncpg.Pool,
        broker: Broker,
        *,
        max_waiting_runs: int,
        max_state_bytes: int,
        max_run_state_bytes: int = 8 * 1024 * 1024,
        resume_batch: int = 500,
        progress: BatchPublisher[RunProgress] | None = None,
    ) -> None:
        """`progress`: the runner's `run.started` publisher, where `waiting` goes too (by
        default one of its own): one publisher sends in the order it is handed to, so a
        run's `running` (handed over by the run.started hold's tick, just before the run
        may stop in a delay) always reaches the debugger before its `waiting`."""
        self.pool = pool
        self.max_run_state_bytes = max_run_state_bytes
        self.max_waiting_runs = max_waiting_runs
        self.max_state_bytes = max_state_bytes
        self.resume_batch = resume_batch
        # Resumed runs to the async-runs queue, many to a message, each confirmed.
        self._resumes: BatchPublisher[StartRun] = BatchPublisher(broker, ASYNC_RUNS)
        # `waiting` with the resume time, for the debugger and the status URL.
        self._waiting: BatchPublisher[RunProgress] = (
            progress if progress is not None else BatchPublisher(broker, RUN_STARTED)
        )
        self._stores: GroupCommit[_ToStore] = GroupCommit(
            self._store_batch, max_items=500, max_size=32 * 1024 * 1024, size=_size
        )
        self.stored = 0  # for metrics, tests and the bench
        self.resumed = 0
        self._kicked: asyncio.Task[None] | None = None
        self._kicked_again = False

    async def store(self, start: StartRun, suspension: Suspension) -> None:
        """Stores the run (see the module's doc); raises `WaitingBoundExceeded`, or
        `Unavailable` when the database is away (the message comes again)."""
        resumed = suspension.state.model_copy(update={"token": uuid.uuid4().hex})
        stored = start.model_copy(
            update={
                "resume": resumed.model_dump(mode="json"),
                "flow_version": resumed.flow.version,
                "deadline": None,  # nobody waits: the run's budget is its flow's
                "origin": None,  # its ingress was told at the store (drain report)
                "parked": 0,
                "repeated": None,
                "accept_on_timeout": False,
                "dedup_key": None,
            }
        )
        encoded = stored.model_dump_json().encode()
        check_run_bound(len(encoded), self.max_run_state_bytes)
        item = _ToStore(
            start.request.request_id,
            start.request.workspace_id,
            suspension.resume_at,
            encoded,
            waiting_mark(start),
        )
        try:
            await self._stores.add(item)
        except db.UNAVAILABLE as exc:
            raise Unavailable(f"the waiting run could not be stored: {exc!r}") from exc
        self.stored += 1
        try:
            await self._waiting.publish(
                RunProgress(
                    request=start.request, at=datetime.now(UTC), resume_at=suspension.resume_at
                )
            )
        except Exception as exc:  # best effort: what is guaranteed is the outcome
            log.warning("waiting_not_reported", error=repr(exc))

    async def _store_batch(self, items: list["_ToStore"]) -> list[BaseException | None]:
        """One transaction for the runs stopped meanwhile (group commit: stores of one
        workspace are ordered by its totals row, so one at a time they would queue):
        each workspace's totals locked, each run checked against them in order (a run
        refused leaves nothing), the rest inserted with their marks."""
        workspaces = sorted({item.workspace for item in items})
        results: list[BaseException | None] = [None] * len(items)
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO runner.waiting_totals (workspace_id, runs, state_bytes)"
                " SELECT unnest($1::text[]), 0, 0 ON CONFLICT (workspace_id) DO NOTHING",
                workspaces,
            )
            rows = await conn.fetch(
                "SELECT workspace_id, runs, state_bytes FROM runner.waiting_totals"
                " WHERE workspace_id = ANY($1::text[]) ORDER BY workspace_id FOR UPDATE",
                workspaces,
            )
            totals = {row["workspace_id"]: [row["runs"], row["state_bytes"]] for row in rows}
            stored_already = {
                row["request_id"]
                for row in await conn.fetch(
                    "SELECT request_id FROM runner.waiting_runs WHERE request_id = ANY($1::text[])",
                    [item.request_id for item in items],
                )
            }
            accepted: list[_ToStore] = []
            for index, item in enumerate(items):
                if item.request_id in stored_already:
                    continue  # a redelivery's: stored by its first delivery
                total = totals[item.workspace]
                size = len(item.encoded)
                try:
                    check_bounds(
                        total[0] + 1,
                        total[1] + size,
                        size,
                        self.max_waiting_runs,
                        self.max_state_bytes,
                    )
                except WaitingBoundExceeded as exc:
                    results[index] = exc
                    continue
                total[0] += 1
                total[1] += size
                stored_already.add(item.request_id)
                accepted.append(item)
            await conn.execute(
                "INSERT INTO runner.waiting_runs"
                " (request_id, workspace_id, resume_at, start, state_bytes)"
                " SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::bytea[],"
                " $5::int[]) ON CONFLICT (request_id) DO NOTHING",
                [item.request_id for item in accepted],
                [item.workspace for item in accepted],
                [item.resume_at for item in accepted],
                [item.encoded for item in accepted],
                [len(item.encoded) for item in accepted],
            )
            await conn.execute(
                "UPDATE runner.waiting_totals AS t SET runs = d.runs, state_bytes = d.bytes"
                " FROM (SELECT unnest($1::text[]) AS w, unnest($2::int[]) AS runs,"
                " unnest($3::bigint[]) AS bytes) AS d WHERE t.workspace_id = d.w",
                list(totals),
                [total[0] for total in totals.values()],
                [total[1] for total in totals.values()],
            )
            await conn.execute(
                "INSERT INTO runner.finished_runs (request_id) SELECT unnest($1::text[])"
                " ON CONFLICT DO NOTHING",
                [item.mark for item, result in zip(items, results, strict=True) if result is None],
            )
        return results

    def kick(self) -> None:
        """Resumes the due runs soon rather than at the next poll (a run handed over at
        its `respond` step is due at once). One claim at a time: kicks meanwhile make
        one more."""
        if self._kicked is not None and not self._kicked.done():
            self._kicked_again = True
            return
        self._kicked = asyncio.create_task(self._resume_kicked())

    async def _resume_kicked(self) -> None:
        while True:
            self._kicked_again = False
            try:
                await self.resume_due()
            except Exception as exc:  # the poll takes them later
                log.warning("kicked_resume_failed", error=repr(exc))
                return
            if not self._kicked_again:
                return

    async def resume_due(self) -> int:
        """Publishes every due run (in claims of `resume_batch`); returns how many."""
        total = 0
        while True:
            claimed = await self._resume_some()
            total += claimed
            if claimed < self.resume_batch:
                return total

    async def _resume_some(self) -> int:
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT request_id, workspace_id, state_bytes, start FROM runner.waiting_runs"
                " WHERE resume_at <= now() ORDER BY resume_at LIMIT $1 FOR UPDATE SKIP LOCKED",
                self.resume_batch,
            )
            if not rows:
                return 0
            starts = [StartRun.model_validate_json(row["start"]) for row in rows]
            # Raises if any is not confirmed: the transaction is undone, the rows stay
            # (those confirmed meanwhile are second copies later: `fresh_copies`).
            await asyncio.gather(*(self._resumes.publish(start) for start in starts))
            runs: Counter[str] = Counter()
            sizes: Counter[str] = Counter()
            for row in rows:
                runs[row["workspace_id"]] += 1
                sizes[row["workspace_id"]] += row["state_bytes"]
            await conn.execute(
                "DELETE FROM runner.waiting_runs WHERE request_id = ANY($1::text[])",
                [row["request_id"] for row in rows],
            )
            await conn.execute(
                "UPDATE runner.waiting_totals AS t SET runs = t.runs - d.runs,"
                " state_bytes = t.state_bytes - d.bytes FROM (SELECT unnest($1::text[]) AS w,"
                " unnest($2::int[]) AS runs, unnest($3::bigint[]) AS bytes) AS d"
                " WHERE t.workspace_id = d.w",
                list(runs),
                list(runs.values()),
                [sizes[w] for w in runs],
            )
        self.resumed += len(rows)
        return len(rows)

    async def fresh_copies(self, starts: list[StartRun]) -> list[StartRun]:
        """Those of `starts` to run: a resumed run's first copy (its mark inserted now),
        never a second copy of the same stored state. Every run, if the database cannot
        say (at least once)."""
        judged = [start for start in starts if is_first_copy_candidate(start)]
        if not judged:
            return starts
        try:
            rows = await self.pool.fetch(
                "INSERT INTO runner.finished_runs (request_id) SELECT unnest($1::text[])"
                " ON CONFLICT DO NOTHING RETURNING request_id",
                [resume_copy_mark(start) for start in judged],
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("resume_copy_check_failed", error=repr(exc))
            return starts
        first = {row["request_id"] for row in rows}
        kept = [
            start
            for start in starts
            if not is_first_copy_candidate(start) or resume_copy_mark(start) in first
        ]
        if len(kept) < len(starts):
            log.warning("resume_copies_dropped", count=len(starts) - len(kept))
        return kept


def _size(item: _ToStore) -> int:
    return len(item.encoded)


def resumed_of(start: StartRun) -> Resumed | None:
    return Resumed.model_validate(start.resume) if start.resume is not None else None


def bound_failure(start: StartRun, suspension: Suspension, message: str) -> RunResult:
    """The run that could not be stored for its delay: failed, naming the bound, with
    its trace, and the answer a `respond` step gave its caller (if any: a run handed
    over at its `respond` step was not answered yet, its caller gets this failure)."""
    state = suspension.state
    result = error_result(
        start.request.request_id,
        FlowError(message),
        Outcome.FAILED,
        state.started_at,
        list(state.trace),
    )
    if state.answered is not None and not suspension.answers:
        answered = state.answered
        result = result.model_copy(
            update={
                "status_code": answered.status_code,
                "content_type": answered.content_type,
                "body": answered.body,
                "headers": answered.headers,
                "answered_at": answered.at,
            }
        )
    return result.model_copy(update={"repeated": suspension.repeated})

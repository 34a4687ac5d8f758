"""Runs webhook requests, taken in batches from the sync and the async run queues: sync
runs are answered on the caller's reply queue (the sender's answer), async runs are
acked only after their outcomes were published. The flows themselves run in the worker
pool (`pool.py`), never here. Either way `run.finished` carries the request, the result
and the step trace to the debugger. A sync run that needs nothing but its result, record
and reply takes the direct path (direct_runs.py: `_run_one`'s steps in callback form);
flows come from `FlowCache` (flow_cache.py).

Async runs of paced flows (`webhook.ordering`, ...; pacing.py) are not run from their
message: they are inserted into `runner.paced_runs` and the message is acked after the
commit; every replica's dispatcher (dispatcher.py) claims them in their turn and runs
them here (`run_paced`).

Async runs and the prefetch window. A message stays unacked while any run in it waits
or runs, and the runner takes at most `FLOWHOOKS_RUNNER_ASYNC_PREFETCH` messages at
once: if runs waiting for their workspace's share kept their message, one workspace's
backlog would fill the window and every other workspace's runs would stay queued behind
it. So each async run is admitted the moment it would go to the pool:
- it starts (or waits for a slot in its turn) when its workspace is below its share;
- else it may wait in memory if its message already holds that workspace's waiting runs,
  or the workspace holds fewer than `FLOWHOOKS_RUNNER_ASYNC_WAITING_MESSAGES` such
  messages (and all workspaces together fewer than a quarter of the window): a busy
  workspace keeps a backlog next to its slots, at the cost of a message or two;
- else it is **parked**: published again (confirmed, with `parked` + 1) to
  `flowhooks.runner.async-runs.wait`, whose TTL (`topology.PARK_TTL_S`) dead-letters it
  back to the async-runs queue, and it counts as settled in its message. It never
  started, so it is no attempt: the copy is a new message for the delivery limit.
The parked runs of a message go as soon as every run of it is started, held or parked
(not when the others finish), group-committed with other messages' parked runs (those
parked while a publish awaits its confirm share the next message, so a backlog of
one-run messages comes back as a few large ones). A message whose other runs still run
when its runs are parked has them marked (`<request id>#parked<n>` in `finished_runs`),
so that if its runner dies before the ack, its redelivery skips them: their parked copy
runs them, not both. Order within a workspace stays roughly FIFO: parked runs come back
in the order they left, within a TTL of newer ones. Churn: every parked run is decoded
and encoded again once per TTL (measured: 1,000 parked runs, in about ten messages,
cost the supervisor 7 % of a core); the ingress's per-workspace queued bounds bound how
many there can be."""

import asyncio
import itertools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import orjson
import structlog

from services.runner.callbacks import CallbackSender
from services.runner.dedup import DedupKeys
from services.runner.delays import (
    DelayedRuns,
    WaitingBoundExceeded,
    bound_failure,
    resumed_of,
    waiting_mark,
)
from services.runner.direct_runs import DirectMessage, DirectRuns
from services.runner.drain_reports import DrainReports
from services.runner.finished import FinishedRuns
from services.runner.flow_cache import FlowCache
from services.runner.metrics import RunnerMetrics
from services.runner.paced_runs import PacedRuns
from services.runner.pacing import Lane
from services.runner.pool import WorkerPool
from services.runner.started_hold import HeldStarts
from services.runner.worker_protocol import Answered, RunOutput, Suspension
from shared import tracing
from shared.errors import Conflict, FlowError, NotFound, Timeout, Unavailable
from shared.messaging import naming
from shared.messaging.batching import BatchPublisher
from shared.messaging.connection import Broker
from shared.messaging.contracts import PARKED_RUNS
from shared.messaging.rpc import ERROR, RESULT, GroupedReplies, error_body
from shared.retry import RetryPolicy
from shared.schemas.runs import (
    RunFinished,
    RunProgress,
    RunResult,
    StartRun,
    StartRuns,
    error_result,
    finished_json,
    progress_json,
    request_json,
)
from shared.schemas.vocabulary import JSON, Outcome, Progress, RunMode, envelope
from shared.service import Delivery, Retry

log = structlog.get_logger(__name__)

# How long a sync run without a deadline (a replay) tries to get its record confirmed
# before its caller is answered 503.
SYNC_RECORD_GRACE = timedelta(seconds=10)
# The pauses between those tries: from 0.1 s, doubling, at most a second.
SYNC_RECORD_RETRY = RetryPolicy.doubling(0.1, 1.0)
# `RunResult.repeated` of a run from a message delivered again: it may have run before.
REPEATED_AFTER_CRASH = "its runner stopped while it ran; delivered again"


def async_window(capacity: int) -> int:
    """The async prefetch window for a pool that runs `capacity` runs at once: a message
    stays unacked while its runs run, so the window must hold every running run's
    message (each may be alone in one) and room besides, for the messages that wait
    their workspace's turn (at most a quarter of the window) and for new arrivals."""
    return max(64, capacity + capacity // 2)


def early_result(request_id: str, answer: Answered) -> RunResult:
    """What a sync caller is sent when a `respond` step answers it: the answer, the rest
    of the run handed over (its own outcome is recorded when it ends)."""
    return RunResult(
        request_id=request_id,
        outcome=Outcome.SUCCEEDED,
        status_code=answer.status_code,
        content_type=answer.content_type,
        body=answer.body,
        headers=answer.headers,
        started_at=answer.at,
        finished_at=answer.at,
        answered_at=answer.at,
    )


def waiting_result(request_id: str, suspension: Suspension) -> RunResult:
    """A replay's answer when its run stopped in a `delay` step: 202, `waiting`, with
    the resume time (the run's own outcome is recorded when it ends)."""
    now = datetime.now(UTC)
    data = {"request_id": request_id, "resume_at": suspension.resume_at.isoformat()}
    return RunResult(
        request_id=request_id,
        outcome=Outcome.SUCCEEDED,
        status_code=202,
        content_type=JSON,
        body=orjson.dumps(envelope(202, None, Progress.WAITING, data)).decode(),
        started_at=suspension.state.started_at,
        finished_at=now,
        answered_at=now,
    )


def park_mark(request_id: str, generation: int) -> str:
    """The `finished_runs` key saying that the run's copy parked for the `generation`th
    time was published (its original message must not run it again)."""
    return f"{request_id}#parked{generation}"


class _Parked(Exception):
    """The run was not started: its workspace is at its share and holds its part of the
    prefetch window already."""


@dataclass
class _Batch:
    """One async message's runs while they are admitted."""

    undecided: int  # runs not yet started, held or parked (or ended before that)
    decided: asyncio.Event = field(default_factory=asyncio.Event)
    parked: list[StartRun] = field(default_factory=list)
    # Workspace -> its runs of this message held in memory for its share, not yet
    # finished: while there are any, the message is one of its waiting messages.
    held: dict[str, int] = field(default_factory=dict)
    # Its runs' finished marks, handed over as each is recorded, waited for before the
    # ack (`FinishedRuns.settle`): no task waits for each.
    marks: list["asyncio.Future[None]"] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.undecided <= 0:
            self.decided.set()


@dataclass
class _Ticket:
    """One run of a `_Batch`: its admission is counted once, whichever way it ends."""

    batch: _Batch
    counted: bool = False

    def decide(self) -> None:
        if not self.counted:
            self.counted = True
            self.batch.undecided -= 1
            if self.batch.undecided <= 0:
                self.batch.decided.set()


class RunService:
    """The consumer of both run queues. A message holds one `StartRun` or many
    (`StartRuns`); its runs go to the worker pool together, each is recorded
    (`run.finished`, confirmed) and, for sync runs, answered as soon as it is done, and
    the message is acked once every run in it is recorded."""

    def __init__(
        self,
        broker: Broker,
        flows: FlowCache,
        pool: WorkerPool,
        finished: BatchPublisher[RunFinished],
        started: BatchPublisher[RunProgress] | None,
        replies: GroupedReplies,
        finished_runs: FinishedRuns,
        dedup_keys: DedupKeys | None = None,
        accept_run_timeout_s: float = 300.0,
        callbacks: CallbackSender | None = None,
        metrics: RunnerMetrics | None = None,
        drain_reports: DrainReports | None = None,
        waiting_messages_per_workspace: int = 1,
        waiting_messages_max: int = 16,
        paced: PacedRuns | None = None,
        waiting: BatchPublisher[RunProgress] | None = None,
        delays: DelayedRuns | None = None,
        started_after_s: float = 0.0,
    ) -> None:
        self.broker = broker
        self.metrics = metrics if metrics is not None else RunnerMetrics()
        self.flows = flows
        self.pool = pool
        # run.finished events, many runs to a message; `publish` returns once confirmed.
        self.finished = finished
        # run.started events (None: not sent): best effort, batched, never awaited.
        self.started = started
        # Async runs announced only once they have run `started_after_s` (None: at once,
        # as they start): most end within ms, and then send no run.started at all.
        self.held_starts = (
            HeldStarts(started.publish_encoded_soon, started_after_s)
            if started is not None and started_after_s > 0
            else None
        )
        self.replies = replies
        self.finished_runs = finished_runs
        self.dedup_keys = dedup_keys
        # The run's own budget for `on_timeout: "accept"` flows: the caller was answered
        # 202 at the flow's timeout; the run goes on up to this (the flows API's maximum).
        self.accept_run_timeout_s = accept_run_timeout_s
        # Completion callbacks of async runs (callbacks.py); None: none are sent.
        self.callbacks = callbacks
        # Tells each ingress which of its async runs finished (None: nobody is told).
        self.drain_reports = drain_reports
        # Async messages of the window that may hold runs waiting for their workspace's
        # share, per workspace and in all; past them such runs are parked.
        # Runs stopped in a `delay` step: stored, resumed (None: not wired).
        self.delays = delays
        self.waiting_messages_per_workspace = waiting_messages_per_workspace
        self.waiting_messages_max = waiting_messages_max
        self._waiting_messages: Counter[str] = Counter()
        self.runs_parked = 0  # for metrics and tests
        # Runs in the worker pool now (running or waiting for a slot) that a task awaits;
        # those on the direct path are counted by `direct` (`runs_running`: both).
        self._runs_awaited = 0
        # Sync runs that need nothing but their result, record and reply (direct_runs.py).
        self.direct = DirectRuns(
            flows,
            pool,
            finished,
            replies,
            finished_runs,
            self.metrics,
            conclude=self._conclude,
            record_and_answer=self._record_and_answer,
        )
        # Parked runs, group-committed: those parked while a publish awaits its confirm
        # go together in the next message, so under load a backlog of one-run messages
        # comes back as a few large ones (less churn per TTL).
        self._parking: BatchPublisher[StartRun] = BatchPublisher(broker, PARKED_RUNS)
        # Async runs of paced flows wait in the database (paced_runs.py) until a
        # dispatcher (dispatcher.py) claims them; None: no pacing (every run at once).
        self.paced = paced
        # `run.waiting`, confirmed before a paced run is inserted (so before it can be
        # `running`): the debugger shows `waiting`.
        self.waiting = waiting
        # Called once paced runs were inserted, with when the first of them may start
        # (wakes this replica's dispatcher then).
        self.on_paced: Callable[[datetime], None] = lambda due: None

    @property
    def runs_running(self) -> int:
        """Runs in the worker pool now (running or waiting for a slot)."""
        return self._runs_awaited + self.direct.running

    async def on_sync_runs(self, runs: StartRuns, delivery: Delivery) -> None:
        await self._take(runs.items, delivery, reply_to=delivery.reply_to)

    async def on_async_runs(self, runs: StartRuns, delivery: Delivery) -> None:
        await self._take(runs.items, delivery, reply_to=None)

    async def _take(self, starts: list[StartRun], delivery: Delivery, reply_to: str | None) -> None:
        if delivery.redelivered:
            # Its runner died mid-batch: run only what had not finished (nor was parked
            # from this message), each marked as repeated, and each on its own from now
            # on, so that a request that kills runners fails alone.
            starts = await self._not_done(starts, parkable=reply_to is None)
            starts = [
                start
                if start.repeated
                else start.model_copy(update={"repeated": REPEATED_AFTER_CRASH})
                for start in starts
            ]
            if len(starts) > 1:
                await self._split(delivery, starts)
                return
        elif reply_to is None and self.delays is not None:
            # A resumed run published twice (a database failover between its confirm
            # and the claim's commit) goes on once.
            starts = await self.delays.fresh_copies(starts)
        if reply_to is None and self.paced is not None:
            starts = await self._hold_paced(starts)
            if not starts:
                return
        if reply_to is not None:
            # Runs that need nothing but a record and a reply go on from callbacks
            # (direct_runs.py); the others each in a task (`_one`).
            message = DirectMessage()
            others = [start for start in starts if not self.direct.run(start, reply_to, message)]
            await asyncio.gather(
                *(self._one(start, reply_to) for start in others),
                message.finished(),
                return_exceptions=True,
            )
            await self.finished_runs.settle(message.marks)
            return
        batch = _Batch(len(starts))
        runs = asyncio.gather(
            *(self._one_async(start, _Ticket(batch)) for start in starts), return_exceptions=True
        )
        await batch.decided.wait()
        parked = True
        if batch.parked:
            # At once, not when the message's other runs finish: another workspace's
            # slow run in the same message must not hold these back.
            parked = await self._park(batch.parked, marked=len(batch.parked) < len(starts))
        outcomes = await runs
        await self.finished_runs.settle(batch.marks)
        failed = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
        if failed or not parked:
            # The broker or the database is away: deliver it again later; the runs that
            # were recorded (or parked, in a mixed message) are marked and will not run
            # again from it.
            raise Retry(
                f"{len(failed)} async runs not recorded: {failed[0]!r}"
                if failed
                else f"{len(batch.parked)} async runs not parked"
            )

    async def _hold_paced(self, starts: list[StartRun]) -> list[StartRun]:
        """Inserts the runs of paced flows into `runner.paced_runs` (their message is
        acked after the commit); returns the others. A flow's cached copy says whether
        it is paced: flows that are not pay no database round trip here."""
        held: list[tuple[StartRun, Lane]] = []
        others: list[StartRun] = []
        for start in starts:
            flow = await self.flows.get(start.request.flow_id, start.flow_version)
            # A run resumed after its `delay` step was admitted when it began.
            if flow is None or flow.pacing is None or start.resume is not None:
                others.append(start)
                continue
            # It never ran from a message: a redelivery does not make it a repeat.
            held.append(
                (start.model_copy(update={"repeated": None}), flow.pacing.lane(start.request))
            )
        if not held:
            return starts
        assert self.paced is not None
        try:
            if self.waiting is not None:
                now = datetime.now(UTC)
                await asyncio.gather(
                    *(
                        self.waiting.publish(RunProgress(request=start.request, at=now))
                        for start, _ in held
                    )
                )
            await self.paced.add(held)
        except Exception as exc:
            log.warning("paced_runs_not_held", count=len(held), error=repr(exc))
            raise Retry(f"{len(held)} paced runs not stored: {exc!r}") from exc
        settle = timedelta(seconds=self.paced.settle_s)
        self.on_paced(
            min(max(lane.not_before, start.request.received_at + settle) for start, lane in held)
        )
        return others

    async def run_paced(self, start: StartRun) -> None:
        """A paced run claimed by the dispatcher: run, record (confirmed), callback, as
        any async run. Raises only for infrastructure failures."""
        await self._one(start, None)

    async def record_debounced(self, start: StartRun, debounced_by: str) -> None:
        """A request of a debounced burst that a later one ran in place of: recorded
        `debounced`, linked to it (confirmed)."""
        now = datetime.now(UTC)
        request = start.request.model_copy(update={"debounced_by": debounced_by})
        answer = envelope(200, None, Outcome.DEBOUNCED, {"request_id": debounced_by})
        result = RunResult(
            request_id=request.request_id,
            outcome=Outcome.DEBOUNCED,
            status_code=200,
            content_type=JSON,
            body=orjson.dumps(answer).decode(),
            started_at=now,
            finished_at=now,
        )
        await self.finished.publish(RunFinished(request=request, result=result))
        if self.drain_reports is not None:
            self.drain_reports.finished(start.origin, request.request_id)

    async def _not_done(self, starts: list[StartRun], parkable: bool) -> list[StartRun]:
        """Those of `starts` not recorded yet, nor parked from this very message."""
        ids = [start.request.request_id for start in starts]
        marks = {
            start.request.request_id: park_mark(start.request.request_id, start.parked + 1)
            for start in starts
        }
        # Stored by a `delay` step from this message: it resumes from there instead.
        waiting = [waiting_mark(start) for start in starts]
        done = await self.finished_runs.which(
            ids + waiting + (list(marks.values()) if parkable else [])
        )
        return [
            start
            for start in starts
            if start.request.request_id not in done
            and marks[start.request.request_id] not in done
            and waiting_mark(start) not in done
        ]

    async def _one_async(self, start: StartRun, ticket: _Ticket) -> None:
        try:
            await self._one(start, None, ticket)
        finally:
            ticket.decide()  # a run that ended before its admission (an error, no flow)

    async def _park(self, starts: list[StartRun], marked: bool) -> bool:
        """Publish `starts` (confirmed) to the wait queue, each with `parked` + 1; mark
        them when their message stays unacked meanwhile (`marked`). False if the broker
        did not take them."""
        copies = [start.model_copy(update={"parked": start.parked + 1}) for start in starts]
        outcomes = await asyncio.gather(
            *(self._parking.publish(copy) for copy in copies), return_exceptions=True
        )
        taken = [copy for copy, outcome in zip(copies, outcomes, strict=True) if outcome is None]
        self.runs_parked += len(taken)
        if len(taken) < len(copies):
            log.warning("runs_not_parked", count=len(copies) - len(taken))
            marked = True  # the message comes again: those parked must not run from it
        if marked:
            await self.finished_runs.mark_all(
                [park_mark(copy.request.request_id, copy.parked) for copy in taken]
            )
        return len(taken) == len(copies)

    def _admit(self, start: StartRun, batch: _Batch) -> bool:
        """Whether the run goes to the pool holding its message for its workspace's turn
        (True) or at once (False); raises `_Parked` if it may do neither. No await
        between this and the pool taking the run: the decision holds."""
        workspace = start.request.workspace_id
        if workspace in batch.held:
            # The message waits for this workspace already: one more run costs no window.
            batch.held[workspace] += 1
            return True
        if not self.pool.must_wait(workspace):
            return False
        if (
            self._waiting_messages[workspace] < self.waiting_messages_per_workspace
            and self._waiting_messages.total() < self.waiting_messages_max
        ):
            self._waiting_messages[workspace] += 1
            batch.held[workspace] = 1
            return True
        raise _Parked

    def _release(self, batch: _Batch, workspace: str) -> None:
        left = batch.held[workspace] - 1
        if left:
            batch.held[workspace] = left
            return
        del batch.held[workspace]
        self._waiting_messages[workspace] -= 1
        if self._waiting_messages[workspace] <= 0:
            del self._waiting_messages[workspace]

    async def _one(
        self, start: StartRun, reply_to: str | None, ticket: _Ticket | None = None
    ) -> None:
        """`_run_one` in the request's span on this hop: its own trace goes on, through
        the worker's steps to the debugger's record (`request.trace`)."""
        with tracing.processing(
            naming.ASYNC_RUNS_QUEUE if reply_to is None else naming.SYNC_RUNS_QUEUE,
            start.request.trace,
            **{
                "flowhooks.request_id": start.request.request_id,
                "flowhooks.flow_id": start.request.flow_id,
            },
        ):
            if tracing.enabled():
                start = start.model_copy(update={"request": tracing.handed_on(start.request)})
            await self._run_one(start, reply_to, ticket)

    async def _run_one(
        self, start: StartRun, reply_to: str | None, ticket: _Ticket | None = None
    ) -> None:
        """Run, record and (sync) answer one request. Raises only for infrastructure
        failures (the broker or the database away)."""
        request_id = start.request.request_id
        structlog.contextvars.bind_contextvars(request_id=request_id)
        # Encoded once: for its worker, and for its record (`run.finished`).
        request = request_json(start.request)
        try:
            result = await self._execute(
                start, request, ticket, announce=reply_to is None or start.accept_on_timeout
            )
        except _Parked:
            assert ticket is not None
            ticket.batch.parked.append(start)
            return
        except Conflict as refused:
            # An unforced replay of a paused flow: the debugger's caller gets 409; nothing
            # ran, so nothing is recorded (like a paused flow's webhook at the ingress).
            log.info("replay_refused_paused", flow_id=start.request.flow_id)
            if reply_to is not None:
                self.replies.send(reply_to, request_id, ERROR, error_body(refused))
            return
        except Exception:
            log.exception("run_not_started")
            if reply_to is not None:
                error = Unavailable("the runner cannot run the flow right now")
                self.replies.send(reply_to, request_id, ERROR, error_body(error))
            raise
        await self._conclude(
            start, request, result, reply_to, ticket.batch.marks if ticket is not None else None
        )

    async def _conclude(
        self,
        start: StartRun,
        request: bytes,
        result: RunOutput | Suspension,
        reply_to: str | None,
        marks: list["asyncio.Future[None]"] | None = None,
    ) -> None:
        """From a run's result on: a suspension stored (or handed over), the result
        recorded, answered (sync) and marked finished (the mark handed over to `marks`
        if given, for its message to wait for, else waited for here)."""
        request_id = start.request.request_id
        if isinstance(result, Suspension) and result.answers and reply_to is not None:
            handed_over = await self._hand_over(start, result, reply_to)
            if handed_over is None:
                return
            result = RunOutput.of(handed_over)  # not stored: the run fails, naming the bound
        elif isinstance(result, Suspension):
            stored = await self._store_waiting(start, result)
            if stored is None:
                if reply_to is not None:
                    # Not handed over by a respond step: only a replay (a sync flow's
                    # delay comes after its respond). It is told the run waits.
                    answer = waiting_result(request_id, result)
                    self.replies.send(
                        reply_to, request_id, RESULT, answer.model_dump_json().encode()
                    )
                return
            result = RunOutput.of(stored)  # not stored: the run fails, naming the bound
        self.metrics.observe_run(result.outcome, result.duration_s)
        if start.repeated is not None and result.repeated is None:
            result = result.with_repeated(start.repeated)
        await self._record_and_answer(start, request, result, reply_to, marks)

    async def _record_and_answer(
        self,
        start: StartRun,
        request: bytes,
        result: RunOutput,
        reply_to: str | None,
        marks: list["asyncio.Future[None]"] | None = None,
    ) -> None:
        request_id = start.request.request_id
        if reply_to is None:
            await self._record(request, result)
        elif not await self._record_while_awaited(start, request, result):
            # A 200 for a run the debugger never gets would be a loss: the caller is told
            # to try again instead (the run's effects happened; a dedup key makes the
            # retry safe). Not marked finished: a redelivered batch would run it again.
            log.error("run_not_recorded", outcome=result.outcome)
            error = Unavailable("the run finished but could not be recorded; try again")
            self.replies.send(reply_to, request_id, ERROR, error_body(error))
            return
        if start.dedup_key is not None and self.dedup_keys is not None:
            # Before the answer: a duplicate sent after the first's answer finds it.
            await self.dedup_keys.record(start.request.flow_id, start.dedup_key, result.decoded())
        if reply_to is not None:
            self.replies.send(reply_to, request_id, RESULT, result.encoded)
        if reply_to is None:
            await self._enqueue_callback(start, result)
        if marks is not None:
            marks.append(self.finished_runs.mark_soon(request_id))
        else:
            await self.finished_runs.mark(request_id)
        if reply_to is None and self.drain_reports is not None:
            self.drain_reports.finished(start.origin, request_id)

    async def _hand_over(
        self, start: StartRun, suspension: Suspension, reply_to: str
    ) -> RunResult | None:
        """A `respond` step answered: the rest of the run is stored first (as a
        zero-second delay, committed with the mark that makes a redelivery of this
        message skip it), so that nothing after the answer can be lost; only then is the
        caller answered (and the dedup key given the answer). The message is acked
        after. None when done; the failed result (without the answer: the caller was
        not answered) when the workspace is past a waiting bound."""
        request_id = start.request.request_id
        answered = suspension.state.answered
        assert answered is not None
        try:
            refused = await self._store_waiting(start, suspension)
        except Unavailable as exc:
            # Nothing was answered yet: the caller may try again (a dedup key makes
            # that safe); the steps before the respond ran and are not recorded.
            log.error("run_not_handed_over", error=repr(exc))
            error = Unavailable("the run could not be handed over; try again")
            self.replies.send(reply_to, request_id, ERROR, error_body(error))
            return None
        if refused is not None:
            return refused
        if self.delays is not None:
            self.delays.kick()  # due now: resumed at once, not at the next poll
        answer = early_result(request_id, answered)
        if start.dedup_key is not None and self.dedup_keys is not None:
            try:
                await self.dedup_keys.record(start.request.flow_id, start.dedup_key, answer)
            except Exception as exc:  # the key's lease lapses: a duplicate then runs
                log.warning("dedup_answer_not_recorded", error=repr(exc))
        self.replies.send(reply_to, request_id, RESULT, answer.model_dump_json().encode())
        return None

    async def _store_waiting(self, start: StartRun, suspension: Suspension) -> RunResult | None:
        """A run stopped in a `delay` step (or handed over at a `respond` step): stored
        (delays.py), and, if async, reported to its ingress as out of its queue. None
        once stored; the failed result when its workspace is past a bound. Raises
        `Unavailable` when the database is away."""
        request_id = start.request.request_id
        if self.delays is None:  # a runner wired without delays: no such flow can run
            error = FlowError("this runner cannot store runs for delay steps")
            return error_result(request_id, error, Outcome.FAILED, suspension.state.started_at)
        try:
            await self.delays.store(start, suspension)
        except WaitingBoundExceeded as exc:
            log.warning("waiting_run_refused", reason=str(exc))
            return bound_failure(start, suspension, str(exc))
        if start.request.mode == RunMode.ASYNC and self.drain_reports is not None:
            self.drain_reports.finished(start.origin, request_id)
        return None

    async def _record_while_awaited(
        self, start: StartRun, request: bytes, result: RunOutput
    ) -> bool:
        """A sync run's `run.finished`, tried again while the broker fails over (a node
        lost: a second or a few), for as long as its caller waits; False if never
        confirmed by then."""
        waits_until = start.deadline or datetime.now(UTC) + SYNC_RECORD_GRACE
        for failures in itertools.count(1):
            try:
                await self._record(request, result)
                return True
            except Unavailable:
                left_s = (waits_until - datetime.now(UTC)).total_seconds()
                if left_s <= 0:
                    return False
                delay_s = min(SYNC_RECORD_RETRY.delay_s(failures), left_s)
                log.warning("run_record_retried", in_s=delay_s)
                await asyncio.sleep(delay_s)
        raise AssertionError("unreachable")

    async def _enqueue_callback(self, start: StartRun, result: RunOutput) -> None:
        """After `run.finished` is confirmed and before the run is marked finished: a
        runner dying in between runs it again and enqueues again (same webhook-id), so a
        callback is never lost. Raises `Unavailable` (the batch is delivered again)."""
        if self.callbacks is None:
            return
        # The cached copy the run used (a replay's was just read); None: deleted since.
        flow = await self.flows.get(start.request.flow_id, max(start.flow_version, 1))
        if flow is not None and flow.callback is not None:
            await self.callbacks.enqueue(start.request, result.decoded(), flow.callback)

    async def _split(self, delivery: Delivery, starts: list[StartRun]) -> None:
        """Publish each run as a message of its own (confirmed); the batch is acked
        once all are."""
        try:
            for start in starts:
                expiration_s = None
                if start.deadline is not None:
                    left = (start.deadline - datetime.now(UTC)).total_seconds()
                    expiration_s = max(0.001, left)
                await self.broker.publish(
                    StartRuns(items=[start]).model_dump_json().encode(),
                    routing_key=delivery.routing_key,
                    message_type=delivery.message_type,
                    reply_to=delivery.reply_to,
                    expiration_s=expiration_s,
                )
        except Unavailable as exc:
            raise Retry("the split runs were not all published") from exc

    async def _execute(
        self,
        start: StartRun,
        encoded_request: bytes,
        ticket: _Ticket | None = None,
        announce: bool = False,
    ) -> RunOutput | Suspension:
        """`encoded_request`: `start.request`, encoded. `ticket`: an async run, admitted
        (`_admit`) just before it goes to the pool. `announce`: publish `run.started`
        once it does (after `held_starts`' hold, if it is still going then)."""
        request = start.request
        started_at = datetime.now(UTC)
        if start.deadline is not None and start.deadline <= started_at:
            error = Timeout(
                f"the run was not started before its caller gave up (request {request.request_id})"
            )
            return RunOutput.of(
                error_result(request.request_id, error, Outcome.EXPIRED, started_at)
            )
        flow = await self.flows.get(request.flow_id, start.flow_version)
        if flow is None:
            return RunOutput.of(
                error_result(
                    request.request_id, NotFound("no such flow"), Outcome.FAILED, started_at
                )
            )
        # Checked on the copy just read (a replay reads the flow afresh), so a flow paused
        # a moment ago is seen: no window between a check and the run.
        if start.unless_paused and flow.snapshot.definition.get("status") == "paused":
            raise Conflict(
                "the flow is paused: unpause it, or replay with force",
                data={"flow_id": request.flow_id},
            )
        timeout_s = self.accept_run_timeout_s if start.accept_on_timeout else flow.timeout_s
        resume = resumed_of(start)
        snapshot, snapshot_encoded = flow.snapshot, flow.snapshot_encoded
        if resume is not None:
            # After a delay: the flow as the run began; a run whose caller a `respond`
            # step answered has the budget of a run nobody waits for.
            snapshot = resume.flow
            snapshot_encoded = snapshot.model_dump_json().encode()
            if resume.answered is not None:
                timeout_s = self.accept_run_timeout_s
        if start.deadline is not None:
            timeout_s = min(timeout_s, (start.deadline - started_at).total_seconds())
        held = False
        if ticket is not None:
            try:
                held = self._admit(start, ticket.batch)
            finally:
                ticket.decide()
        held_start: int | None = None
        if announce and self.started is not None:
            # Best effort, batched, not awaited: lets the debugger show `running`.
            if self.held_starts is not None and not start.accept_on_timeout:
                # Only if the run is still going after the hold (started_hold.py).
                held_start = self.held_starts.hold(encoded_request, started_at)
            else:
                # At once: a sync run accepted on its timeout has no other record while
                # it runs, and its caller is sent to the status URL at that timeout,
                # which may be shorter than the hold.
                self.started.publish_encoded_soon(progress_json(encoded_request, datetime.now(UTC)))
        self._runs_awaited += 1
        try:
            return await self.pool.run_encoded(
                request.request_id, encoded_request, snapshot, snapshot_encoded, timeout_s, resume
            )
        finally:
            self._runs_awaited -= 1
            if held_start is not None:
                assert self.held_starts is not None
                self.held_starts.withdraw(held_start)
            if held:
                assert ticket is not None
                self._release(ticket.batch, request.workspace_id)

    async def _record(self, request: bytes, result: RunOutput) -> None:
        """`run.finished` (confirmed) of the request and the result, both as encoded:
        a `RunFinished` spliced of them."""
        await self.finished.publish_encoded(finished_json(request, result.encoded))

"""The direct path of sync runs: a sync message's runs that need nothing but their
result, record and reply are carried from callbacks instead of a task each.

When a run takes it (`DirectRuns.run` says): a sync run of a flow in the cache
(`FlowCache.cached`) with no dedup key, replay check (`unless_paused`), early accept,
resume or repeat, with traces off and its caller's deadline not yet past. Any other run
goes the way of any run (`RunService._one`).

What it does: the run goes to the pool at once (`WorkerPool.submit_encoded`); when its
result comes it is counted in the metrics and its `run.finished` published; once that is
confirmed the caller is answered and the run's finished mark handed over, for its
message to wait for (`DirectMessage.marks`) before the ack. No task, timer, `gather`,
span or awaited mark per run. Whatever else a result needs (a suspension to store or
hand over, a record tried again, a run the pool failed) goes on in a task of its own,
in the request's span, through the same `RunService` steps any run takes
(`conclude`, `record_and_answer`).

It mirrors `RunService._run_one`'s steps in callback form, in the same order and with the
same fallbacks: a change to one must be checked against the other."""

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

import structlog

from services.runner.finished import FinishedRuns
from services.runner.flow_cache import FlowCache
from services.runner.metrics import RunnerMetrics
from services.runner.pool import WorkerPool
from services.runner.worker_protocol import RunOutput, Suspension
from shared import tracing
from shared.errors import Unavailable
from shared.messaging import naming
from shared.messaging.batching import BatchPublisher
from shared.messaging.rpc import ERROR, RESULT, GroupedReplies, error_body
from shared.schemas.runs import RunFinished, StartRun, finished_json, request_json

log = structlog.get_logger(__name__)

# `RunService._conclude`: from a run's result on (a suspension stored or handed over,
# the result recorded and answered).
Conclude = Callable[[StartRun, bytes, RunOutput | Suspension, str], Coroutine[Any, Any, None]]
# `RunService._record_and_answer`: a sync run's record, tried again while its caller
# waits, then its answer and mark.
RecordAndAnswer = Callable[[StartRun, bytes, RunOutput, str], Coroutine[Any, Any, None]]


class DirectMessage:
    """A sync message's runs on the direct path: how many are not done yet, their marks,
    and the tasks of those that went on another way."""

    def __init__(self) -> None:
        self.left = 0
        self.marks: list[asyncio.Future[None]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._all_done: asyncio.Future[None] | None = None

    def done_one(self) -> None:
        self.left -= 1
        if self.left == 0 and self._all_done is not None and not self._all_done.done():
            self._all_done.set_result(None)

    def follow(self, step: Coroutine[Any, Any, None]) -> None:
        """The run goes on in a task of its own (awaited by `finished`)."""
        self._tasks.append(asyncio.get_running_loop().create_task(step))
        self.done_one()

    def failed(self, start: StartRun, reply_to: str, replies: GroupedReplies) -> None:
        log.exception("direct_run_failed", request_id=start.request.request_id)
        error = Unavailable("the runner cannot run the flow right now")
        with contextlib.suppress(Exception):
            replies.send(reply_to, start.request.request_id, ERROR, error_body(error))
        self.done_one()

    async def finished(self) -> None:
        """Once every run is done (answered, or gone on in its task) and those tasks
        ended."""
        if self.left:
            self._all_done = asyncio.get_running_loop().create_future()
            await self._all_done
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


class DirectRuns:
    """Runs sync runs on the direct path, with what it needs of the `RunService` that
    owns it: its collaborators, and the two steps a run goes on with when its result
    needs more than a record and a reply."""

    def __init__(
        self,
        flows: FlowCache,
        pool: WorkerPool,
        finished: BatchPublisher[RunFinished],
        replies: GroupedReplies,
        finished_runs: FinishedRuns,
        metrics: RunnerMetrics,
        conclude: Conclude,
        record_and_answer: RecordAndAnswer,
    ) -> None:
        self.flows = flows
        self.pool = pool
        self.finished = finished
        self.replies = replies
        self.finished_runs = finished_runs
        self.metrics = metrics
        self._conclude = conclude
        self._record_and_answer = record_and_answer
        self.running = 0  # in the worker pool now (part of `RunService.runs_running`)

    def run(self, start: StartRun, reply_to: str, message: DirectMessage) -> bool:
        """The run on the direct path, if it can take it (False: it goes the way of any
        run, `RunService._one`). The same steps and order as `RunService._run_one`."""
        if (
            start.dedup_key is not None
            or start.resume is not None
            or start.repeated is not None
            or start.unless_paused
            or start.accept_on_timeout
            or tracing.enabled()
        ):
            return False
        request = start.request
        flow = self.flows.cached(request.flow_id, start.flow_version)
        if flow is None:
            return False
        timeout_s = flow.timeout_s
        if start.deadline is not None:
            # Its caller's deadline: past it, `RunService._execute` records it `expired`.
            timeout_s = min(timeout_s, (start.deadline - datetime.now(UTC)).total_seconds())
            if timeout_s <= 0:
                return False
        encoded = request_json(request)
        ran = self.pool.submit_encoded(
            request.request_id, encoded, flow.snapshot, flow.snapshot_encoded, timeout_s
        )
        self.running += 1
        message.left += 1
        ran.add_done_callback(lambda done: self._ran(start, encoded, reply_to, message, done))
        return True

    def _ran(
        self,
        start: StartRun,
        request: bytes,
        reply_to: str,
        message: DirectMessage,
        ran: "asyncio.Future[RunOutput | Suspension]",
    ) -> None:
        self.running -= 1
        result = None if ran.cancelled() or ran.exception() else ran.result()
        if not isinstance(result, RunOutput):  # a suspension to store, or an error
            message.follow(self._go_on(start, self._concluded(start, request, reply_to, ran)))
            return
        try:
            self.metrics.observe_run(result.outcome, result.duration_s)
            confirmed = self.finished.submit_encoded(finished_json(request, result.encoded))
        except Exception:  # a bug: its caller hears, the message is not held forever
            message.failed(start, reply_to, self.replies)
            return
        confirmed.add_done_callback(
            lambda done: self._recorded(start, request, result, reply_to, message, done)
        )

    def _recorded(
        self,
        start: StartRun,
        request: bytes,
        result: RunOutput,
        reply_to: str,
        message: DirectMessage,
        confirmed: "asyncio.Future[None]",
    ) -> None:
        if confirmed.cancelled() or confirmed.exception() is not None:
            # Tried again for as long as its caller waits, as any sync run's record.
            message.follow(
                self._go_on(start, self._record_and_answer(start, request, result, reply_to))
            )
            return
        request_id = start.request.request_id
        try:
            self.replies.send(reply_to, request_id, RESULT, result.encoded)
            message.marks.append(self.finished_runs.mark_soon(request_id))
        except Exception:  # a bug: its caller hears, the message is not held forever
            message.failed(start, reply_to, self.replies)
            return
        message.done_one()

    async def _concluded(
        self,
        start: StartRun,
        request: bytes,
        reply_to: str,
        ran: "asyncio.Future[RunOutput | Suspension]",
    ) -> None:
        """A direct run's result that needs more than a record and a reply (a suspension
        to store or hand over), or its run that failed in the pool: as in
        `RunService._run_one`."""
        try:
            result = ran.result()
        except Exception:
            log.exception("run_not_started")
            error = Unavailable("the runner cannot run the flow right now")
            self.replies.send(reply_to, start.request.request_id, ERROR, error_body(error))
            raise
        await self._conclude(start, request, result, reply_to)

    async def _go_on(self, start: StartRun, step: Coroutine[Any, Any, None]) -> None:
        """A direct run going on in a task: in its request's span and log context, as in
        `RunService._one`."""
        structlog.contextvars.bind_contextvars(request_id=start.request.request_id)
        with tracing.processing(
            naming.SYNC_RUNS_QUEUE,
            start.request.trace,
            **{
                "flowhooks.request_id": start.request.request_id,
                "flowhooks.flow_id": start.request.flow_id,
            },
        ):
            await step

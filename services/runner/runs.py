"""Runs webhook requests, taken in batches from the sync and the async run queues: sync
runs are answered on the caller's reply queue (the sender's answer), async runs are
acked only after their outcomes were published. The flows themselves run in the worker
pool (`pool.py`), never here. Either way `run.finished` carries the request, the result
and the step trace to the debugger."""

import asyncio
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from services.runner.callbacks import CallbackSender
from services.runner.dedup import DedupKeys
from services.runner.definition import WebhookCallback, WebhookTrigger
from services.runner.engine import error_result
from services.runner.finished import FinishedRuns
from services.runner.metrics import RunnerMetrics
from services.runner.pool import WorkerPool
from services.runner.store import FlowStore
from services.runner.worker_protocol import FlowSnapshot
from shared.errors import Conflict, FlowError, NotFound, Timeout, Unavailable
from shared.messaging.batching import BatchPublisher, Unencodable
from shared.messaging.connection import Broker
from shared.messaging.rpc import ERROR, RESULT, GroupedReplies, error_body
from shared.schemas.runs import (
    CURRENT_VERSION,
    RunFinished,
    RunProgress,
    RunResult,
    StartRun,
    StartRuns,
)
from shared.service import Delivery, Retry

log = structlog.get_logger(__name__)

# How long a sync run without a deadline (a replay) tries to get its record confirmed
# before its caller is answered 503.
SYNC_RECORD_GRACE = timedelta(seconds=10)


@dataclass(frozen=True)
class CachedFlow:
    snapshot: FlowSnapshot
    timeout_s: float
    # `webhook.callback` as stored (secret sealed); None: no completion callback.
    callback: WebhookCallback | None = None


class FlowCache:
    """Flows as saved, by id; reloaded when a request names a newer version. The
    supervisor never parses templates: workers do (user code stays in them)."""

    def __init__(self, store: FlowStore, size: int = 10_000) -> None:
        self.store = store
        self.size = size
        self._flows: OrderedDict[str, CachedFlow] = OrderedDict()

    async def get(self, flow_id: str, min_version: int) -> CachedFlow | None:
        cached = self._flows.get(flow_id)
        # A replay (`CURRENT_VERSION`) always reads the flow afresh.
        if (
            cached is not None
            and min_version != CURRENT_VERSION
            and cached.snapshot.version >= min_version
        ):
            self._flows.move_to_end(flow_id)
            return cached
        row = await self.store.get(flow_id)
        if row is None:
            self._flows.pop(flow_id, None)
            return None
        snapshot = FlowSnapshot(
            id=row.id,
            workspace_id=row.workspace_id,
            version=row.version,
            definition={"name": row.name, "status": row.status, **without_auth(row.definition)},
        )
        trigger = WebhookTrigger.model_validate(row.definition.get("webhook", {}))
        flow = CachedFlow(snapshot, trigger.timeout_s, trigger.callback)
        self._flows[flow_id] = flow
        if len(self._flows) > self.size:
            self._flows.popitem(last=False)
        return flow


def without_auth(definition: dict[str, Any]) -> dict[str, Any]:
    """The definition a worker gets: no `webhook.auth` nor `webhook.callback`. Their
    secrets are sealed, but the workers run flow authors' templates and need none of it."""
    webhook = definition.get("webhook")
    if not isinstance(webhook, dict) or not {"auth", "callback"} & webhook.keys():
        return definition
    kept = {k: v for k, v in webhook.items() if k not in ("auth", "callback")}
    return {**definition, "webhook": kept}


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
    ) -> None:
        self.broker = broker
        self.metrics = metrics if metrics is not None else RunnerMetrics()
        self.flows = flows
        self.pool = pool
        # run.finished events, many runs to a message; `publish` returns once confirmed.
        self.finished = finished
        # run.started events (None: not sent): best effort, batched, never awaited.
        self.started = started
        self.replies = replies
        self.finished_runs = finished_runs
        self.dedup_keys = dedup_keys
        # The run's own budget for `on_timeout: "accept"` flows: the caller was answered
        # 202 at the flow's timeout; the run goes on up to this (the flows API's maximum).
        self.accept_run_timeout_s = accept_run_timeout_s
        # Completion callbacks of async runs (callbacks.py); None: none are sent.
        self.callbacks = callbacks

    async def on_sync_runs(self, runs: StartRuns, delivery: Delivery) -> None:
        await self._take(runs.items, delivery, reply_to=delivery.reply_to)

    async def on_async_runs(self, runs: StartRuns, delivery: Delivery) -> None:
        await self._take(runs.items, delivery, reply_to=None)

    async def _take(self, starts: list[StartRun], delivery: Delivery, reply_to: str | None) -> None:
        if delivery.redelivered:
            # Its runner died mid-batch: run only what had not finished, and each on its
            # own from now on, so that a request that kills runners fails alone.
            done = await self.finished_runs.which([s.request.request_id for s in starts])
            starts = [s for s in starts if s.request.request_id not in done]
            if len(starts) > 1:
                await self._split(delivery, starts)
                return
        outcomes = await asyncio.gather(
            *(self._one(start, reply_to) for start in starts), return_exceptions=True
        )
        failed = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
        if failed and reply_to is None:
            # The broker or the database is away: deliver it again later; the runs that
            # were recorded are marked and will not run again.
            raise Retry(f"{len(failed)} async runs not recorded: {failed[0]!r}")

    async def _one(self, start: StartRun, reply_to: str | None) -> None:
        """Run, record and (sync) answer one request. Raises only for infrastructure
        failures (the broker or the database away)."""
        request_id = start.request.request_id
        structlog.contextvars.bind_contextvars(request_id=request_id)
        if (reply_to is None or start.accept_on_timeout) and self.started is not None:
            # Best effort, batched, not awaited: lets the debugger show `running`.
            self.started.publish_soon(RunProgress(request=start.request, at=datetime.now(UTC)))
        try:
            result = await self._execute(start)
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
        self.metrics.run_duration.labels(result.outcome).observe(
            (result.finished_at - result.started_at).total_seconds()
        )
        if reply_to is None:
            await self._record(start, result)
        elif not await self._record_while_awaited(start, result):
            # A 200 for a run the debugger never gets would be a loss: the caller is told
            # to try again instead (the run's effects happened; a dedup key makes the
            # retry safe). Not marked finished: a redelivered batch would run it again.
            log.error("run_not_recorded", outcome=result.outcome)
            error = Unavailable("the run finished but could not be recorded; try again")
            self.replies.send(reply_to, request_id, ERROR, error_body(error))
            return
        if start.dedup_key is not None and self.dedup_keys is not None:
            # Before the answer: a duplicate sent after the first's answer finds it.
            await self.dedup_keys.record(start.request.flow_id, start.dedup_key, result)
        if reply_to is not None:
            self.replies.send(reply_to, request_id, RESULT, result.model_dump_json().encode())
        if reply_to is None:
            await self._enqueue_callback(start, result)
        await self.finished_runs.mark(request_id)

    async def _record_while_awaited(self, start: StartRun, result: RunResult) -> bool:
        """A sync run's `run.finished`, tried again while the broker fails over (a node
        lost: a second or a few), for as long as its caller waits; False if never
        confirmed by then."""
        waits_until = start.deadline or datetime.now(UTC) + SYNC_RECORD_GRACE
        delay_s = 0.1
        while True:
            try:
                await self._record(start, result)
                return True
            except Unavailable:
                left_s = (waits_until - datetime.now(UTC)).total_seconds()
                if left_s <= 0:
                    return False
                log.warning("run_record_retried", in_s=min(delay_s, left_s))
                await asyncio.sleep(min(delay_s, left_s))
                delay_s = min(delay_s * 2, 1.0)

    async def _enqueue_callback(self, start: StartRun, result: RunResult) -> None:
        """After `run.finished` is confirmed and before the run is marked finished: a
        runner dying in between runs it again and enqueues again (same webhook-id), so a
        callback is never lost. Raises `Unavailable` (the batch is delivered again)."""
        if self.callbacks is None:
            return
        # The cached copy the run used (a replay's was just read); None: deleted since.
        flow = await self.flows.get(start.request.flow_id, max(start.flow_version, 1))
        if flow is not None and flow.callback is not None:
            await self.callbacks.enqueue(start.request, result, flow.callback)

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

    async def _execute(self, start: StartRun) -> RunResult:
        request = start.request
        started_at = datetime.now(UTC)
        if start.deadline is not None and start.deadline <= started_at:
            error = Timeout(
                f"the run was not started before its caller gave up (request {request.request_id})"
            )
            return error_result(request.request_id, error, "expired", started_at)
        flow = await self.flows.get(request.flow_id, start.flow_version)
        if flow is None:
            return error_result(request.request_id, NotFound("no such flow"), "failed", started_at)
        # Checked on the copy just read (a replay reads the flow afresh), so a flow paused
        # a moment ago is seen: no window between a check and the run.
        if start.unless_paused and flow.snapshot.definition.get("status") == "paused":
            raise Conflict(
                "the flow is paused: unpause it, or replay with force",
                data={"flow_id": request.flow_id},
            )
        timeout_s = self.accept_run_timeout_s if start.accept_on_timeout else flow.timeout_s
        if start.deadline is not None:
            timeout_s = min(timeout_s, (start.deadline - started_at).total_seconds())
        return await self.pool.run(request, flow.snapshot, timeout_s)

    async def _record(self, start: StartRun, result: RunResult) -> None:
        try:
            await self.finished.publish(RunFinished(request=start.request, result=result))
        except Unencodable as exc:
            # Workers send only encodable results, so this is a bug's safety net: the
            # run is still recorded, as failed, with the reason and without its trace.
            log.error("run_finished_unencodable", error=str(exc))
            error = FlowError(f"the run's result cannot be recorded: {exc}")
            reduced = error_result(start.request.request_id, error, "failed", result.started_at)
            await self.finished.publish(RunFinished(request=start.request, result=reduced))

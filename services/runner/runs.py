"""Runs webhook requests: sync ones as the `runner.start_run` RPC (the reply is the
sender's answer), async ones from the durable async queue (acked only after the run's
outcome was published). The flows themselves run in the worker pool (`pool.py`), never
here. Either way `run.finished` carries the request, the result and the step trace to
the debugger."""

import asyncio
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog
from aio_pika.abc import AbstractIncomingMessage
from pydantic import ValidationError

from services.runner.definition import WebhookTrigger
from services.runner.engine import error_result
from services.runner.pool import WorkerPool
from services.runner.store import FlowStore
from services.runner.worker_protocol import FlowSnapshot
from shared.errors import FlowError, NotFound, Timeout, Unavailable
from shared.messaging.batching import BatchPublisher, Unencodable
from shared.schemas.runs import RunFinished, RunProgress, RunResult, StartRun

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class CachedFlow:
    snapshot: FlowSnapshot
    timeout_s: float


class FlowCache:
    """Flows as saved, by id; reloaded when a request names a newer version. The
    supervisor never parses templates: workers do (user code stays in them)."""

    def __init__(self, store: FlowStore, size: int = 10_000) -> None:
        self.store = store
        self.size = size
        self._flows: OrderedDict[str, CachedFlow] = OrderedDict()

    async def get(self, flow_id: str, min_version: int) -> CachedFlow | None:
        cached = self._flows.get(flow_id)
        if cached is not None and cached.snapshot.version >= min_version:
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
            definition={"name": row.name, "status": row.status, **row.definition},
        )
        trigger = WebhookTrigger.model_validate(row.definition.get("webhook", {}))
        flow = CachedFlow(snapshot, trigger.timeout_s)
        self._flows[flow_id] = flow
        if len(self._flows) > self.size:
            self._flows.popitem(last=False)
        return flow


class RunService:
    def __init__(
        self,
        flows: FlowCache,
        pool: WorkerPool,
        finished: BatchPublisher[RunFinished],
        started: BatchPublisher[RunProgress] | None,
    ) -> None:
        # run.started events (None: not sent): best effort, batched, never awaited.
        self.started = started
        self.flows = flows
        self.pool = pool
        # run.finished events, many runs to a message; `publish` returns once confirmed.
        self.finished = finished
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.idle.set()

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
        timeout_s = flow.timeout_s
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

    async def start_sync_run(self, start: StartRun) -> RunResult:
        """The `runner.start_run` RPC handler (sync webhooks)."""
        structlog.contextvars.bind_contextvars(request_id=start.request.request_id)
        result = await self._execute(start)
        try:
            await self._record(start, result)
        except Unavailable:
            # The sender still gets its answer; the debugger misses this one run.
            log.error("run_not_recorded", outcome=result.outcome)
        return result

    async def on_async_run(self, message: AbstractIncomingMessage) -> None:
        """Consumer of the async queue. Acked only once the outcome is published; a
        crash or a failed publish leaves it to the broker to deliver again (up to the
        queue's delivery limit, then it is dead-lettered to the debugger)."""
        self.in_flight += 1
        self.idle.clear()
        try:
            try:
                start = StartRun.model_validate_json(message.body)
            except ValidationError:
                log.error("bad_start_run", body=message.body[:200])
                await message.reject(requeue=False)  # dead-lettered: the debugger sees it
                return
            structlog.contextvars.bind_contextvars(request_id=start.request.request_id)
            if self.started is not None:
                # Best effort, batched, not awaited: lets the debugger show `running`.
                self.started.publish_soon(RunProgress(request=start.request, at=datetime.now(UTC)))
            try:
                result = await self._execute(start)
                await self._record(start, result)
            except Exception:
                log.exception("async_run_not_recorded")
                await asyncio.sleep(1)
                await message.nack(requeue=True)
                return
            await message.ack()
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self.idle.set()

    async def wait_idle(self, timeout_s: float) -> None:
        try:
            await asyncio.wait_for(self.idle.wait(), timeout_s)
        except TimeoutError:
            log.warning("async_runs_still_running", count=self.in_flight)

"""A runner worker process: the only place where flows (user code) run.

Started by the supervisor (`services/runner/pool.py`) as
`python -m services.runner.worker SOCKET_FD MARKER_FD`. It runs many flows at once on
its own event loop, each metered (`run_meter.py`), under an address-space bound
(`RLIMIT_AS`), and sends each result back encoded on its own, so that a result that
cannot be encoded fails its own run and nobody else's. It exits when the supervisor
closes the socket, and dies with the supervisor.
"""

import asyncio
import ctypes
import os
import resource
import signal
import socket
import sys
import time
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any

import structlog
import uvloop
from pydantic import ValidationError

from services.runner.bounds import RunBounds
from services.runner.definition import parse_definition
from services.runner.engine import Engine, Flow
from services.runner.run_meter import CpuBudgetExceeded, MeteredRun, SliceMarker
from services.runner.steps.base import EarlyAnswer, RunState
from services.runner.steps.delay import RunSuspended
from services.runner.steps.respond import with_answer
from services.runner.templates import TemplateEngine
from services.runner.worker_protocol import (
    Answered,
    FlowSnapshot,
    Resumed,
    Suspension,
    WorkItem,
    WorkSuspended,
    encode_result,
    frame,
    frame_of,
    read_frame,
    results_frame,
)
from shared import heap, tracing
from shared.errors import FlowError, Timeout
from shared.logging import configure_logging
from shared.outbound import AddressPolicy, OutboundHttp
from shared.schemas.runs import RunResult, error_result
from shared.schemas.vocabulary import Outcome
from shared.tracing import configure_tracing

log = structlog.get_logger(__name__)

_PR_SET_PDEATHSIG = 1
# Parsed flows kept per worker (by id and version).
FLOW_CACHE_SIZE = 1000


def _has_http_step(value: Any) -> bool:
    """Whether a saved definition holds an `http` step anywhere (a loop's or an
    `on_error`'s steps too). Anything else typed "http" only loads aiohttp early."""
    if isinstance(value, dict):
        return value.get("type") == "http" or any(_has_http_step(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_http_step(v) for v in value)
    return False


class Worker:
    def __init__(self, bounds: RunBounds, marker: SliceMarker) -> None:
        self.bounds = bounds
        self.marker = marker
        self.templates = TemplateEngine.bounded(bounds)
        self.http = OutboundHttp(AddressPolicy(list(bounds.http_allow_networks)))
        self.engine = Engine(self.templates, bounds, self.http)
        self._flows: OrderedDict[tuple[str, int], Flow] = OrderedDict()
        self._done: list[bytes] = []  # suspended runs, encoded
        self._results: list[tuple[int, RunResult, bytes]] = []  # finished runs
        self._has_done = asyncio.Event()
        self._runs: set[asyncio.Task[None]] = set()

    def flow(self, snapshot: FlowSnapshot) -> Flow:
        key = (snapshot.id, snapshot.version)
        flow = self._flows.get(key)
        if flow is None:
            # Saved flows were validated; a large max so a flow saved under a higher
            # cap still runs.
            definition = parse_definition(
                snapshot.definition, self.templates, max_timeout_s=float("inf")
            )
            flow = Flow(snapshot.id, snapshot.workspace_id, snapshot.version, definition)
            self._flows[key] = flow
            if len(self._flows) > FLOW_CACHE_SIZE:
                self._flows.popitem(last=False)
        self._flows.move_to_end(key)
        return flow

    def _prepare_http(self, snapshot: FlowSnapshot) -> None:
        """aiohttp is imported at the first flow with an `http` step, not at start (most
        workers never send a request, and it costs ~0.2 s of CPU), and here, before the
        run is metered: in its first request it would be charged to that run's CPU
        budget and could hold one slice past FLOWHOOKS_RUNNER_RUN_SLICE_S. A flow already
        parsed (cached) was checked at its first run."""
        if self.http.prepared or (snapshot.id, snapshot.version) in self._flows:
            return
        if _has_http_step(snapshot.definition):
            self.http.prepare()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sender = asyncio.create_task(self._send_done(writer))
        writer.write(frame(b'{"ready":true}'))
        try:
            while True:
                try:
                    message = await read_frame(reader)
                except asyncio.IncompleteReadError:
                    return  # the supervisor closed: shutdown
                for raw in message.get("runs", ()):
                    task = asyncio.create_task(self._run_item(raw))
                    self._runs.add(task)
                    task.add_done_callback(self._runs.discard)
        finally:
            sender.cancel()
            await self.http.close()

    async def _run_item(self, raw: dict[str, object]) -> None:
        key = int(raw.get("key", 0))  # type: ignore[call-overload]
        started_at = datetime.now(UTC)
        try:
            item = WorkItem.model_validate(raw)
        except ValidationError as exc:
            error = FlowError(f"the run could not be read: {exc.error_count()} errors")
            self._finish(key, error_result("", error, Outcome.FAILED, started_at))
            return
        structlog.contextvars.bind_contextvars(request_id=item.request.request_id)
        self._prepare_http(item.flow)
        state = RunState(self.bounds)
        if item.resume is not None:  # after a `delay`: the run as it was stored
            state.trace = list(item.resume.trace)
            state.loop_iterations = item.resume.loop_iterations
            state.dropped_steps = item.resume.dropped_steps
            if item.resume.answered is not None:
                state.answered = EarlyAnswer(**dict(item.resume.answered))
        try:
            result = await MeteredRun(
                self._execute(item, state), key, self.marker, self.bounds.run_cpu_s
            )
        except RunSuspended as suspended:
            self._suspend(key, item, state, suspended, started_at)
            return
        except CpuBudgetExceeded:
            error = FlowError(
                f"the run used more than {self.bounds.run_cpu_s:g} s of CPU time"
                " (FLOWHOOKS_RUNNER_RUN_CPU_S)"
            )
            result = error_result(
                item.request.request_id, error, Outcome.FAILED, started_at, self.engine.trace(state)
            )
        except Exception as exc:  # anything at all: this run's failure, not the worker's
            log.warning("run_crashed", error=repr(exc)[:500])
            error = FlowError(f"the run failed: {type(exc).__name__}: {str(exc)[:500]}")
            result = error_result(item.request.request_id, error, Outcome.FAILED, started_at)
        self._finish(key, with_answer(result, state.answered))

    async def _execute(self, item: WorkItem, state: RunState) -> RunResult:
        flow = self.flow(item.flow)
        started_at, started = datetime.now(UTC), time.monotonic()
        timeout_s = item.timeout_s
        state.deadline = started + timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                # The runner's span for the request is the parent of its steps' spans.
                with tracing.span(
                    "flowhooks.run",
                    parent=item.request.trace or None,
                    attributes=_run_attributes(item),
                ):
                    result = await self.engine.run(flow, item.request, state, item.resume)
        except TimeoutError:
            result = None
        # A run whose last slice ran past the deadline is late too: the record says what
        # the sender got.
        elapsed = (datetime.now(UTC) - started_at).total_seconds()
        if result is None or elapsed > timeout_s:
            request_id = item.request.request_id
            error = Timeout(
                f"the flow did not finish within {timeout_s:g} s (request {request_id})",
                data={"request_id": request_id},
            )
            return error_result(
                request_id, error, Outcome.TIMEOUT, started_at, self.engine.trace(state)
            )
        return result

    def _suspend(
        self,
        key: int,
        item: WorkItem,
        state: RunState,
        suspended: RunSuspended,
        started_at: datetime,
    ) -> None:
        """The run stopped in a `delay` step, or handed over at a `respond` step: its
        state goes to the supervisor, which stores it (services/runner/delays.py) and,
        for a `respond`, then answers the caller."""
        steps = self.flow(item.flow).definition.steps
        next_step = 1 + next(i for i, step in enumerate(steps) if step.ref_id == suspended.ref_id)
        if state.trace and state.trace[-1].ref_id == suspended.ref_id:
            state.trace[-1].output = suspended.output
        answered = state.answered
        try:
            resumed = Resumed(
                next_step=next_step,
                values=suspended.values,
                trace=self.engine.trace(state),
                started_at=item.resume.started_at if item.resume else started_at,
                answered=Answered(**answered.__dict__) if answered is not None else None,
                loop_iterations=state.loop_iterations,
                dropped_steps=state.dropped_steps,
                flow=item.flow,
            )
            suspension = Suspension(
                request_id=item.request.request_id,
                resume_at=suspended.resume_at,
                state=resumed,
                answers=suspended.answers,
            )
            encoded = WorkSuspended(key=key, suspended=suspension).model_dump_json().encode()
        except ValueError as exc:  # a value pydantic cannot encode: a lone surrogate
            error = FlowError(f"the run's state cannot be stored for its delay: {str(exc)[:300]}")
            result = error_result(
                item.request.request_id,
                error,
                Outcome.FAILED,
                started_at,
                self.engine.trace(state),
            )
            self._finish(key, with_answer(result, answered))
            return
        self._done.append(encoded)
        self._has_done.set()

    def _finish(self, key: int, result: RunResult) -> None:
        try:
            encoded = encode_result(result)
        except ValueError as exc:  # pydantic's serialisation error: e.g. a lone surrogate
            error = FlowError(f"the run's result cannot be encoded: {str(exc)[:300]}")
            result = error_result(result.request_id, error, Outcome.FAILED, result.started_at)
            encoded = result.model_dump_json().encode()
        self._results.append((key, result, encoded))
        self._has_done.set()

    async def _send_done(self, writer: asyncio.StreamWriter) -> None:
        """Results finished while the last write drained go together in one frame."""
        while True:
            await self._has_done.wait()
            self._has_done.clear()
            results, self._results = self._results, []
            done, self._done = self._done, []
            if results:
                writer.write(results_frame(results))
            if done:
                writer.write(frame_of("done", done))
            await writer.drain()


def _run_attributes(item: WorkItem) -> dict[str, str | int | float | bool]:
    if not tracing.enabled():
        return {}
    return {
        "flowhooks.request_id": item.request.request_id,
        "flowhooks.flow_id": item.flow.id,
        "flowhooks.flow_version": item.flow.version,
    }


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # not Linux: the closed socket still ends the worker
    if os.getppid() == 1:
        sys.exit(0)  # the supervisor died before the line above


async def _main(sock_fd: int, marker_fd: int) -> None:
    reader, writer = await asyncio.open_unix_connection(sock=socket.socket(fileno=sock_fd))
    bounds = RunBounds.model_validate(await read_frame(reader))
    limit = bounds.worker_memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    worker = Worker(bounds, SliceMarker(marker_fd))
    heap.settle()  # start-up is over: the imports and the engine live as long as it
    await worker.serve(reader, writer)


def main() -> None:
    _die_with_parent()
    # The supervisor decides when workers stop (after their runs): a Ctrl-C to the
    # process group or a SIGTERM meant for the runner is not for them.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    configure_logging("runner-worker", os.environ.get("FLOWHOOKS_LOG_LEVEL", "info"))
    # Its steps' spans go out from here, under the runner's service name.
    configure_tracing("runner")
    uvloop.run(_main(int(sys.argv[1]), int(sys.argv[2])))


if __name__ == "__main__":
    main()

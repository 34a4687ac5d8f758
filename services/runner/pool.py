"""The supervisor's side of the worker pool: flows never run in the runner's own event
loop (which consumes, replies and publishes), only in worker processes
(`services/runner/worker.py`).

- Runs go to the least busy worker, many to a frame; each worker runs many at once.
- A worker has an address-space bound; a run has a CPU budget that the worker enforces
  between slices, and a slice bound and a wall-clock deadline that the supervisor
  enforces from outside: it kills the worker and records the run it blames (the one
  the worker marked as computing, or the one past its deadline) as `failed` or
  `timeout`, naming the bound. The other runs that were on the killed worker are
  innocent: they run again on another worker (at most `max_attempts` times in all).
- A worker that dies on its own (its memory bound, a crash) is handled the same way:
  the run it was computing is blamed, the others run again.
- No workspace holds more than its share of the slots (`fair_share.py`).
"""

import asyncio
import contextlib
import itertools
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson
import structlog
from pydantic import ValidationError

from services.runner.engine import error_result
from services.runner.fair_share import FairShare
from services.runner.run_meter import SliceMarker
from services.runner.worker_protocol import (
    FlowSnapshot,
    FrameTooLarge,
    WorkerConfig,
    WorkItem,
    frame,
    frame_of,
    read_frame,
)
from shared.errors import ApiError, FlowError, Timeout
from shared.schemas.runs import Outcome, RunResult, WebhookRequest

log = structlog.get_logger(__name__)


@dataclass
class _Run:
    key: int
    request_id: str
    timeout_s: float
    encoded: bytes  # the WorkItem, encoded once
    result: "asyncio.Future[RunResult]"
    deadline: float = 0.0  # monotonic; set when placed on a worker
    attempts: int = 0


@dataclass
class _Blame:
    key: int
    error: ApiError
    outcome: Outcome


@dataclass
class _Worker:
    number: int
    process: asyncio.subprocess.Process
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    marker: SliceMarker
    runs: dict[int, _Run] = field(default_factory=dict)
    outbox: list[bytes] = field(default_factory=list)
    has_outbox: asyncio.Event = field(default_factory=asyncio.Event)
    blame: _Blame | None = None  # set when the supervisor kills it
    tasks: list["asyncio.Task[None]"] = field(default_factory=list)


class WorkerPool:
    def __init__(
        self,
        config: WorkerConfig,
        *,
        workers: int,
        slots_per_worker: int,
        workspace_share: float,
        slice_s: float,
        deadline_grace_s: float = 2.0,
        max_attempts: int = 3,
        tick_s: float = 0.02,
        spawn_timeout_s: float = 30.0,
        log_level: str = "info",
    ) -> None:
        self.config = config
        self.size = workers
        self.fair_share = FairShare(workers * slots_per_worker, workspace_share)
        self.slice_s = slice_s
        self.deadline_grace_s = deadline_grace_s
        self.max_attempts = max_attempts
        self.tick_s = tick_s
        self.spawn_timeout_s = spawn_timeout_s
        self.log_level = log_level
        self._workers: list[_Worker] = []
        self._unplaced: list[_Run] = []
        self._keys = itertools.count(1)
        self._numbers = itertools.count(1)
        self._closing = False
        self._watcher: asyncio.Task[None] | None = None
        self._spawning: set[asyncio.Task[None]] = set()
        # For metrics and tests.
        self.workers_killed = 0
        self.workers_lost = 0
        self.runs_retried = 0

    async def start(self) -> None:
        await asyncio.gather(*(self._spawn() for _ in range(self.size)))
        self._watcher = asyncio.create_task(self._watch())

    @property
    def worker_pids(self) -> list[int]:
        return [worker.process.pid for worker in self._workers]

    async def run(self, request: WebhookRequest, flow: FlowSnapshot, timeout_s: float) -> RunResult:
        """The run's result; never raises for anything the run does."""
        key = next(self._keys)
        item = WorkItem(key=key, request=request, flow=flow, timeout_s=timeout_s)
        run = _Run(
            key,
            request.request_id,
            timeout_s,
            item.model_dump_json().encode(),
            asyncio.get_running_loop().create_future(),
        )
        async with self.fair_share.slot(flow.workspace_id):
            self._place(run)
            return await run.result

    def _place(self, run: _Run) -> None:
        candidates = [worker for worker in self._workers if worker.blame is None]
        if not candidates:
            self._unplaced.append(run)  # placed when a worker is ready again
            return
        worker = min(candidates, key=lambda w: len(w.runs))
        run.deadline = time.monotonic() + run.timeout_s + self.deadline_grace_s
        worker.runs[run.key] = run
        worker.outbox.append(run.encoded)
        worker.has_outbox.set()

    async def _spawn(self) -> None:
        while not self._closing:
            try:
                worker = await self._start_worker()
            except Exception as exc:
                log.error("worker_start_failed", error=repr(exc))
                await asyncio.sleep(1)
                continue
            self._workers.append(worker)
            worker.tasks = [
                asyncio.create_task(self._send(worker)),
                asyncio.create_task(self._receive(worker)),
            ]
            unplaced, self._unplaced = self._unplaced, []
            for run in unplaced:
                self._place(run)
            return

    async def _start_worker(self) -> _Worker:
        ours, theirs = socket.socketpair()
        marker = SliceMarker.create()
        # No secret of the runner's (token keys, database URL or libpq's PG* variables)
        # where user code runs; few malloc arenas: the address-space bound is about
        # memory, not reservations.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOWHOOKS_", "PG"))}
        env.update(MALLOC_ARENA_MAX="2", FLOWHOOKS_LOG_LEVEL=self.log_level)
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "services.runner.worker",
                str(theirs.fileno()),
                str(marker.fd),
                pass_fds=(theirs.fileno(), marker.fd),
                env=env,
            )
        except BaseException:
            ours.close()
            marker.close()
            raise
        finally:
            theirs.close()
        marker.watch(process.pid)  # where the slice bound reads the worker's CPU time
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        writer.write(frame(self.config.model_dump_json().encode()))
        worker = _Worker(next(self._numbers), process, reader, writer, marker)
        try:
            ready = await asyncio.wait_for(read_frame(reader), self.spawn_timeout_s)
            if ready != {"ready": True}:
                raise RuntimeError(f"unexpected first frame from a worker: {ready!r}")
        except BaseException:
            process.kill()
            await process.wait()
            writer.close()
            marker.close()
            raise
        log.info("worker_started", worker=worker.number, pid=process.pid)
        return worker

    async def _send(self, worker: _Worker) -> None:
        """Runs placed while the last frame drained go together in the next one."""
        try:
            while True:
                await worker.has_outbox.wait()
                worker.has_outbox.clear()
                batch, worker.outbox = worker.outbox, []
                worker.writer.write(frame_of("runs", batch))
                await worker.writer.drain()
        except (ConnectionError, RuntimeError):
            pass  # the worker is gone; `_receive` handles it

    async def _receive(self, worker: _Worker) -> None:
        try:
            while True:
                message = await read_frame(worker.reader)
                for done in message.get("done", ()):
                    self._finished(worker, done)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except (FrameTooLarge, orjson.JSONDecodeError, AttributeError, TypeError) as exc:
            log.error("worker_protocol_error", worker=worker.number, error=repr(exc))
        await self._lost(worker)

    def _finished(self, worker: _Worker, done: dict[str, object]) -> None:
        run = worker.runs.pop(int(done["key"]), None)  # type: ignore[call-overload]
        if run is None or run.result.done():
            return
        try:
            result = RunResult.model_validate(done["result"])
        except ValidationError:
            error = FlowError("the run's result could not be read")
            result = error_result(run.request_id, error, "failed", _now())
        run.result.set_result(result)

    def _kill(self, worker: _Worker, blame: _Blame) -> None:
        if worker.blame is not None:
            return
        worker.blame = blame
        self.workers_killed += 1
        log.warning(
            "worker_killed", worker=worker.number, run=blame.key, reason=blame.error.message
        )
        with contextlib.suppress(ProcessLookupError):  # it may have died meanwhile
            worker.process.kill()

    async def _lost(self, worker: _Worker) -> None:
        """The worker ended (killed, crashed or over its memory bound): blame the run it
        was computing, run the others again elsewhere, start a new worker."""
        if worker.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                worker.process.kill()
        returncode = await worker.process.wait()
        if worker in self._workers:
            self._workers.remove(worker)
        worker.tasks[0].cancel()
        worker.writer.close()
        blame = worker.blame
        if blame is None and not self._closing:
            self.workers_lost += 1
            computing, _ = worker.marker.read()
            log.error("worker_died", worker=worker.number, returncode=returncode, run=computing)
            if computing:
                how = (
                    f"killed by signal {-returncode}"
                    if returncode < 0
                    else f"exit status {returncode}"
                )
                blame = _Blame(
                    computing,
                    FlowError(
                        f"the run's worker process died while running it ({how}); a run"
                        f" may use at most {self.config.memory_mb} MiB"
                        " (FLOWHOOKS_RUNNER_WORKER_MEMORY_MB)"
                    ),
                    "failed",
                )
        worker.marker.close()
        if self._closing:
            return  # what is left is delivered again after the runner's restart
        self._start_replacement()
        for run in worker.runs.values():
            if run.result.done():
                continue
            if blame is not None and run.key == blame.key:
                run.result.set_result(
                    error_result(run.request_id, blame.error, blame.outcome, _now())
                )
                continue
            run.attempts += 1
            if run.attempts >= self.max_attempts:
                error = FlowError(
                    f"the run's worker process stopped {run.attempts} times while it ran"
                )
                run.result.set_result(error_result(run.request_id, error, "failed", _now()))
                continue
            self.runs_retried += 1
            self._place(run)

    def _start_replacement(self) -> None:
        task = asyncio.create_task(self._spawn())
        self._spawning.add(task)
        task.add_done_callback(self._spawning.discard)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            try:
                self._check_workers()
            except Exception:  # the watch must outlive any one failure
                log.exception("worker_watch_failed")

    def _check_workers(self) -> None:
        """Kills a worker whose run computes past the slice bound without a pause, or
        whose run is past its deadline (the worker should have ended it itself)."""
        now = time.monotonic()
        for worker in list(self._workers):
            if worker.blame is not None:
                continue
            key, lasted_s = worker.marker.read()
            # Past the bound in wall time (cheap to see), then in CPU time (a /proc read,
            # so rare): a slice slowed by others' load is not over its bound.
            if (
                key
                and lasted_s > self.slice_s
                and key in worker.runs
                and worker.marker.cpu_s(key) > self.slice_s
            ):
                message = (
                    f"the run computed for more than {self.slice_s:g} s without a pause"
                    " and was stopped (FLOWHOOKS_RUNNER_RUN_SLICE_S)"
                )
                self._kill(worker, _Blame(key, FlowError(message), "failed"))
                continue
            late = next((run for run in worker.runs.values() if now > run.deadline), None)
            if late is not None:
                message = (
                    f"the flow did not finish within {late.timeout_s:g} s"
                    f" (request {late.request_id})"
                )
                error = Timeout(message, data={"request_id": late.request_id})
                self._kill(worker, _Blame(late.key, error, "timeout"))

    async def close(self, timeout_s: float = 10.0) -> None:
        """After the runs finished: close every worker's socket (a worker exits on it);
        kill those still there after `timeout_s`."""
        self._closing = True
        if self._watcher is not None:
            self._watcher.cancel()
        for task in list(self._spawning):
            task.cancel()
        workers = list(self._workers)
        for worker in workers:
            worker.writer.close()
        receivers = [worker.tasks[1] for worker in workers]
        if receivers:
            await asyncio.wait(receivers, timeout=timeout_s)
            for worker in workers:
                if worker.process.returncode is None:
                    worker.process.kill()
            await asyncio.gather(*receivers, return_exceptions=True)


def _now() -> datetime:
    return datetime.now(UTC)

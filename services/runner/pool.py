"""The supervisor's side of the worker pool: flows never run in the runner's own event
loop (which consumes, replies and publishes), only in worker processes
(`services/runner/worker.py`).

- A worker process hosts the runs of one workspace at a time: a run goes to a worker
  its workspace holds that has a free slot (the least busy), else the workspace is
  given an idle worker (`fair_share.py` says whether it may hold one more, and who is
  served first); a worker without runs returns to the pool (after `linger_s`, below).
  So a worker killed for one run's CPU or memory only stops runs of that workspace.
- `spare` idle workers are kept started (up to `max_workers` processes in all), so a
  workspace that needs a worker gets one without waiting for a process to start
  (~0.3-0.5 s of CPU); idle ones beyond the spares and `min_workers` are stopped after
  `idle_s`. A worker whose last run ended stays its workspace's for `linger_s`, so a
  workspace with steady traffic keeps its worker between runs. Processes are started
  at most `spawn_concurrency` at a time, spares first.
- A workspace holds at most its share of the processes, and the spares are a reserve
  only a workspace holding none may take (see `fair_share.py`).
- A worker has an address-space bound; a run has a CPU budget that the worker enforces
  between slices, and a slice bound and a wall-clock deadline that the supervisor
  enforces from outside: it kills the worker and records the run it blames (the one
  the worker marked as computing, or the one past its deadline) as `failed` or
  `timeout`, naming the bound. A worker that dies on its own (its memory bound, a
  crash) blames the run it was computing.
- The other runs that were on a killed worker (of the same workspace) run again, at
  most `max_attempts` times in all, each marked `repeated` with why; a kill caused by
  another workspace's run (not possible while workers are exclusive) would not count
  as an attempt. The workspace holds the dead worker's place until a new process has
  replaced it and takes no other meanwhile: its runs wait for its own kills.
"""

import asyncio
import contextlib
import itertools
import os
import signal
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson
import structlog
from pydantic import ValidationError

from services.runner.bounds import RunBounds
from services.runner.fair_share import FairShare
from services.runner.run_meter import SliceMarker
from services.runner.worker_protocol import (
    RESULTS,
    FlowSnapshot,
    FrameTooLarge,
    Resumed,
    RunOutput,
    Suspension,
    frame,
    frame_of,
    read_frame,
    read_payload,
    read_results,
    work_item,
)
from shared.errors import ApiError, FlowError, Timeout
from shared.schemas.runs import RunResult, WebhookRequest, error_result
from shared.schemas.vocabulary import Outcome

log = structlog.get_logger(__name__)


@dataclass
class _Run:
    key: int
    request_id: str
    workspace: str
    timeout_s: float
    encoded: bytes  # the WorkItem, encoded once
    result: "asyncio.Future[RunOutput | Suspension]"
    deadline: float = 0.0  # monotonic; set when placed on a worker
    placed_at: float = 0.0  # monotonic
    attempts: int = 0  # times a worker stopped while running it, counted against it
    repeated: str | None = None  # why it was run again (the last time)


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
    workspace: str | None = None  # the workspace it hosts; None: idle, in the pool
    last_workspace: str | None = None  # whom it hosted last (it has their flows parsed)
    idle_since: float = 0.0  # monotonic: in the pool, or (assigned) without runs, since
    draining: bool = False  # takes no new run: returns to the pool for another workspace
    retiring: bool = False  # an idle extra being stopped
    pidfd: int | None = None  # to signal the process and never another one


@dataclass
class _Tenant:
    """A workspace's side of the pool: the workers it holds, its runs waiting for a slot."""

    workers: list[_Worker] = field(default_factory=list)
    queue: deque[_Run] = field(default_factory=deque)


class WorkerPool:
    def __init__(
        self,
        bounds: RunBounds,
        *,
        workers: int,
        slots_per_worker: int,
        workspace_share: float,
        slice_s: float,
        max_workers: int = 0,
        spare_workers: int = 2,
        idle_s: float = 60.0,
        linger_s: float = 5.0,
        spawn_concurrency: int = 2,
        deadline_grace_s: float = 2.0,
        max_attempts: int = 3,
        tick_s: float = 0.02,
        spawn_timeout_s: float = 30.0,
        log_level: str = "info",
    ) -> None:
        # Handed to each worker as they are (its first frame).
        self.bounds = bounds
        # Started with the pool and never stopped for being idle.
        self.min_workers = max(1, workers)
        # 0: four per started worker, at least 8 (idle processes cost memory, not CPU).
        self.max_workers = max(max_workers or max(8, 4 * workers), self.min_workers)
        self.spare = max(0, min(spare_workers, self.max_workers - 1))
        self.slots = slots_per_worker
        self.fair_share = FairShare(
            self.max_workers,
            per_workspace=int(self.max_workers * workspace_share),
            reserve=self.spare,
        )
        self.idle_s = idle_s
        self.linger_s = linger_s
        self.spawn_concurrency = max(1, spawn_concurrency)
        self.slice_s = slice_s
        self.deadline_grace_s = deadline_grace_s
        self.max_attempts = max_attempts
        self.tick_s = tick_s
        self.spawn_timeout_s = spawn_timeout_s
        self.log_level = log_level
        self._workers: list[_Worker] = []  # every live process (assigned, idle, retiring)
        self._idle: list[_Worker] = []  # in the pool, ready, most recently idle last
        self._tenants: dict[str, _Tenant] = {}
        # Kills waiting for their replacement process to be started (workspace each).
        self._kills: deque[str] = deque()
        # Processes being started: the workspace whose kill each replaces, or None.
        self._spawning: dict[asyncio.Task[None], str | None] = {}
        self._keys = itertools.count(1)
        self._numbers = itertools.count(1)
        self._closing = False
        self._watcher: asyncio.Task[None] | None = None
        self._last_retire_check = 0.0
        # For metrics and tests.
        self.workers_killed = 0
        self.workers_lost = 0
        self.workers_started = 0
        self.workers_drained = 0  # taken back from a workspace for one waiting
        self.runs_retried = 0
        self.frames_sent = 0  # of runs, to workers
        self.frames_received = 0  # of results, from workers

    async def start(self) -> None:
        started = await asyncio.gather(*(self._start_worker() for _ in range(self.min_workers)))
        for worker in started:
            self._add(worker)
        self._watcher = asyncio.create_task(self._watch())
        self._dispatch()  # more spares than started workers: start them

    @property
    def worker_pids(self) -> list[int]:
        return [worker.process.pid for worker in self._workers]

    def workers_of(self, workspace: str) -> list[int]:
        """The pids of the workers the workspace holds now."""
        tenant = self._tenants.get(workspace)
        return [worker.process.pid for worker in tenant.workers] if tenant else []

    @property
    def idle_workers(self) -> int:
        return len(self._idle)

    @property
    def workspaces_holding(self) -> int:
        """Workspaces holding at least one worker now."""
        return sum(1 for tenant in self._tenants.values() if tenant.workers)

    def must_wait(self, workspace_id: str) -> bool:
        """Cheap, non-blocking: True when a new run of the workspace could not start now
        (its runs already wait, or its workers' slots are full and it may not hold one
        more worker: at its share, only the reserve left, or a kill of its own not yet
        replaced). False also while the worker it may take is still being started."""
        tenant = self._tenants.get(workspace_id)
        if tenant is not None:
            if tenant.queue:
                return True
            if any(self._has_room(worker) for worker in tenant.workers):
                return False
        return self.fair_share.must_wait(workspace_id)

    async def run(
        self,
        request: WebhookRequest,
        flow: FlowSnapshot,
        timeout_s: float,
        resume: Resumed | None = None,
    ) -> RunResult | Suspension:
        """`run_encoded`, its result decoded."""
        output = await self.run_encoded(
            request.request_id,
            request.model_dump_json().encode(),
            flow,
            flow.model_dump_json().encode(),
            timeout_s,
            resume,
        )
        return output if isinstance(output, Suspension) else output.decoded()

    async def run_encoded(
        self,
        request_id: str,
        request: bytes,
        flow: FlowSnapshot,
        flow_encoded: bytes,
        timeout_s: float,
        resume: Resumed | None = None,
    ) -> RunOutput | Suspension:
        """The run's result as its worker encoded it (or, stopped in a `delay` step or
        handed over at a `respond` step, its state to store); never raises for anything
        the run does. `request`: the `WebhookRequest` encoded, `flow_encoded`: `flow`
        encoded. `resume`: a run going on after a `delay` or a `respond`."""
        run = self._submit(request_id, request, flow, flow_encoded, timeout_s, resume)
        try:
            return await run.result
        except asyncio.CancelledError:
            tenant = self._tenants.get(run.workspace)
            if tenant is not None and run in tenant.queue:  # never started: its place goes
                tenant.queue.remove(run)  # to the next
                self._fill(run.workspace, tenant)
                self._dispatch()
            raise

    def submit_encoded(
        self,
        request_id: str,
        request: bytes,
        flow: FlowSnapshot,
        flow_encoded: bytes,
        timeout_s: float,
    ) -> "asyncio.Future[RunOutput | Suspension]":
        """`run_encoded` without a task to await it: the future of its result, for a
        caller that goes on from a callback (services/runner/runs.py, a sync message's
        runs). The run is not withdrawn if its caller goes away."""
        return self._submit(request_id, request, flow, flow_encoded, timeout_s, None).result

    def _submit(
        self,
        request_id: str,
        request: bytes,
        flow: FlowSnapshot,
        flow_encoded: bytes,
        timeout_s: float,
        resume: Resumed | None,
    ) -> _Run:
        key = next(self._keys)
        encoded_resume = resume.model_dump_json().encode() if resume is not None else None
        run = _Run(
            key,
            request_id,
            flow.workspace_id,
            timeout_s,
            work_item(key, request, flow_encoded, timeout_s, encoded_resume),
            asyncio.get_running_loop().create_future(),
        )
        tenant = self._tenant(run.workspace)
        tenant.queue.append(run)
        self._fill(run.workspace, tenant)
        if tenant.queue:
            self._dispatch()
        return run

    # --- placement ------------------------------------------------------------------

    def _tenant(self, workspace: str) -> _Tenant:
        tenant = self._tenants.get(workspace)
        if tenant is None:
            tenant = self._tenants[workspace] = _Tenant()
        return tenant

    def _has_room(self, worker: _Worker) -> bool:
        return (
            len(worker.runs) < self.slots
            and worker.blame is None
            and not worker.draining
            and not worker.retiring
        )

    def _fill(self, workspace: str, tenant: _Tenant) -> None:
        """The workspace's waiting runs into free slots of its own workers; whether it
        still waits for a worker goes to the fair share. A run goes where a frame is
        being filled in this turn of the event loop (runs placed together, e.g. a
        broker message's, travel in one frame and wake one worker, not one each), else
        to the least busy worker (runs placed apart spread over the workspace's
        workers, and its cores)."""
        while tenant.queue:
            free = [worker for worker in tenant.workers if self._has_room(worker)]
            if not free:
                break
            filling = next((worker for worker in free if worker.outbox), None)
            self._place(tenant.queue.popleft(), filling or min(free, key=lambda w: len(w.runs)))
        if tenant.queue:
            self.fair_share.wait(workspace)
        else:
            self.fair_share.stop_waiting(workspace)
            if not tenant.workers:
                del self._tenants[workspace]

    def _place(self, run: _Run, worker: _Worker) -> None:
        run.deadline = time.monotonic() + run.timeout_s + self.deadline_grace_s
        run.placed_at = time.monotonic()
        worker.runs[run.key] = run
        worker.outbox.append(run.encoded)
        worker.has_outbox.set()

    def _dispatch(self) -> None:
        """After anything changed: idle workers to the waiting workspaces (fewest held
        first), a worker drained where nothing is free for a waiting workspace, and
        processes started for the spares and for kills to replace."""
        if self._closing:
            return
        while True:
            while self._idle:
                workspace = self.fair_share.next_turn()
                if workspace is None:
                    break
                self._assign(self._pick_idle(workspace), workspace)
                self._fill(workspace, self._tenants[workspace])
            # A drained worker without runs is back at once: grant it in turn.
            if self._idle or not self._drain_one():
                break
        self._grow()

    def _pick_idle(self, workspace: str) -> _Worker:
        """The idle worker that hosted the workspace last (its flows are parsed there),
        else the most recently idle one (the longest idle are the ones to stop)."""
        for worker in reversed(self._idle):
            if worker.last_workspace == workspace:
                return worker
        return self._idle[-1]

    def _assign(self, worker: _Worker, workspace: str) -> None:
        self._idle.remove(worker)
        worker.workspace = worker.last_workspace = workspace
        self._tenant(workspace).workers.append(worker)
        self.fair_share.take(workspace)

    def _emptied(self, worker: _Worker) -> None:
        """A worker whose last run ended stays its workspace's for `linger_s` (its next
        run starts at once, where its flows are parsed: a workspace with steady traffic
        does not meet others at the spares between two runs); a draining one goes back
        to the pool at once."""
        if worker.workspace is None or worker.runs or worker.blame is not None:
            return
        worker.idle_since = time.monotonic()
        if worker.draining or self.linger_s <= 0:
            self._release(worker)

    def _return_lingering(self) -> None:
        now = time.monotonic()
        done = [
            worker
            for tenant in self._tenants.values()
            for worker in tenant.workers
            if not worker.runs and worker.blame is None and now - worker.idle_since >= self.linger_s
        ]
        for worker in done:
            self._release(worker)
        if done:
            self._dispatch()

    def _release(self, worker: _Worker) -> None:
        """A worker without runs goes back to the pool."""
        workspace = worker.workspace
        if workspace is None or worker.runs or worker.blame is not None:
            return
        tenant = self._tenants[workspace]
        tenant.workers.remove(worker)
        self.fair_share.give_back(workspace)
        if not tenant.workers and not tenant.queue:
            del self._tenants[workspace]
        worker.workspace = None
        worker.draining = False
        worker.idle_since = time.monotonic()
        self._idle.append(worker)

    def _drain_one(self) -> bool:
        """Nothing is free for a workspace that waits within its share: one worker of a
        workspace holding more stops taking runs, and returns to the pool once its runs
        end (the one whose runs end soonest: one without runs goes at once, and then
        True)."""
        draining = sum(1 for worker in self._workers if worker.draining)
        victims = self.fair_share.to_drain(draining)  # most held first
        candidates = [
            (max((run.deadline for run in w.runs.values()), default=0.0), rank, w)
            for rank, victim in enumerate(victims)
            for w in self._tenants[victim].workers
            if not w.draining and not w.retiring and w.blame is None
        ]
        if not candidates:
            return False
        _, _, worker = min(candidates, key=lambda c: c[:2])
        worker.draining = True
        self.workers_drained += 1
        log.info(
            "worker_draining",
            worker=worker.number,
            workspace=worker.workspace,
            runs=len(worker.runs),
        )
        if worker.runs:
            return False
        self._release(worker)
        return True

    # --- processes ------------------------------------------------------------------

    def _grow(self) -> None:
        """Start processes, at most `spawn_concurrency` at once: first for the spares
        (and for waiting workspaces that may take a worker), then the replacements of
        killed workers, in the order they were killed."""
        while not self._closing and len(self._spawning) < self.spawn_concurrency:
            room = self.max_workers - len(self._workers) - len(self._spawning) - len(self._kills)
            spares = sum(1 for tag in self._spawning.values() if tag is None)
            wanted = self.spare + self.fair_share.eligible_waiting()
            if room > 0 and len(self._idle) + spares < wanted:
                self._launch(None)
            elif self._kills:
                self._launch(self._kills.popleft())
            else:
                return

    def _launch(self, replaces: str | None) -> None:
        task = asyncio.create_task(self._spawn(replaces))
        self._spawning[task] = replaces

    async def _spawn(self, replaces: str | None) -> None:
        try:
            while not self._closing:
                try:
                    worker = await self._start_worker()
                except Exception as exc:
                    log.error("worker_start_failed", error=repr(exc))
                    await asyncio.sleep(1)
                    continue
                self._add(worker)
                if replaces is not None:
                    self.fair_share.replaced(replaces)
                return
        finally:
            task = asyncio.current_task()
            if task is not None:
                self._spawning.pop(task, None)
            self._dispatch()

    def _add(self, worker: _Worker) -> None:
        self.workers_started += 1
        with contextlib.suppress(OSError, AttributeError):  # not Linux: `process.kill`
            worker.pidfd = os.pidfd_open(worker.process.pid)
        self._workers.append(worker)
        worker.tasks = [
            asyncio.create_task(self._send(worker)),
            asyncio.create_task(self._receive(worker)),
        ]
        worker.idle_since = time.monotonic()
        self._idle.append(worker)

    def _retire_idle(self) -> None:
        """Stop idle workers beyond the spares (and the `min_workers`) that were idle
        for `idle_s`, the longest idle first."""
        now = time.monotonic()
        extra = min(len(self._idle) - self.spare, len(self._workers) - self.min_workers)
        for worker in sorted(self._idle, key=lambda w: w.idle_since)[: max(0, extra)]:
            if now - worker.idle_since < self.idle_s:
                return
            self._idle.remove(worker)
            worker.retiring = True
            worker.writer.close()  # the worker exits on it
            log.info("worker_retired", worker=worker.number, idle_s=round(now - worker.idle_since))

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
        writer.write(frame(self.bounds.model_dump_json().encode()))
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
                self.frames_sent += 1
                await worker.writer.drain()
        except (ConnectionError, RuntimeError):
            pass  # the worker is gone; `_receive` handles it

    async def _receive(self, worker: _Worker) -> None:
        try:
            while True:
                payload = await read_payload(worker.reader)
                self.frames_received += 1
                if payload[:1] == RESULTS:
                    for key, output in read_results(payload):
                        self._finished_output(worker, key, output)
                else:
                    for done in orjson.loads(payload).get("done", ()):
                        self._finished(worker, done)
                # Freed slots to the workspace's waiting runs; an emptied worker lingers.
                tenant = self._tenants.get(worker.workspace or "")
                if tenant is not None:
                    self._fill(str(worker.workspace), tenant)
                if not worker.runs:
                    self._emptied(worker)
                self._dispatch()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except (FrameTooLarge, ValueError, AttributeError, TypeError) as exc:
            log.error("worker_protocol_error", worker=worker.number, error=repr(exc))
        await self._lost(worker)

    def _finished(self, worker: _Worker, done: dict[str, object]) -> None:
        run = worker.runs.pop(int(done["key"]), None)  # type: ignore[call-overload]
        if run is None or run.result.done():
            return
        if "suspended" in done:  # stopped in a `delay` step: its state, to store
            try:
                suspension = Suspension.model_validate(done["suspended"])
            except ValidationError:
                error = FlowError("the run's state for its delay could not be read")
                self._settle(run, error_result(run.request_id, error, Outcome.FAILED, _now()))
                return
            suspension.repeated = run.repeated
            run.result.set_result(suspension)
            return
        try:
            result = RunResult.model_validate(done["result"])
        except ValidationError:
            error = FlowError("the run's result could not be read")
            result = error_result(run.request_id, error, Outcome.FAILED, _now())
        self._settle(run, result)

    def _finished_output(self, worker: _Worker, key: int, output: RunOutput) -> None:
        run = worker.runs.pop(key, None)
        if run is None or run.result.done():
            return
        try:
            # Well-formed JSON at least: these bytes are spliced into messages that
            # hold other runs' replies and records, which a broken one would spoil.
            orjson.loads(output.encoded)
            if run.repeated is not None:
                output = output.with_repeated(run.repeated)
        except ValueError:  # orjson's and pydantic's errors are ValueErrors
            error = FlowError("the run's result could not be read")
            self._settle(run, error_result(run.request_id, error, Outcome.FAILED, _now()))
            return
        run.result.set_result(output)

    def _settle(self, run: _Run, result: RunResult) -> None:
        if run.repeated is not None:
            result.repeated = run.repeated
        run.result.set_result(RunOutput.of(result))

    def _kill(self, worker: _Worker, blame: _Blame) -> None:
        if worker.blame is not None:
            return
        worker.blame = blame
        self.workers_killed += 1
        log.warning(
            "worker_killed", worker=worker.number, run=blame.key, reason=blame.error.message
        )
        _send_kill(worker)

    async def _lost(self, worker: _Worker) -> None:
        """The worker ended (killed, crashed, over its memory bound, or retired): blame
        the run it was computing, run the others again, have it replaced."""
        if not worker.retiring:
            _send_kill(worker)
        try:
            returncode = await asyncio.wait_for(worker.process.wait(), 10)
        except TimeoutError:  # a retiring worker that does not exit on its own
            _send_kill(worker)
            returncode = await worker.process.wait()
        if worker.pidfd is not None:
            os.close(worker.pidfd)
            worker.pidfd = None
        if worker in self._workers:
            self._workers.remove(worker)
        if worker in self._idle:
            self._idle.remove(worker)
        worker.tasks[0].cancel()
        worker.writer.close()
        blame = worker.blame
        how = f"another run on it was stopped: {blame.error.message}" if blame else ""
        if blame is None and not self._closing and not worker.retiring:
            self.workers_lost += 1
            computing, _ = worker.marker.read()
            log.error("worker_died", worker=worker.number, returncode=returncode, run=computing)
            how = (
                f"killed by signal {-returncode}" if returncode < 0 else f"exit status {returncode}"
            )
            if computing:
                blame = _Blame(
                    computing,
                    FlowError(
                        f"the run's worker process died while running it ({how}); a run"
                        f" may use at most {self.bounds.worker_memory_mb} MiB"
                        " (FLOWHOOKS_RUNNER_WORKER_MEMORY_MB)"
                    ),
                    Outcome.FAILED,
                )
        worker.marker.close()
        if self._closing:
            return  # what is left is delivered again after the runner's restart
        workspace = worker.workspace
        if workspace is not None:
            tenant = self._tenants[workspace]
            tenant.workers.remove(worker)
            self.fair_share.give_back(workspace)
            if not worker.retiring:
                # Its own cost: it holds the place until a new process took it.
                self.fair_share.charge_kill(workspace)
                self._kills.append(workspace)
        blamed = worker.runs.get(blame.key) if blame is not None else None
        cause = blamed.workspace if blamed is not None else workspace
        again: list[_Run] = []
        for run in worker.runs.values():
            if run.result.done():
                continue
            if blamed is not None and run is blamed:
                assert blame is not None
                result = error_result(run.request_id, blame.error, blame.outcome, _now())
                self._settle(run, result)
                continue
            if cause is None or cause == run.workspace:
                run.attempts += 1
                if run.attempts >= self.max_attempts:
                    error = FlowError(
                        f"the run's worker process stopped {run.attempts} times while it ran"
                    )
                    self._settle(run, error_result(run.request_id, error, Outcome.FAILED, _now()))
                    continue
                attempt = f"attempt {run.attempts + 1} of {self.max_attempts}"
            else:
                attempt = "not counted as an attempt: another workspace's run caused it"
            run.repeated = f"its worker process stopped ({how}) while it ran; run again ({attempt})"
            again.append(run)
        for run in reversed(again):  # ahead of the workspace's later runs, in order
            self._tenant(run.workspace).queue.appendleft(run)
        self.runs_retried += len(again)
        for workspace_id in {run.workspace for run in again}:
            self._fill(workspace_id, self._tenants[workspace_id])
        if workspace is not None and workspace in self._tenants:
            self._fill(workspace, self._tenants[workspace])
        self._dispatch()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            try:
                self._check_workers()
                now = time.monotonic()
                if now - self._last_retire_check >= min(1.0, self.linger_s / 4):
                    self._last_retire_check = now
                    self._return_lingering()
                    self._retire_idle()
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
                self._kill(worker, _Blame(key, FlowError(message), Outcome.FAILED))
                continue
            late = next((run for run in worker.runs.values() if now > run.deadline), None)
            if late is not None:
                message = (
                    f"the flow did not finish within {late.timeout_s:g} s"
                    f" (request {late.request_id})"
                )
                error = Timeout(message, data={"request_id": late.request_id})
                self._kill(worker, _Blame(late.key, error, Outcome.TIMEOUT))

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
                _send_kill(worker)
            await asyncio.gather(*receivers, return_exceptions=True)


def _send_kill(worker: _Worker) -> None:
    """SIGKILL, unless it was seen to exit. Not `process.kill()`: that polls first, and a
    poll that reaps a worker that has just died leaves asyncio's child watcher an
    unknown child ("exit status 255" instead of the signal that killed it). A pidfd
    never signals another process that got the pid since."""
    if worker.process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):  # it may have died meanwhile
        if worker.pidfd is not None:
            signal.pidfd_send_signal(worker.pidfd, signal.SIGKILL)
        else:
            worker.process.kill()


def _now() -> datetime:
    return datetime.now(UTC)

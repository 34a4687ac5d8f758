"""WorkerPool's placement, with fake worker processes that speak the real protocol over
a socket pair and finish a run when the test says so: a worker hosts one workspace at a
time, kills are charged to the workspace that caused them, spares are a reserve for
newcomers, and processes are started within bounds. (Real processes:
tests/integration/test_worker_pool.py.)"""

import asyncio
import itertools
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from harness.factories import webhook_request
from services.runner.bounds import RunBounds
from services.runner.pool import WorkerPool, _Worker
from services.runner.run_meter import SliceMarker
from services.runner.worker_protocol import FlowSnapshot, RunOutput, frame, read_frame
from shared.schemas.runs import RunResult
from shared.schemas.vocabulary import Outcome

CONFIG = RunBounds(
    render_timeout_s=0.5,
    max_output_chars=1000,
    template_cache_size=10,
    http_allow_networks=(),
    http_max_response_bytes=1024,
    loop_max_items=10,
    max_loop_iterations=10,
    max_value_bytes=1000,
    max_trace_steps=10,
    max_trace_bytes=10_000,
    max_response_bytes=1000,
    worker_memory_mb=128,
    run_cpu_s=1.0,
)
# Never a real process's: the pool must not find (or signal) one by these.
_PIDS = itertools.count(-1000, -1)


class FakeProcess:
    def __init__(self, on_kill: Callable[[], None]) -> None:
        self.pid = next(_PIDS)
        self.returncode: int | None = None
        self._exited = asyncio.Event()
        self._on_kill = on_kill

    def exit(self, code: int) -> None:
        if self.returncode is None:
            self.returncode = code
            self._exited.set()

    def kill(self) -> None:
        if self.returncode is None:
            self.exit(-9)
            self._on_kill()

    async def wait(self) -> int:
        await self._exited.wait()
        assert self.returncode is not None
        return self.returncode


class FakeWorker:
    """The worker's end: keeps the runs it was given until `finish`."""

    def __init__(self, sock: socket.socket, hosted: dict[str, "FakeWorker"]) -> None:
        self.sock = sock
        self.hosted = hosted
        self.process = FakeProcess(self._drop)
        self.keys: dict[str, int] = {}  # request id -> the supervisor's key
        self.workspaces: set[str] = set()
        self.writer: asyncio.StreamWriter | None = None

    async def serve(self) -> None:
        reader, self.writer = await asyncio.open_unix_connection(sock=self.sock)
        await read_frame(reader)  # the config
        self.writer.write(frame(b'{"ready":true}'))
        try:
            while True:
                for item in (await read_frame(reader))["runs"]:
                    request_id = item["request"]["request_id"]
                    self.keys[request_id] = item["key"]
                    self.workspaces.add(item["flow"]["workspace_id"])
                    self.hosted[request_id] = self
        except (asyncio.IncompleteReadError, ConnectionError):
            self.process.exit(0)  # the supervisor closed the socket

    def _drop(self) -> None:
        """Killed: its end of the socket goes away, as a dead process's does."""
        if self.writer is not None:
            self.writer.transport.abort()

    def finish(self, request_id: str) -> None:
        now = datetime.now(UTC).isoformat()
        result = {
            "request_id": request_id,
            "outcome": "succeeded",
            "status_code": 200,
            "content_type": "text/plain",
            "body": f"done {request_id}",
            "started_at": now,
            "finished_at": now,
        }
        assert self.writer is not None
        done = {"done": [{"key": self.keys.pop(request_id), "result": result}]}
        self.writer.write(frame(orjson.dumps(done)))


class FakePool(WorkerPool):
    def __init__(self, **options: Any) -> None:
        settings: dict[str, Any] = {
            "workers": 1,
            "slots_per_worker": 2,
            "workspace_share": 0.5,
            "slice_s": 0.2,
            "max_workers": 6,
            "spare_workers": 2,
            "tick_s": 0.01,
            "linger_s": 0,  # back to the pool at once, unless a test says otherwise
        }
        super().__init__(CONFIG, **{**settings, **options})
        self.hosted: dict[str, FakeWorker] = {}  # request id -> where it runs
        self.fakes: dict[int, FakeWorker] = {}
        self.gate = asyncio.Event()  # cleared: new processes wait for it
        self.gate.set()
        self.serving: set[asyncio.Task[None]] = set()

    async def _start_worker(self) -> _Worker:
        await self.gate.wait()
        ours, theirs = socket.socketpair()
        fake = FakeWorker(theirs, self.hosted)
        task = asyncio.create_task(fake.serve())
        self.serving.add(task)
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        writer.write(frame(self.bounds.model_dump_json().encode()))
        assert await read_frame(reader) == {"ready": True}
        self.fakes[fake.process.pid] = fake
        return _Worker(next(self._numbers), fake.process, reader, writer, SliceMarker.create())  # type: ignore[arg-type]

    def worker_of(self, request_id: str) -> FakeWorker:
        return self.hosted[request_id]

    def live(self) -> list[FakeWorker]:
        return [self.fakes[pid] for pid in self.worker_pids]


@asynccontextmanager
async def fake_pool(**options: Any) -> AsyncIterator[FakePool]:
    pool = FakePool(**options)
    await pool.start()
    try:
        yield pool
    finally:
        await pool.close(timeout_s=1)
        for task in pool.serving:
            task.cancel()


def flow(workspace: str) -> FlowSnapshot:
    return FlowSnapshot(id="f-" + workspace, workspace_id=workspace, version=1, definition={})


class Runs:
    """Runs started on a pool, by name."""

    def __init__(self, pool: FakePool) -> None:
        self.pool = pool
        self.tasks: dict[str, asyncio.Task[RunResult]] = {}

    async def start(self, workspace: str, *names: str) -> None:
        for name in names:
            request = webhook_request({}, request_id=name)
            self.tasks[name] = asyncio.create_task(self.pool.run(request, flow(workspace), 30))
        await settle()

    def placed(self, name: str) -> bool:
        return name in self.pool.hosted

    async def finish(self, *names: str) -> list[RunResult]:
        for name in names:
            self.pool.worker_of(name).finish(name)
        return [await asyncio.wait_for(self.tasks[name], 2) for name in names]


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0.002)


async def until(condition: Callable[[], bool], timeout_s: float = 2.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.005)


async def test_a_worker_hosts_one_workspace_and_returns_to_the_pool() -> None:
    async with fake_pool() as pool:
        await until(lambda: pool.idle_workers == 2)  # the spares
        runs = Runs(pool)
        await runs.start("acme", "a1", "a2")
        await runs.start("evil", "e1", "e2", "e3")
        acme = pool.worker_of("a1")
        assert pool.worker_of("a2") is acme and acme.workspaces == {"acme"}
        # Two slots a worker: evil's third run took a second worker of its own.
        evil = {pool.worker_of(name) for name in ("e1", "e2", "e3")}
        assert len(evil) == 2 and acme not in evil
        assert all(worker.workspaces == {"evil"} for worker in evil)
        assert sorted(pool.fair_share.held.items()) == [("acme", 1), ("evil", 2)]
        results = await runs.finish("a1", "a2", "e1", "e2", "e3")
        assert [r.body for r in results] == [f"done {n}" for n in ("a1", "a2", "e1", "e2", "e3")]
        assert all(r.repeated is None for r in results)
        await settle()
        # Each worker went back to the pool once its last run ended.
        assert pool.fair_share.held == {} and pool.idle_workers == len(pool.worker_pids)
        # A workspace's next run goes to the worker that hosted it last.
        await runs.start("acme", "a3")
        assert pool.worker_of("a3") is acme
        await runs.finish("a3")


async def test_the_spares_are_for_workspaces_holding_none() -> None:
    async with fake_pool(max_workers=4, spare_workers=1, workspace_share=1.0) as pool:
        runs = Runs(pool)
        await runs.start("evil", *(f"e{n}" for n in range(10)))
        await until(lambda: pool.fair_share.holds("evil") == 3)
        await settle()
        # It may hold every process but the spare: its other runs wait, in order.
        assert pool.fair_share.holds("evil") == 3 and pool.must_wait("evil")
        assert [runs.placed(f"e{n}") for n in range(10)] == [True] * 6 + [False] * 4
        assert not pool.must_wait("acme")
        await runs.start("acme", "a1")
        assert runs.placed("a1") and pool.worker_of("a1").workspaces == {"acme"}
        # Now nothing is free for a third workspace, which holds none: one of evil's
        # workers is drained for it (no new runs; back to the pool once they end).
        assert pool.must_wait("third")
        await runs.start("third", "t1")
        assert not runs.placed("t1")
        drained = [w for w in pool._tenants["evil"].workers if w.draining]
        assert len(drained) == 1
        assert pool.workers_drained == 1 and pool.workspaces_holding == 2
        names = [n for n in range(10) if runs.placed(f"e{n}")]
        on_drained = [
            f"e{n}" for n in names if pool.worker_of(f"e{n}").process.pid == drained[0].process.pid
        ]
        await runs.finish(*on_drained)
        await until(lambda: runs.placed("t1"))
        assert pool.worker_of("t1").process.pid == drained[0].process.pid
        assert pool.fair_share.held == {"evil": 2, "acme": 1, "third": 1}
        assert pool.workspaces_holding == 3
        # evil's waiting runs went to its remaining workers' slots, not to the drained one.
        placed_evil = [n for n in range(10) if runs.placed(f"e{n}")]
        assert {pool.worker_of(f"e{n}").process.pid for n in placed_evil} - {
            w.process.pid for w in pool._tenants["evil"].workers
        } == {drained[0].process.pid}


async def test_a_kill_is_charged_to_its_workspace_and_its_runs_run_again() -> None:
    async with fake_pool() as pool:
        await until(lambda: pool.idle_workers == 2)
        runs = Runs(pool)
        await runs.start("evil", "e1", "e2")
        await runs.start("acme", "a1")
        evil = pool.worker_of("e1")
        pool.gate.clear()  # no process starts until the test says so
        evil.process.kill()  # from outside, as the kernel would
        await until(lambda: pool.fair_share.kills == {"evil": 1})
        # evil's runs wait for its kill to be replaced, although a process is idle.
        await settle()
        assert pool.idle_workers >= 1 and pool.must_wait("evil")
        assert pool.worker_of("e1") is evil and pool.worker_of("e2") is evil
        # acme is not touched, and a newcomer is served at once.
        assert pool.worker_of("a1").process.returncode is None
        await runs.start("newcomer", "n1")
        assert runs.placed("n1")
        pool.gate.set()
        await until(lambda: pool.worker_of("e1") is not evil and pool.worker_of("e2") is not evil)
        e1, e2 = await runs.finish("e1", "e2")
        why = (
            "its worker process stopped (killed by signal 9) while it ran; run again"
            " (attempt 2 of 3)"
        )
        assert (e1.outcome, e1.repeated) == ("succeeded", why)
        assert (e2.outcome, e2.repeated) == ("succeeded", why)
        (a1,) = await runs.finish("a1")
        assert (a1.outcome, a1.repeated) == ("succeeded", None)
        assert pool.workers_lost == 1 and pool.runs_retried == 2


async def test_the_run_that_computes_past_the_slice_is_blamed_and_the_others_repeated() -> None:
    async with fake_pool(slice_s=0.1) as pool:
        runs = Runs(pool)
        await runs.start("evil", "bomb", "other")
        worker = next(w for w in pool._workers if w.workspace == "evil")
        worker.marker.enter(pool.worker_of("bomb").keys["bomb"], 0)
        bomb = await asyncio.wait_for(runs.tasks["bomb"], 2)
        assert (bomb.outcome, bomb.status_code, bomb.repeated) == ("failed", 500, None)
        assert bomb.error == (
            "the run computed for more than 0.1 s without a pause and was stopped"
            " (FLOWHOOKS_RUNNER_RUN_SLICE_S)"
        )
        await until(lambda: pool.worker_of("other").process.pid != worker.process.pid)
        (other,) = await runs.finish("other")
        assert other.repeated == (
            "its worker process stopped (another run on it was stopped: the run computed for"
            " more than 0.1 s without a pause and was stopped (FLOWHOOKS_RUNNER_RUN_SLICE_S))"
            " while it ran; run again (attempt 2 of 3)"
        )
        assert pool.workers_killed == 1


async def test_a_run_stopped_three_times_fails() -> None:
    async with fake_pool() as pool:
        runs = Runs(pool)
        await runs.start("evil", "unlucky")
        for attempt in range(3):
            worker = pool.worker_of("unlucky")
            worker.process.kill()
            if attempt < 2:
                await until(lambda w=worker: pool.worker_of("unlucky") is not w)  # type: ignore[misc]
        result = await asyncio.wait_for(runs.tasks["unlucky"], 2)
        assert (result.outcome, result.error) == (
            "failed",
            "the run's worker process stopped 3 times while it ran",
        )
        assert result.repeated == (
            "its worker process stopped (killed by signal 9) while it ran; run again"
            " (attempt 3 of 3)"
        )


async def test_a_kill_storm_starts_processes_within_bounds() -> None:
    async with fake_pool(max_workers=5, spare_workers=2, spawn_concurrency=1) as pool:
        await until(lambda: pool.idle_workers == 2)
        runs = Runs(pool)
        names = [f"e{n}" for n in range(6)]
        await runs.start("evil", *names)
        await runs.start("acme", "a1")
        # Its share (half of 5: 2 workers of 2 slots); the rest of its runs wait.
        assert [runs.placed(name) for name in names] == [True] * 4 + [False] * 2
        started = pool.workers_started

        def check_bounds() -> None:
            assert len(pool.worker_pids) + len(pool._spawning) + len(pool._kills) <= 5
            assert len(pool._spawning) <= 1
            assert pool.fair_share.holds("evil") <= 2

        pool.gate.clear()
        for worker in {pool.worker_of(name) for name in names if runs.placed(name)}:
            worker.process.kill()
        await settle()
        # Both killed workers stay evil's until replaced, one process starts at a time,
        # and evil's runs wait for that although processes are idle.
        check_bounds()
        assert pool.fair_share.kills == {"evil": 2} and pool.must_wait("evil")
        assert pool.idle_workers == 2
        await runs.start("newcomer", "n1")  # served at once, from the spares
        assert runs.placed("n1")
        pool.gate.set()
        # evil kills whatever it gets, until its runs fail for good.
        while not all(runs.tasks[name].done() for name in names):
            check_bounds()
            for worker in [w for w in pool.live() if w.workspaces == {"evil"} and w.keys]:
                worker.process.kill()
            await asyncio.sleep(0.01)
        results = [runs.tasks[name].result() for name in names]
        assert {r.error for r in results} == {
            "the run's worker process stopped 3 times while it ran"
        }
        a1, n1 = await runs.finish("a1", "n1")
        assert (a1.outcome, a1.repeated, n1.outcome, n1.repeated) == (
            "succeeded",
            None,
            "succeeded",
            None,
        )
        # One new process for each kill, and at most one for the spare the newcomer
        # took (a replacement may have been idle then, and served as the spare).
        await until(lambda: not pool._spawning and not pool._kills)
        assert pool.workers_lost <= pool.workers_started - started <= pool.workers_lost + 1


async def test_an_emptied_worker_lingers_for_its_workspace_unless_another_needs_it() -> None:
    async with fake_pool(max_workers=3, spare_workers=1, linger_s=0.3) as pool:
        runs = Runs(pool)
        await runs.start("acme", "a1")
        acme = pool.worker_of("a1")
        await runs.finish("a1")
        await settle()
        # Still acme's: its next run starts there at once.
        assert pool.fair_share.held == {"acme": 1} and not pool.must_wait("acme")
        await runs.start("acme", "a2")
        assert pool.worker_of("a2") is acme
        await runs.finish("a2")
        await until(lambda: pool.fair_share.held == {}, timeout_s=2)  # after linger_s
        # Lingering, it goes at once to a workspace that finds nothing else free
        # (sooner than the busy workers of the others, which hold as many).
        await runs.start("evil", "e1", "e2")
        await runs.start("evil2", "x1", "x2")
        await runs.start("acme", "a3")
        await runs.finish("a3")
        await settle()
        assert pool.fair_share.held == {"evil": 1, "evil2": 1, "acme": 1}
        await runs.start("third", "t1")
        assert runs.placed("t1") and pool.worker_of("t1") is pool.worker_of("a3")
        assert pool.fair_share.held == {"evil": 1, "evil2": 1, "third": 1}


async def test_idle_extras_are_stopped_after_a_while() -> None:
    async with fake_pool(idle_s=0.05, spare_workers=1, workers=1) as pool:
        runs = Runs(pool)
        await runs.start("a", "a1")
        await runs.start("b", "b1")
        await runs.start("c", "c1")
        assert len(pool.worker_pids) >= 3
        await runs.finish("a1", "b1", "c1")
        # Back to the spare (one process: it is also the one started with the pool).
        await until(lambda: len(pool.worker_pids) == 1, timeout_s=5)
        assert pool.workers_lost == 0 and pool.fair_share.kills == {}


async def test_a_cancelled_waiting_run_gives_up_its_place() -> None:
    async with fake_pool(max_workers=2, spare_workers=1, workspace_share=1.0) as pool:
        runs = Runs(pool)
        await runs.start("evil", "e1", "e2", "e3")
        assert not runs.placed("e3")
        runs.tasks["e3"].cancel()
        await settle()
        # Its worker is full and only the reserve is left: still, it no longer waits.
        assert "evil" not in pool.fair_share.waiting and pool.must_wait("evil")
        assert "e3" not in pool.hosted and list(pool._tenants["evil"].queue) == []


@pytest.mark.parametrize("share", [0.5, 1.0])
async def test_must_wait_is_true_only_when_a_run_could_not_start(share: float) -> None:
    async with fake_pool(max_workers=3, spare_workers=1, workspace_share=share) as pool:
        runs = Runs(pool)
        assert not pool.must_wait("evil")
        await runs.start("evil", "e1")  # one slot of its worker left
        assert not pool.must_wait("evil")
        await runs.start("evil", "e2")  # full: a second worker if its share allows
        assert pool.must_wait("evil") == (share == 0.5)


async def test_runs_placed_together_travel_in_one_frame() -> None:
    """Runs placed in one turn of the event loop (a broker message's) go to the worker
    whose frame is being filled while it has room: one frame, one wake-up of one worker;
    a run placed on its own goes to the least busy worker."""
    async with fake_pool(slots_per_worker=4, workspace_share=1.0) as pool:
        runs = Runs(pool)
        await runs.start("acme", "a1", "a2", "a3", "a4", "a5")
        first, second = pool.worker_of("a1"), pool.worker_of("a5")
        assert [pool.worker_of(name) for name in ("a2", "a3", "a4")] == [first] * 3
        assert second is not first
        await runs.finish("a1", "a2", "a3")  # one run left on each
        frames = pool.frames_sent
        await runs.start("acme", "b1", "b2", "b3")
        assert [pool.worker_of(name) for name in ("b1", "b2", "b3")] == [first] * 3
        assert pool.frames_sent == frames + 1
        await runs.start("acme", "c1")
        assert pool.worker_of("c1") is second
        await runs.finish("a4", "a5", "b1", "b2", "b3", "c1")


async def test_results_arrive_as_the_workers_bytes_and_a_broken_one_fails_alone() -> None:
    """A results frame carries each run's `RunResult` as its worker encoded it: the pool
    hands those very bytes on (`run_encoded`), except a result that is not even JSON
    (it would spoil the reply and record messages it is spliced into), which fails its
    own run only."""
    async with fake_pool(slots_per_worker=4) as pool:
        tasks = {
            name: asyncio.create_task(
                pool.run_encoded(
                    name,
                    webhook_request({}, request_id=name).model_dump_json().encode(),
                    flow("acme"),
                    flow("acme").model_dump_json().encode(),
                    30,
                )
            )
            for name in ("good", "broken")
        }
        await until(lambda: len(pool.hosted) == 2)
        worker = pool.worker_of("good")
        now = datetime.now(UTC)
        good = RunResult(
            request_id="good",
            outcome=Outcome.SUCCEEDED,
            status_code=200,
            content_type="text/plain",
            body="fine",
            started_at=now,
            finished_at=now,
        )
        encoded = good.model_dump_json().encode()
        header = [[worker.keys.pop("good"), len(encoded), "succeeded", 0.25]]
        header.append([worker.keys.pop("broken"), 5, "succeeded", 0.0])
        payload = b"R" + orjson.dumps(header) + b"\n" + encoded + b'{"a":'
        assert worker.writer is not None
        worker.writer.write(frame(payload))
        output = await asyncio.wait_for(tasks["good"], 2)
        assert isinstance(output, RunOutput)
        assert (output.encoded, output.outcome, output.duration_s) == (encoded, "succeeded", 0.25)
        broken = await asyncio.wait_for(tasks["broken"], 2)
        assert isinstance(broken, RunOutput)
        assert (broken.outcome, broken.decoded().error) == (
            "failed",
            "the run's result could not be read",
        )

"""Fair replay jobs (services/debugger/replay_jobs.py). The in-flight slots (`FairSlots`):
a job alone uses every slot; once another job waits, a freed slot goes to the job
holding fewest, and no job keeps more than its share while others wait. The worker: a
job past its slice hands its place over to another workspace's waiting job, its
replays settled, and every item is still replayed once."""

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import Hashable, Sequence
from types import SimpleNamespace
from typing import Any

from services.debugger.replay_jobs import ClaimedJob, FairSlots, ReplayWorker


class Holders:
    """Tasks each holding a slot of `slots` for `key` until released by the test."""

    def __init__(self, slots: FairSlots) -> None:
        self.slots = slots
        self.taken: list[Hashable] = []  # keys, in the order they got a slot
        self._release: dict[int, asyncio.Event] = {}
        self.tasks: list[asyncio.Task[None]] = []

    def want(self, key: Hashable) -> int:
        n = len(self.tasks)
        self._release[n] = asyncio.Event()
        self.tasks.append(asyncio.create_task(self._hold(key, n)))
        return n

    async def _hold(self, key: Hashable, n: int) -> None:
        async with self.slots.hold(key):
            self.taken.append(key)
            await self._release[n].wait()

    def release(self, n: int) -> None:
        self._release[n].set()

    async def settle(self) -> None:
        for _ in range(10):  # let every woken task run
            await asyncio.sleep(0)


async def test_a_job_alone_uses_every_slot_and_no_more() -> None:
    slots = FairSlots(4)
    holders = Holders(slots)
    for _ in range(5):
        holders.want("a")
    await holders.settle()
    assert holders.taken == ["a"] * 4 and slots.held("a") == 4
    holders.release(0)
    await holders.settle()
    assert holders.taken == ["a"] * 5
    for n in range(1, 5):
        holders.release(n)
    await asyncio.gather(*holders.tasks)
    assert slots.held("a") == 0


async def test_a_freed_slot_goes_to_the_waiting_job_that_holds_none() -> None:
    slots = FairSlots(4)
    holders = Holders(slots)
    a = [holders.want("a") for _ in range(8)]  # a slow job: 4 held, 4 more waiting
    await holders.settle()
    b = [holders.want("b") for _ in range(3)]  # another job arrives
    await holders.settle()
    assert slots.held("b") == 0  # every slot is held: it waits for one to be freed
    holders.release(a[0])
    await holders.settle()
    assert (slots.held("a"), slots.held("b")) == (3, 1)  # b, not a's next
    holders.release(a[1])
    await holders.settle()
    assert (slots.held("a"), slots.held("b")) == (2, 2)
    # Both at their share (4 / 2 jobs): a freed slot goes back to the job that freed it.
    holders.release(a[2])
    await holders.settle()
    assert (slots.held("a"), slots.held("b")) == (2, 2)
    holders.release(b[0])
    await holders.settle()
    assert (slots.held("a"), slots.held("b")) == (2, 2)
    assert holders.taken[-2:] == ["a", "b"]
    for n in range(len(holders.tasks)):
        holders.release(n)
    await asyncio.gather(*holders.tasks)
    assert (slots.held("a"), slots.held("b")) == (0, 0)


async def test_a_cancelled_waiter_leaves_no_trace() -> None:
    slots = FairSlots(1)
    holders = Holders(slots)
    first = holders.want("a")
    waiting = holders.want("b")
    await holders.settle()
    holders.tasks[waiting].cancel()
    await holders.settle()
    holders.release(first)
    await holders.tasks[first]
    assert slots.held("a") == slots.held("b") == 0
    later = holders.want("c")
    await holders.settle()
    assert slots.held("c") == 1
    holders.release(later)
    await holders.tasks[later]


# The worker's handover (ReplayWorker with a stand-in for the jobs' table).


class Jobs:
    """The part of `ReplayJobs` the worker uses, in memory, claiming as its SQL does:
    busy workspaces excluded, the workspace served least recently first, then a job
    released longest ago (a job released goes to the back)."""

    def __init__(self, jobs: dict[str, tuple[str, int]]) -> None:
        self.workspace = {uuid.UUID(int=n): ws for n, (ws, _) in enumerate(jobs.values())}
        self.names = {uuid.UUID(int=n): name for n, name in enumerate(jobs)}
        self.items = {
            uuid.UUID(int=n): {seq: None for seq in range(1, count + 1)}
            for n, (_, count) in enumerate(jobs.values())
        }
        self.order = list(self.items)
        self.held: dict[uuid.UUID, str] = {}
        self.served: dict[str, int] = {}  # workspace -> when last claimed or released
        self.clock = 0
        self.releases: list[tuple[str, bool]] = []
        self.finished: list[str] = []

    def _running(self, job_id: uuid.UUID) -> bool:
        return any(outcome is None for outcome in self.items[job_id].values())

    async def claim(
        self, owner: str, lease_s: float, timeout_s: float, busy_workspaces: Sequence[str] = ()
    ) -> ClaimedJob | None:
        candidates = [
            job_id
            for job_id in self.order
            if self._running(job_id)
            and job_id not in self.held
            and self.workspace[job_id] not in busy_workspaces
        ]
        if not candidates:
            return None
        job_id = min(candidates, key=lambda j: self.served.get(self.workspace[j], -1))
        self.held[job_id] = owner
        self._serve(job_id)
        return ClaimedJob(job_id, self.workspace[job_id], False, 0, 0.0)

    def _serve(self, job_id: uuid.UUID) -> None:
        self.clock += 1
        self.served[self.workspace[job_id]] = self.clock

    async def others_waiting(self, busy_workspaces: Sequence[str]) -> bool:
        return any(
            self._running(job_id)
            and job_id not in self.held
            and self.workspace[job_id] not in busy_workspaces
            for job_id in self.order
        )

    async def renew(self, job_id: uuid.UUID, owner: str, lease_s: float) -> bool:
        return self.held.get(job_id) == owner and self._running(job_id)

    async def release(self, job_id: uuid.UUID, owner: str, *, settled: bool = False) -> None:
        self.releases.append((self.names[job_id], settled))
        self.held.pop(job_id, None)
        self._serve(job_id)
        self.order.remove(job_id)
        self.order.append(job_id)  # to the back: round robin

    async def pending(self, job_id: uuid.UUID, after: int, limit: int) -> list[tuple[int, str]]:
        items = self.items[job_id]
        left = [seq for seq, outcome in items.items() if seq > after and outcome is None]
        return [(seq, f"{self.names[job_id]}-{seq}") for seq in left[:limit]]

    async def recorded(self, request_ids: list[str]) -> dict[str, str]:
        return {}

    async def settle(
        self, job_id: uuid.UUID, owner: str, outcomes: list[tuple[int, str]], cursor: int | None
    ) -> str | None:
        for seq, outcome in outcomes:
            assert self.items[job_id][seq] is None, "an item settled twice"
            self.items[job_id][seq] = outcome
        if self._running(job_id):
            return "running"
        self.finished.append(self.names[job_id])
        self.held.pop(job_id, None)
        return "finished"


class Worker(ReplayWorker):
    """Replays that take `SLOW_S` for workspace A's jobs, a moment for the others."""

    SLOW_S = 0.3

    def __init__(self, jobs: Jobs, **settings: Any) -> None:
        super().__init__(
            jobs,  # type: ignore[arg-type]
            None,  # type: ignore[arg-type]
            SimpleNamespace(timeout_s=5.0),  # type: ignore[arg-type]
            **settings,
        )
        self.sent: Counter[str] = Counter()

    async def _replay(self, job: ClaimedJob, request_id: str) -> str | None:
        self.sent[request_id] += 1
        await asyncio.sleep(self.SLOW_S if job.workspace_id == A else 0.01)
        return "succeeded"


A, B = str(uuid.UUID(int=0xA)), str(uuid.UUID(int=0xB))


async def test_a_job_past_its_slice_hands_its_place_to_another_workspaces_job() -> None:
    # One place on this replica; A's two jobs are slow and were there first.
    jobs = Jobs({"a1": (A, 6), "a2": (A, 2), "b1": (B, 2)})
    worker = Worker(
        jobs, in_flight=2, rate=1000, chunk=2, lease_s=30, poll_s=0.05, max_jobs=1, slice_s=0.2
    )
    running = asyncio.create_task(worker.run_forever())
    try:
        async with asyncio.timeout(20):
            while len(jobs.finished) < 3:
                await asyncio.sleep(0.02)
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
    # a1 handed over once B's job waited, its replays settled; B's job went next, before
    # A's other one (round robin: one workspace at a time, the other waiting first).
    assert jobs.releases[0] == ("a1", True)
    assert jobs.finished.index("b1") < jobs.finished.index("a2")
    assert jobs.finished[0] == "b1"
    # Every item replayed once, whatever the handovers.
    assert set(worker.sent.values()) == {1} and len(worker.sent) == 10

"""The replay jobs' in-flight slots (services/debugger/replay_jobs.py `FairSlots`): a job
alone uses every slot; once another job waits, a freed slot goes to the job holding
fewest, and no job keeps more than its share while others wait."""

import asyncio
from collections.abc import Hashable

from services.debugger.replay_jobs import FairSlots


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

"""FairShare: no workspace holds more than its share of the slots; waiting workspaces
take turns."""

import asyncio

from services.runner.fair_share import FairShare


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_workspace_holds_at_most_its_share() -> None:
    share = FairShare(slots=4, share=0.5)
    for _ in range(2):
        await share.acquire("evil")
    third = asyncio.create_task(share.acquire("evil"))
    await _settle()
    assert not third.done()  # over its share although 2 slots are free
    # Another workspace is not held up by it.
    await asyncio.wait_for(share.acquire("acme"), 1)
    await asyncio.wait_for(share.acquire("acme"), 1)
    assert share.running == {"evil": 2, "acme": 2} and share.free == 0
    share.release("evil")
    await _settle()
    assert third.done() and share.running == {"evil": 2, "acme": 2}


async def test_waiting_workspaces_take_turns() -> None:
    share = FairShare(slots=2, share=1.0)
    await share.acquire("a")
    await share.acquire("a")
    order: list[str] = []

    async def wait(workspace: str) -> None:
        await share.acquire(workspace)
        order.append(workspace)

    tasks = [asyncio.create_task(wait(ws)) for ws in ("a", "a", "a", "b", "b")]
    await _settle()
    for _ in range(5):
        share.release(order[-1] if order else "a")
        await _settle()
    assert order == ["a", "b", "a", "b", "a"]
    await asyncio.gather(*tasks)


async def test_a_cancelled_waiter_gives_up_its_place() -> None:
    share = FairShare(slots=1, share=1.0)
    await share.acquire("a")
    waiter = asyncio.create_task(share.acquire("b"))
    await _settle()
    waiter.cancel()
    await _settle()
    assert share.waiting("b") == 0
    share.release("a")
    assert share.free == 1 and share.running == {}


async def test_share_never_below_one_slot() -> None:
    share = FairShare(slots=1, share=0.1)
    await asyncio.wait_for(share.acquire("a"), 1)
    assert share.per_workspace == 1

"""WorkspaceLimiter: a workspace runs at most its share of the API's costly queries; past
it a request waits briefly, then gets 429 with Retry-After; freed slots go to the
waiting workspace holding fewest, so one workspace's queue never delays another's."""

import asyncio

import pytest

from services.debugger.workspace_limiter import WorkspaceLimiter
from shared.errors import RateLimited


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def limiter(
    total: int = 6, per_workspace: int = 2, max_waiting: int = 16, wait_s: float = 60.0
) -> WorkspaceLimiter:
    return WorkspaceLimiter(
        total=total,
        per_workspace=per_workspace,
        max_waiting=max_waiting,
        wait_s=wait_s,
        retry_after_s=3,
    )


async def test_a_workspace_past_its_share_waits_and_others_go_straight_through() -> None:
    limits = limiter()
    await limits.acquire("evil")
    await limits.acquire("evil")
    third = asyncio.create_task(limits.acquire("evil"))
    await _settle()
    assert not third.done()  # over its share although 4 slots are free
    assert limits.waiting("evil") == 1
    # Another workspace is not held up by it: granted without waiting.
    await asyncio.wait_for(limits.acquire("acme"), 0.5)
    assert (limits.held("evil"), limits.held("acme"), limits.in_use) == (2, 1, 3)
    limits.release("evil")
    await _settle()
    assert third.done() and third.exception() is None
    assert (limits.held("evil"), limits.waiting("evil"), limits.in_use) == (2, 0, 3)


async def test_past_the_wait_a_request_is_refused_with_retry_after() -> None:
    limits = limiter(per_workspace=1, wait_s=0.05)
    await limits.acquire("evil")
    with pytest.raises(RateLimited) as refused:
        await limits.acquire("evil")
    error = refused.value
    assert (error.status_code, error.kind) == (429, "rate_limited")
    assert error.headers() == {"Retry-After": "3"}
    assert error.data == {"per_workspace": 1}
    assert "FLOWHOOKS_DEBUGGER_LIST_PER_WORKSPACE" in error.message
    # The refused waiter left nothing behind; the holder's slot is intact.
    assert (limits.waiting("evil"), limits.held("evil"), limits.in_use, limits.refused) == (
        0,
        1,
        1,
        1,
    )
    limits.release("evil")
    assert (limits.held("evil"), limits.in_use) == (0, 0)
    await asyncio.wait_for(limits.acquire("evil"), 0.5)


async def test_past_the_queue_bound_a_request_is_refused_at_once() -> None:
    limits = limiter(per_workspace=1, max_waiting=2)
    await limits.acquire("evil")
    waiters = [asyncio.create_task(limits.acquire("evil")) for _ in range(2)]
    await _settle()
    with pytest.raises(RateLimited):
        await asyncio.wait_for(limits.acquire("evil"), 0.5)  # not after the long wait
    assert limits.waiting("evil") == 2
    # The queue is the workspace's own: another one still waits for a slot.
    other = asyncio.create_task(limits.acquire("acme"))
    await _settle()
    assert other.done()
    for _ in range(3):
        limits.release("evil")
        await _settle()
    assert all(w.done() for w in waiters) and limits.held("evil") == 0


async def test_forty_requests_of_one_workspace_run_at_most_its_share_at_once() -> None:
    limits = limiter(total=6, per_workspace=2, max_waiting=38, wait_s=5.0)
    running = 0
    most = 0

    async def search() -> None:
        nonlocal running, most
        async with limits.slot("evil"):
            running += 1
            most = max(most, running)
            await asyncio.sleep(0.001)
            running -= 1

    await asyncio.gather(*(search() for _ in range(40)))
    assert most == 2
    assert (limits.in_use, limits.held("evil"), limits.waiting("evil")) == (0, 0, 0)


async def test_a_freed_slot_goes_to_the_waiting_workspace_holding_fewest() -> None:
    # All slots taken: evil holds 2, acme 1. Both wait for more; evil waited first.
    limits = limiter(total=3, per_workspace=3)
    for workspace in ("evil", "evil", "acme"):
        await limits.acquire(workspace)
    evil_next = asyncio.create_task(limits.acquire("evil"))
    await _settle()
    acme_next = asyncio.create_task(limits.acquire("acme"))
    newcomer = asyncio.create_task(limits.acquire("third"))
    await _settle()
    limits.release("evil")  # free: "third" holds none, so it is served first
    await _settle()
    assert newcomer.done() and not evil_next.done() and not acme_next.done()
    limits.release("evil")  # evil 0, acme 1, third 1: evil's waiter now holds fewest
    await _settle()
    assert evil_next.done() and not acme_next.done()
    limits.release("third")  # evil 1 and acme 1: the first to wait of equals
    await _settle()
    assert acme_next.done()
    assert (limits.held("evil"), limits.held("acme"), limits.in_use) == (1, 2, 3)


async def test_any_number_of_busy_workspaces_cannot_starve_one_more() -> None:
    limits = limiter(total=4, per_workspace=2, wait_s=5.0)
    for workspace in ("a", "a", "b", "b"):
        await limits.acquire(workspace)
    # Ten more requests each from a and b queue up before the victim arrives.
    queued = [asyncio.create_task(limits.acquire(w)) for w in ("a", "b") * 10]
    await _settle()
    victim = asyncio.create_task(limits.acquire("victim"))
    await _settle()
    limits.release("a")
    await _settle()
    assert victim.done()  # the first slot freed, ahead of 20 earlier waiters
    for task in queued:
        task.cancel()
    await asyncio.gather(*queued, return_exceptions=True)


async def test_a_cancelled_waiter_leaves_no_slot_behind() -> None:
    limits = limiter(total=1, per_workspace=1)
    await limits.acquire("evil")
    waiter = asyncio.create_task(limits.acquire("acme"))
    await _settle()
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    assert limits.waiting("acme") == 0
    limits.release("evil")
    assert limits.in_use == 0
    # Granted, then cancelled before it ran (the client went away): released again.
    await limits.acquire("evil")
    granted_then_gone = asyncio.create_task(limits.acquire("acme"))
    await _settle()
    limits.release("evil")  # hands the slot to acme's waiter...
    granted_then_gone.cancel()  # ...which is cancelled before it resumes
    await asyncio.gather(granted_then_gone, return_exceptions=True)
    assert (limits.in_use, limits.held("acme")) == (0, 0)


async def test_a_grant_at_the_end_of_the_wait_is_kept() -> None:
    limits = limiter(total=1, per_workspace=1, wait_s=0.05)
    await limits.acquire("evil")
    waiter = asyncio.create_task(limits.acquire("acme"))
    await asyncio.sleep(0.049)
    limits.release("evil")
    await asyncio.sleep(0.05)
    # Granted or refused, never both: the slot count matches what the waiter got.
    if waiter.exception() is None:
        assert (limits.held("acme"), limits.in_use) == (1, 1)
    else:
        assert isinstance(waiter.exception(), RateLimited)
        assert (limits.held("acme"), limits.in_use) == (0, 0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_statement_time_owed_drains_at_the_share_and_slots_are_charged() -> None:
    clock = Clock()
    limits = WorkspaceLimiter(
        total=6, per_workspace=2, max_waiting=16, wait_s=1.0, time_share=0.5, clock=clock
    )
    async with limits.slot("evil"):
        clock.now += 2.0  # the statement took 2 s
    assert limits.owed("evil") == 2.0 and limits.owed("acme") == 0.0
    clock.now += 1.0
    assert limits.owed("evil") == 1.5  # half a second paid back per second
    clock.now += 10.0
    assert limits.owed("evil") == 0.0


async def test_past_its_burst_a_workspace_pauses_and_others_do_not() -> None:
    limits = WorkspaceLimiter(
        total=6, per_workspace=2, max_waiting=16, wait_s=1.0, time_share=1.0, time_burst_s=0.5
    )
    limits.charge("evil", 0.6)  # 0.1 s over its burst
    started = asyncio.get_running_loop().time()
    await asyncio.wait_for(limits.acquire("acme"), 0.05)
    assert asyncio.get_running_loop().time() - started < 0.05
    await limits.acquire("evil")
    assert asyncio.get_running_loop().time() - started >= 0.09
    assert (limits.held("evil"), limits.in_use) == (1, 2)


async def test_owing_more_than_the_wait_is_refused_after_it_with_the_rest_as_retry_after() -> None:
    limits = WorkspaceLimiter(
        total=6, per_workspace=2, max_waiting=16, wait_s=0.1, time_share=1.0, time_burst_s=0.5
    )
    limits.charge("evil", 5.0)  # 4.5 s over: a pause longer than the wait
    started = asyncio.get_running_loop().time()
    with pytest.raises(RateLimited) as refused:
        await limits.acquire("evil")
    # After the wait, not at once: a client retrying at once is paced by it.
    assert asyncio.get_running_loop().time() - started >= 0.09
    error = refused.value
    assert (error.status_code, error.kind, error.data) == (429, "rate_limited", {"time_share": 1.0})
    assert error.headers() == {"Retry-After": "5"}  # 4.4 s left, in whole seconds
    assert "FLOWHOOKS_DEBUGGER_LIST_TIME_SHARE" in error.message
    assert (limits.in_use, limits.waiting("evil"), limits.refused) == (0, 0, 1)


async def test_without_a_time_share_nothing_is_owed() -> None:
    limits = limiter()
    limits.charge("evil", 100.0)
    assert limits.owed("evil") == 0.0
    await asyncio.wait_for(limits.acquire("evil"), 0.05)

"""GroupCommit: one flush for the items that arrive while the previous one runs; each
caller hears its own flush's fate."""

import asyncio

import pytest

from shared.group_commit import GroupCommit


async def test_items_arriving_during_a_flush_share_the_next_one() -> None:
    flushed: list[list[int]] = []
    gate = asyncio.Event()

    async def flush(items: list[int]) -> None:
        flushed.append(items)
        if len(flushed) == 1:
            await gate.wait()  # the first flush is slow

    commit: GroupCommit[int] = GroupCommit(flush)
    first = asyncio.create_task(commit.add(0))
    await asyncio.sleep(0)
    rest = [asyncio.create_task(commit.add(n)) for n in range(1, 6)]
    await asyncio.sleep(0)
    assert flushed == [[0]] and not first.done()  # alone: flushed at once
    gate.set()
    await asyncio.gather(first, *rest)
    assert flushed == [[0], [1, 2, 3, 4, 5]]
    assert commit.flushes == 2


async def test_a_failed_flush_fails_its_own_callers_only() -> None:
    async def flush(items: list[int]) -> None:
        if 13 in items:
            raise OSError("disk on fire")

    commit: GroupCommit[int] = GroupCommit(flush, max_items=2)
    results = await asyncio.gather(
        *(commit.add(n) for n in (1, 2, 13, 14, 5)), return_exceptions=True
    )
    # Batches of two: [1, 2], [13, 14], [5]; only the second failed.
    assert [type(r).__name__ for r in results] == [
        "NoneType",
        "NoneType",
        "OSError",
        "OSError",
        "NoneType",
    ]


async def test_a_cancelled_caller_does_not_cancel_the_flush() -> None:
    flushed: list[list[int]] = []

    async def flush(items: list[int]) -> None:
        await asyncio.sleep(0.01)
        flushed.append(items)

    commit: GroupCommit[int] = GroupCommit(flush)
    task = asyncio.create_task(commit.add(1))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await commit.drain()
    assert flushed == [[1]]


async def test_a_flush_may_answer_item_by_item_and_batches_stop_at_their_size() -> None:
    flushed: list[list[int]] = []

    async def flush(items: list[int]) -> list[BaseException | None]:
        flushed.append(items)
        return [ValueError(f"no {n}") if n == 13 else None for n in items]

    commit: GroupCommit[int] = GroupCommit(flush, max_size=10, size=lambda n: n)
    # Handed over together, so one batch would hold them all but for the size bound;
    # an item larger than the bound still goes, alone.
    futures = [commit.submit(n) for n in (4, 6, 13, 1)]
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert flushed == [[4, 6], [13], [1]]
    assert [str(r) if r else None for r in results] == [None, None, "no 13", None]
    assert commit.flushes == 3


async def test_a_caller_cancelled_while_awaiting_its_own_future_leaves_its_item() -> None:
    """What `BatchPublisher` relies on, awaiting `submit`'s future without a shield: a
    caller that stops waiting (its own timeout) before the flush cancels only its own
    future; its item is flushed with the others, who hear their flush's fate."""
    flushed: list[list[int]] = []
    gate = asyncio.Event()

    async def flush(items: list[int]) -> None:
        flushed.append(items)
        if len(flushed) == 1:
            await gate.wait()

    commit: GroupCommit[int] = GroupCommit(flush)
    first = commit.submit(0)  # in flight
    await asyncio.sleep(0)

    async def wait_for(n: int) -> None:
        await commit.submit(n)

    waiting = [asyncio.create_task(wait_for(n)) for n in (1, 2, 3)]
    await asyncio.sleep(0)
    waiting[1].cancel()
    gate.set()
    results = await asyncio.gather(first, *waiting, return_exceptions=True)
    assert [type(result).__name__ for result in results] == [
        "NoneType",
        "NoneType",
        "CancelledError",
        "NoneType",
    ]
    assert flushed == [[0], [1, 2, 3]]

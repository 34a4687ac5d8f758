"""`Deadline` (shared/deadline.py) behaves as `asyncio.timeout` does."""

import asyncio

import pytest

from shared.deadline import Deadline


async def test_a_block_past_its_deadline_raises_timeout_error() -> None:
    with pytest.raises(TimeoutError):
        with Deadline(0.01):
            await asyncio.sleep(10)
    # The task is not left cancelling: it awaits again as usual.
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    await asyncio.sleep(0)


async def test_a_block_within_its_deadline_returns_and_leaves_no_timer() -> None:
    with Deadline(10) as deadline:
        await asyncio.sleep(0)
    assert deadline._handle.cancelled()


async def test_a_cancellation_from_outside_stays_a_cancellation() -> None:
    entered = asyncio.Event()

    async def wait() -> None:
        with Deadline(10):
            entered.set()
            await asyncio.sleep(10)

    task = asyncio.create_task(wait())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_an_error_inside_the_block_is_not_a_timeout() -> None:
    with pytest.raises(KeyError):
        with Deadline(10):
            await asyncio.sleep(0)
            raise KeyError("x")

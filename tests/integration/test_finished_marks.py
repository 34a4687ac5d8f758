"""The runner's finished marks on a real PostgreSQL (services/runner/finished.py): marks
handed over together are all written, those of many callers group-committed over one
connection held while marks keep coming, and the connection given back to the pool
once none came for a while (and at drain); a failed insert costs later marks nothing."""

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from services.runner.app import DATABASE
from services.runner.finished import FinishedRuns
from shared.db import open_pool

pytestmark = pytest.mark.integration


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await open_pool(database_url, 2, DATABASE.schema, DATABASE.migrations)
    try:
        yield pool
    finally:
        await pool.close()


async def test_marks_of_many_callers_are_all_written_over_a_held_connection(
    pool: asyncpg.Pool,
) -> None:
    marks = FinishedRuns(pool, keep_s=3600, hold_idle_s=3600)
    await asyncio.gather(
        *(marks.mark(f"r{n}") for n in range(50)),
        marks.mark_all([f"p{n}#parked1" for n in range(5)]),
        marks.mark_all([]),
    )
    ids = [f"r{n}" for n in range(50)] + [f"p{n}#parked1" for n in range(5)]
    assert await marks.which([*ids, "never"]) == set(ids)
    # Held between inserts: the pool has one of its two connections left to lend.
    first = await pool.acquire()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(pool.acquire(), 0.05)
    await marks.drain()  # given back: the pool lends both again
    second = await asyncio.wait_for(pool.acquire(), 5)
    await pool.release(first)
    await pool.release(second)


async def test_the_held_connection_goes_back_once_no_mark_came_for_a_while(
    pool: asyncpg.Pool,
) -> None:
    marks = FinishedRuns(pool, keep_s=3600, hold_idle_s=0.05)
    await marks.mark("r1")
    first = await pool.acquire()
    second = await asyncio.wait_for(pool.acquire(), 5)  # once the mark's is back
    await pool.release(first)
    await pool.release(second)
    await marks.mark("r2")  # held again, and given back at drain
    await marks.drain()
    assert await marks.which(["r1", "r2"]) == {"r1", "r2"}


async def test_a_mark_after_an_insert_failed_is_written_on_a_fresh_connection(
    pool: asyncpg.Pool,
) -> None:
    marks = FinishedRuns(pool, keep_s=3600)
    await marks.mark("before")
    # A value PostgreSQL refuses (a NUL byte in text): the insert fails, logged, not raised.
    await marks.mark("bad\x00id")
    await marks.mark("after")
    assert await marks.which(["before", "after"]) == {"before", "after"}
    await marks.drain()  # the held connection back: the pool can close
    assert await pool.fetchval("SELECT count(*) FROM runner.finished_runs") == 2

"""The runner's finished marks on a real PostgreSQL (services/runner/finished.py): marks
handed over together are all written, those of many callers group-committed over one
connection held while marks keep coming, and the connection given back to the pool
once they stop (and at drain)."""

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


async def test_marks_of_many_callers_are_all_written_and_the_connection_given_back(
    pool: asyncpg.Pool,
) -> None:
    marks = FinishedRuns(pool, keep_s=3600)
    await asyncio.gather(
        *(marks.mark(f"r{n}") for n in range(50)),
        marks.mark_all([f"p{n}#parked1" for n in range(5)]),
        marks.mark_all([]),
    )
    ids = [f"r{n}" for n in range(50)] + [f"p{n}#parked1" for n in range(5)]
    assert await marks.which([*ids, "never"]) == set(ids)
    # Nothing more to mark: the held connection is back in the pool, which can lend
    # both of its connections again.
    first, second = await pool.acquire(), await pool.acquire()
    await pool.release(first)
    await pool.release(second)
    await marks.drain()


async def test_a_mark_after_an_insert_failed_is_written_on_a_fresh_connection(
    pool: asyncpg.Pool,
) -> None:
    marks = FinishedRuns(pool, keep_s=3600)
    await marks.mark("before")
    # A value PostgreSQL refuses (a NUL byte in text): the insert fails, logged, not raised.
    await marks.mark("bad\x00id")
    await marks.mark("after")
    assert await marks.which(["before", "after"]) == {"before", "after"}
    await marks.drain()
    assert await pool.fetchval("SELECT count(*) FROM runner.finished_runs") == 2

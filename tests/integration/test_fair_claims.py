"""The debugger's fair claims on the real PostgreSQL: alert notices are claimed round
robin across workspaces and put back without their attempt (services/debugger/alerts.py);
replay jobs are claimed one per workspace per replica, the workspace served least
recently first, and a job handed over with its replays settled is taken at once
(services/debugger/replay_jobs.py)."""

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from services.debugger.alerts import AlertStore
from services.debugger.app import DATABASE
from services.debugger.replay_jobs import ReplayJobs
from shared.db import open_pool

pytestmark = pytest.mark.integration

A, B, C = (str(uuid.uuid4()) for _ in range(3))


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    opened = await open_pool(database_url, 4, DATABASE.schema, DATABASE.migrations)
    try:
        yield opened
    finally:
        await opened.close()


async def notice(pool: asyncpg.Pool, workspace: str, due_ago_s: float) -> str:
    """An alert of a new flow of `workspace` and one notice of it, due `due_ago_s` ago."""
    flow_id = uuid.uuid4()
    await pool.execute(
        "INSERT INTO debugger.alerts (flow_id, workspace_id, url, failure_rate, window_s,"
        " min_requests, secret) VALUES ($1, $2, 'https://example.com/hook', 1, 60, 1, 'whsec_x')",
        flow_id,
        uuid.UUID(workspace),
    )
    notice_id = f"msg_{uuid.uuid4().hex}"
    await pool.execute(
        "INSERT INTO debugger.alert_notices (id, flow_id, type, body, next_attempt_at)"
        " VALUES ($1, $2, 'flow.failure_rate', '{}', now() - make_interval(secs => $3))",
        notice_id,
        flow_id,
        due_ago_s,
    )
    return notice_id


async def test_notices_are_claimed_round_robin_across_workspaces(pool: asyncpg.Pool) -> None:
    store = AlertStore(pool)
    a = [await notice(pool, A, 100 - n) for n in range(5)]  # A's five, due long ago
    b = await notice(pool, B, 1)  # B's one, due just now
    first = await store.claim(2, 30)
    # The first due of each workspace, not the oldest two (both A's).
    assert {row["id"] for row in first} == {a[0], b}
    assert {row["workspace_id"] for row in first} == {A, B}
    assert [row["attempts"] for row in first] == [1, 1]
    rest = await store.claim(10, 30)
    assert sorted(row["id"] for row in rest) == sorted(a[1:])
    assert await store.claim(10, 30) == []  # all claimed


async def test_a_notice_put_back_keeps_its_attempts_and_waits(pool: asyncpg.Pool) -> None:
    store = AlertStore(pool)
    notice_id = await notice(pool, A, 5)
    [claimed] = await store.claim(1, 30)
    assert claimed["attempts"] == 1
    await store.put_back(notice_id, 60)
    row = await pool.fetchrow(
        "SELECT attempts, claimed_until, next_attempt_at > now() + interval '59 s' AS later"
        " FROM debugger.alert_notices WHERE id = $1",
        notice_id,
    )
    assert dict(row) == {"attempts": 0, "claimed_until": None, "later": True}
    assert await store.claim(1, 30) == []  # not due before its time


async def job(pool: asyncpg.Pool, workspace: str, created_ago_s: float) -> uuid.UUID:
    job_id = uuid.uuid4()
    await pool.execute(
        "INSERT INTO debugger.replay_jobs (id, flow_id, workspace_id, filter, force, status,"
        " total, created_at) VALUES ($1, $2, $3, '{}', false, 'running', 1,"
        " now() - make_interval(secs => $4))",
        job_id,
        uuid.uuid4(),
        uuid.UUID(workspace),
        created_ago_s,
    )
    return job_id


async def test_replay_jobs_are_claimed_one_per_workspace_round_robin(pool: asyncpg.Pool) -> None:
    jobs = ReplayJobs(pool, 100)
    a1, a2 = await job(pool, A, 30), await job(pool, A, 20)
    c1 = await job(pool, C, 10)
    claimed = await jobs.claim("one", 30, 10)
    assert claimed is not None and (claimed.id, claimed.wait_s) == (a1, 0)
    # This replica works A's job: the next place goes to another workspace's.
    assert await jobs.others_waiting([A]) is True
    again = await jobs.claim("one", 30, 10, busy_workspaces=[A])
    assert again is not None and again.id == c1
    assert await jobs.others_waiting([A, C]) is False
    assert await jobs.claim("one", 30, 10, busy_workspaces=[A, C]) is None

    # A's job hands its place over, its replays settled: C was served after A, so A is
    # next; its job never held comes before the one just handed over, without a wait.
    await jobs.release(a1, "one", settled=True)
    await jobs.release(c1, "one", settled=True)
    turn = await jobs.claim("two", 30, 10)
    assert turn is not None and (turn.id, turn.wait_s) == (a2, 0)
    turn = await jobs.claim("two", 30, 10, busy_workspaces=[A])
    assert turn is not None and (turn.id, turn.wait_s) == (c1, 0)


async def test_a_job_released_at_shutdown_makes_the_next_holder_wait(pool: asyncpg.Pool) -> None:
    jobs = ReplayJobs(pool, 100)
    a1 = await job(pool, A, 30)
    assert (await jobs.claim("one", 30, 10)) is not None
    await jobs.release(a1, "one")  # replays may be in flight: not settled
    taken = await jobs.claim("two", 30, 10)
    assert taken is not None and taken.id == a1
    assert 9 <= taken.wait_s <= 10  # the replay timeout, from the release

"""`runner.paced_runs` on a real PostgreSQL (services/runner/paced_runs.py): two
`PacedRuns` stand for two runner replicas claiming from one table. Per-key order and
concurrency, a flow's limit, a lapsed lease taken over (the run first of its key again),
throttle, debounce and the settle window."""

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.runner.app import DATABASE
from services.runner.paced_runs import CLAIM_LOCK, PacedRuns
from services.runner.pacing import Lane
from shared.db import open_pool
from shared.schemas.runs import StartRun, WebhookRequest

PAST = datetime.now(UTC) - timedelta(minutes=1)


@pytest.fixture
async def replicas(database_url: str) -> AsyncIterator[tuple[PacedRuns, PacedRuns]]:
    pool = await open_pool(database_url, 10, DATABASE.schema, DATABASE.migrations)
    try:
        yield PacedRuns(pool, lease_s=30, settle_s=0), PacedRuns(pool, lease_s=30, settle_s=0)
    finally:
        await pool.close()


def start(request_id: str, at: datetime, flow_id: str = "f1", workspace: str = "w1") -> StartRun:
    request = WebhookRequest(
        request_id=request_id,
        flow_id=flow_id,
        workspace_id=workspace,
        received_at=at,
        method="POST",
        path="/",
        query={},
        headers={},
        content_type=None,
        raw_body="",
        input={},
    )
    return StartRun(request=request, flow_version=1)


async def add(paced: PacedRuns, ids: list[str], after_ms: int = 0, **lane: Any) -> None:
    """`ids` accepted a millisecond apart, in that order, all in one lane."""
    starts = [start(i, PAST + timedelta(milliseconds=after_ms + n)) for n, i in enumerate(ids)]
    await paced.add([(s, Lane(not_before=s.request.received_at, **lane)) for s in starts])


async def claimed(paced: PacedRuns, capacity: int = 100) -> list[str]:
    return [run.start.request.request_id for run in (await paced.claim(capacity)).runs]


async def test_per_key_fifo_across_replicas(replicas: tuple[PacedRuns, PacedRuns]) -> None:
    a, b = replicas
    await add(a, ["a1", "a2", "a3"], order_key="A", order_limit=1)
    await add(a, ["b1", "b2"], order_key="B", order_limit=1)
    assert sorted(await claimed(a)) == ["a1", "b1"]
    assert await claimed(b) == []  # each key's next waits for the one running
    await a.finish(["a1"])
    assert await claimed(b) == ["a2"]
    await add(a, ["a4"], after_ms=10, order_key="A", order_limit=1)  # accepted last
    await b.finish(["a2"])
    assert await claimed(a) == ["a3"]


async def test_a_key_runs_its_concurrency_at_once_in_order(
    replicas: tuple[PacedRuns, PacedRuns],
) -> None:
    a, b = replicas
    await add(a, ["k1", "k2", "k3", "k4"], order_key="K", order_limit=2)
    assert await claimed(a, capacity=1) == ["k1"]
    assert await claimed(b) == ["k2"]
    await b.finish(["k2"])
    assert await claimed(a) == ["k3"]  # k1 still runs: two at once, no more


async def test_a_lapsed_lease_is_taken_over_before_the_next_of_its_key(
    replicas: tuple[PacedRuns, PacedRuns],
) -> None:
    a, b = replicas
    a.lease_s = 0.3
    await add(a, ["x1", "x2"], order_key="X", order_limit=1)
    assert await claimed(a) == ["x1"]
    await a.renew(["x1"])  # renewed while its replica lives
    assert await claimed(b) == []
    await asyncio.sleep(0.4)  # its replica died: no renewal
    taken = (await b.claim(10)).runs
    assert [(run.start.request.request_id, run.claims) for run in taken] == [("x1", 2)]
    await b.finish(["x1"])
    assert await claimed(b) == ["x2"]


async def test_a_flow_limit_counts_every_replica(replicas: tuple[PacedRuns, PacedRuns]) -> None:
    a, b = replicas
    await add(a, [f"r{n}" for n in range(5)], flow_limit=2)
    assert await claimed(a, capacity=1) == ["r0"]
    assert await claimed(b) == ["r1"]
    assert await claimed(a) == []
    await a.finish(["r0"])
    assert await claimed(a) == ["r2"]  # in arrival order


async def test_a_hot_key_takes_turns_under_a_flow_limit(
    replicas: tuple[PacedRuns, PacedRuns],
) -> None:
    a, _ = replicas
    await add(a, [f"h{n}" for n in range(5)], order_key="hot", order_limit=5, flow_limit=1)
    assert await claimed(a) == ["h0"]
    await add(a, ["c0"], order_key="cold", order_limit=5, flow_limit=1)
    await a.finish(["h0"])
    assert await claimed(a) == ["c0"]  # the lane served least recently goes first


async def test_throttle_delays_and_never_drops(replicas: tuple[PacedRuns, PacedRuns]) -> None:
    a, b = replicas
    await add(a, ["t1", "t2", "t3"], throttle_key="T", throttle_limit=2, throttle_period_s=0.3)
    assert await claimed(a) == ["t1", "t2"]
    await a.finish(["t1", "t2"])
    assert await claimed(b) == []  # two started within the period already
    await asyncio.sleep(0.35)
    assert await claimed(b) == ["t3"]


async def test_debounce_claims_the_last_of_a_burst(replicas: tuple[PacedRuns, PacedRuns]) -> None:
    a, _ = replicas
    now = datetime.now(UTC)
    burst = [start(f"d{n}", now + timedelta(milliseconds=n)) for n in range(3)]
    lane = Lane(not_before=now, debounce_key="D", debounce_period_s=0.3, debounce_max_s=5)
    await a.add([(s, lane) for s in burst])
    assert (await a.claim(10)).runs == []  # not before period_s after the last
    await asyncio.sleep(0.35)
    claim = await a.claim(10)
    assert [run.start.request.request_id for run in claim.runs] == ["d2"]
    assert sorted((d.start.request.request_id, d.debounced_by) for d in claim.debounced) == [
        ("d0", "d2"),
        ("d1", "d2"),
    ]


async def test_not_claimed_before_earlier_runs_could_arrive(database_url: str) -> None:
    pool = await open_pool(database_url, 2, DATABASE.schema, DATABASE.migrations)
    try:
        paced = PacedRuns(pool, lease_s=30, settle_s=0.3)
        await paced.add([(start("s1", datetime.now(UTC)), Lane(not_before=PAST))])
        assert await claimed(paced) == []
        await asyncio.sleep(0.35)
        assert await claimed(paced) == ["s1"]
    finally:
        await pool.close()


async def test_a_finished_run_is_not_added_again(replicas: tuple[PacedRuns, PacedRuns]) -> None:
    a, _ = replicas
    await add(a, ["f1"])
    assert await claimed(a) == ["f1"]
    await a.finish(["f1"])
    await add(a, ["f1"])  # its message delivered again
    assert await claimed(a) == []


async def test_an_empty_table_is_claimed_without_the_lock(
    replicas: tuple[PacedRuns, PacedRuns],
) -> None:
    """Idle replicas poll: with nothing paced they must not queue on the claim lock.
    Another replica holds it here; a claim that took it would wait until the end."""
    a, _ = replicas
    async with a.pool.acquire() as holder, holder.transaction():
        await holder.execute("SELECT pg_advisory_xact_lock($1)", CLAIM_LOCK)
        empty = await asyncio.wait_for(a.claim(100), 10)
        assert (empty.runs, empty.debounced) == ([], [])
        await add(a, ["r1"])
        waiting = asyncio.create_task(a.claim(100))
        await asyncio.sleep(0.3)
        assert not waiting.done()  # a run waits: the claim does take the lock
    assert [run.start.request.request_id for run in (await waiting).runs] == ["r1"]

"""Runs waiting in `delay` steps on a real PostgreSQL and broker (services/runner/
delays.py): stored within the workspace's bounds (a refused store leaves nothing
behind), claimed when due (and only then) and published as an async run (the row gone only
once the broker confirmed), and a second copy of the same resume dropped."""

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import aio_pika
import asyncpg
import pytest

from harness.factories import webhook_request
from services.runner.app import DATABASE
from services.runner.delays import DelayedRuns, WaitingBoundExceeded
from services.runner.worker_protocol import FlowSnapshot, Resumed, Suspension
from shared.db import open_pool
from shared.messaging import encoding, topology
from shared.messaging.batching import BatchPublisher
from shared.messaging.connection import Broker
from shared.messaging.contracts import RUN_STARTED
from shared.schemas.runs import (
    RunProgress,
    RunsProgressed,
    StartRun,
    StartRuns,
    progress_json,
    request_json,
)

pytestmark = pytest.mark.integration


@pytest.fixture
async def parts(database_url: str, amqp_url: str) -> AsyncIterator[tuple[asyncpg.Pool, Broker]]:
    pool = await open_pool(database_url, 4, DATABASE.schema, DATABASE.migrations)
    broker = Broker(amqp_url, "test")
    await broker.connect()
    try:
        yield pool, broker
    finally:
        await broker.close()
        await pool.close()


def waiting(
    request_id: str, resume_in_s: float, workspace: str = "w1"
) -> tuple[StartRun, Suspension]:
    request = webhook_request({"n": 1}, request_id=request_id, workspace_id=workspace, mode="async")
    start = StartRun(request=request, flow_version=1, origin="ingress-1")
    state = Resumed(
        next_step=2,
        values={"first": {"value": 2}},
        trace=[],
        started_at=datetime.now(UTC),
        flow=FlowSnapshot(id=request.flow_id, workspace_id=workspace, version=1, definition={}),
    )
    resume_at = datetime.now(UTC) + timedelta(seconds=resume_in_s)
    return start, Suspension(request_id=request_id, resume_at=resume_at, state=state)


async def test_stored_within_bounds_then_resumed_once_confirmed(
    parts: tuple[asyncpg.Pool, Broker],
) -> None:
    pool, broker = parts
    delays = DelayedRuns(pool, broker, max_waiting_runs=1, max_state_bytes=1_000_000)
    await delays.store(*waiting("r1", -1))
    with pytest.raises(WaitingBoundExceeded):
        await delays.store(*waiting("r2", -1))
    await delays.store(*waiting("later", 60, workspace="w2"))  # not due: it stays
    assert await pool.fetchval("SELECT count(*) FROM runner.waiting_runs") == 2
    assert (
        await pool.fetchval("SELECT runs FROM runner.waiting_totals WHERE workspace_id = 'w1'") == 1
    )
    # The message the run came from is marked: its redelivery skips the run.
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM runner.finished_runs WHERE request_id = 'r1#waiting-from0'"
        )
        == 1
    )

    arrived: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        await arrived.put(encoding.body(message))
        await message.ack()

    await broker.consume(topology.ASYNC_RUNS, on_message, prefetch=10)
    assert await delays.resume_due() == 1
    (resumed,) = StartRuns.model_validate_json(await asyncio.wait_for(arrived.get(), 10)).items
    assert resumed.request.request_id == "r1"
    assert (resumed.origin, resumed.deadline, resumed.parked) == (None, None, 0)
    assert resumed.resume is not None
    assert resumed.resume["next_step"] == 2
    assert resumed.resume["values"] == {"first": {"value": 2}}
    assert await pool.fetchval("SELECT array_agg(request_id) FROM runner.waiting_runs") == ["later"]
    assert (
        await pool.fetchval("SELECT runs FROM runner.waiting_totals WHERE workspace_id = 'w1'") == 0
    )
    assert await delays.resume_due() == 0  # nothing due twice

    # A second copy of the same resume (published again after a database failover)
    # goes nowhere; the first, and a parked copy of it, run.
    assert await delays.fresh_copies([resumed]) == [resumed]
    assert await delays.fresh_copies([resumed]) == []
    parked = resumed.model_copy(update={"parked": 1})
    assert await delays.fresh_copies([parked]) == [parked]


class HeldBroker:
    """The `run.started` publisher's broker, holding its first message until released:
    a flush in flight, as under load, with what comes meanwhile queued behind it."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.items: list[tuple[str, bool]] = []  # request id, with a resume time

    async def publish(self, body: bytes, **_: object) -> None:
        if not self.items:
            await self.release.wait()
        for item in RunsProgressed.model_validate_json(body).items:
            self.items.append((item.request.request_id, item.resume_at is not None))


async def test_waiting_goes_through_the_runner_progress_publisher_after_running(
    parts: tuple[asyncpg.Pool, Broker],
) -> None:
    """A run announced `running` by the run.started hold's tick while a flush is in
    flight, then stopped in a delay: its `waiting` reaches the debugger after its
    `running`, since both go through one publisher (two publishers would send the
    `waiting` at once, ahead of the `running` still queued)."""
    pool, broker = parts
    held = HeldBroker()
    progress: BatchPublisher[RunProgress] = BatchPublisher(held, RUN_STARTED)  # type: ignore[arg-type]
    delays = DelayedRuns(
        pool, broker, max_waiting_runs=5, max_state_bytes=1_000_000, progress=progress
    )
    start, suspension = waiting("r1", 60)
    now = datetime.now(UTC)
    progress.publish_encoded_soon(
        progress_json(request_json(webhook_request({}, request_id="other")), now)
    )
    await asyncio.sleep(0)  # that flush is in flight, held
    progress.publish_encoded_soon(progress_json(request_json(start.request), now))
    storing = asyncio.create_task(delays.store(start, suspension))

    async def queued_behind_the_flush() -> None:  # the run's `running`, then its `waiting`
        while progress.pending < 2:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(queued_behind_the_flush(), 10)
    held.release.set()
    await asyncio.wait_for(storing, 10)
    await progress.drain()
    assert held.items == [("other", False), ("r1", False), ("r1", True)]

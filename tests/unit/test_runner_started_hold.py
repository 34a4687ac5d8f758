"""`run.started` after a hold (services/runner/started_hold.py): a run that ends within
the hold is never announced, one still going is, with one timer per generation of runs
and none per run; `RunService` holds async runs' announcements and announces at once
what must be (a sync run accepted on its timeout, or a hold of 0). The timer is a fake
here: no time passes in these tests."""

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from harness.factories import webhook_request
from services.runner.runs import RunService
from services.runner.started_hold import HeldStarts
from shared.messaging import naming
from shared.schemas.runs import RunProgress, StartRun, StartRuns, progress_json, request_json
from shared.service import Delivery
from tests.unit.test_runner_async_admission import (
    FakeBroker,
    FakeFinishedRuns,
    FakeFlows,
    FakePool,
    FakeRecords,
    settle,
)

T0 = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)
FLOW, WORKSPACE = "7f0c2a4e-0000-4000-8000-000000000001", "workspace-a"


class FakeTimers:
    """`loop.call_later`: what was armed, fired when the test says."""

    def __init__(self) -> None:
        self.armed: list[tuple[float, Callable[[], None], FakeHandle]] = []

    def __call__(self, delay_s: float, callback: Callable[[], None]) -> "FakeHandle":
        handle = FakeHandle()
        self.armed.append((delay_s, callback, handle))
        return handle

    def pending(self) -> list["FakeHandle"]:
        return [handle for _, _, handle in self.armed if not handle.fired and not handle.cancelled]

    def fire(self) -> None:
        """The one pending timer fires (there is never more than one)."""
        [(_, callback, handle)] = [entry for entry in self.armed if entry[2] in self.pending()]
        handle.fired = True
        callback()


class FakeHandle:
    def __init__(self) -> None:
        self.fired = False
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


def a_request(n: int, mode: str = "async") -> Any:
    """The same request every time for the same `n`."""
    return webhook_request(
        request_id=f"r{n}", flow_id=FLOW, workspace_id=WORKSPACE, received_at=T0, mode=mode
    )


def request(n: int) -> bytes:
    return request_json(a_request(n))


def held(hold_s: float = 0.1) -> tuple[HeldStarts, list[bytes], FakeTimers]:
    published: list[bytes] = []
    timers = FakeTimers()
    return HeldStarts(published.append, hold_s, call_later=timers), published, timers


def announced(published: list[bytes]) -> list[str]:
    return [RunProgress.model_validate_json(body).request.request_id for body in published]


def test_a_run_that_ends_within_the_hold_is_never_announced() -> None:
    starts, published, timers = held()
    token = starts.hold(request(1), T0)
    assert [(delay, handle) for delay, _, handle in timers.armed] == [(0.1, timers.pending()[0])]
    starts.withdraw(token)
    timers.fire()
    assert published == []
    assert timers.pending() == []  # nothing held: no timer
    assert (starts.held, starts.announced) == (0, 0)


def test_runs_still_going_are_announced_as_encoded_at_their_start() -> None:
    starts, published, timers = held()
    first = starts.hold(request(1), T0)
    # Started while the timer is armed: the next generation, announced a tick later.
    second = starts.hold(request(2), T0 + timedelta(milliseconds=40))
    quick = starts.hold(request(3), T0 + timedelta(milliseconds=50))
    starts.withdraw(quick)
    timers.fire()
    assert published == [progress_json(request(1), T0)]
    assert RunProgress.model_validate_json(published[0]) == RunProgress(
        request=a_request(1), at=T0, resume_at=None
    )
    timers.fire()
    assert announced(published) == ["r1", "r2"]
    assert published[1] == progress_json(request(2), T0 + timedelta(milliseconds=40))
    # Ending after their announcement changes nothing; nothing is held, no timer left.
    starts.withdraw(first)
    starts.withdraw(second)
    assert (starts.held, starts.announced, timers.pending()) == (0, 2, [])


def test_one_timer_per_generation_not_per_run() -> None:
    starts, published, timers = held()
    tokens = [starts.hold(request(n), T0) for n in range(1000)]
    assert len(timers.armed) == 1
    for token in tokens[1:-1]:
        starts.withdraw(token)  # all but the first and the last end within the hold
    timers.fire()
    assert announced(published) == ["r0"]
    assert len(timers.armed) == 2  # the young generation's tick
    timers.fire()
    assert announced(published) == ["r0", "r999"]
    assert (len(timers.armed), timers.pending()) == (2, [])


def test_after_an_idle_tick_the_next_run_opens_a_generation_of_its_own() -> None:
    starts, published, timers = held()
    starts.withdraw(starts.hold(request(1), T0))
    timers.fire()
    assert timers.pending() == []
    starts.hold(request(2), T0 + timedelta(seconds=1))
    # Announced at the very next tick (a hold after it started), not two.
    timers.fire()
    assert announced(published) == ["r2"]


def test_a_publish_that_fails_leaves_the_hold_working() -> None:
    calls: list[bytes] = []

    def publish(body: bytes) -> None:
        calls.append(body)
        raise RuntimeError("the broker layer failed")

    timers = FakeTimers()
    starts = HeldStarts(publish, 0.1, call_later=timers)
    starts.hold(request(1), T0)
    starts.hold(request(2), T0)
    timers.fire()  # logged, not raised
    assert len(calls) == 1
    assert len(timers.pending()) == 1  # the young generation still gets its tick
    timers.fire()
    assert len(calls) == 2


async def test_close_cancels_the_timer_and_forgets_what_is_held() -> None:
    starts, published, timers = held()
    starts.hold(request(1), T0)
    [handle] = timers.pending()
    await starts.close()
    assert (handle.cancelled, starts.held, published) == (True, 0, [])


def test_a_hold_of_zero_is_not_a_hold() -> None:
    with pytest.raises(ValueError):
        HeldStarts(lambda body: None, 0)


class FakeStarted:
    """The run.started `BatchPublisher`: what was handed to it."""

    def __init__(self) -> None:
        self.items: list[bytes] = []

    def publish_encoded_soon(self, encoded: bytes) -> None:
        self.items.append(encoded)


class FakeReplies:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def send(self, reply_to: str, request_id: str, *_: Any) -> None:
        self.sent.append((reply_to, request_id))


def service(started_after_s: float) -> tuple[RunService, FakePool, FakeStarted, FakeReplies]:
    pool, started, replies = FakePool(), FakeStarted(), FakeReplies()
    runs = RunService(
        FakeBroker(),  # type: ignore[arg-type]
        FakeFlows(),  # type: ignore[arg-type]
        pool,  # type: ignore[arg-type]
        FakeRecords(),  # type: ignore[arg-type]
        started,  # type: ignore[arg-type]
        replies,  # type: ignore[arg-type]
        FakeFinishedRuns(),  # type: ignore[arg-type]
        started_after_s=started_after_s,
    )
    return runs, pool, started, replies


def async_start(n: int) -> StartRun:
    return StartRun(request=a_request(n), flow_version=1)


def take(
    runs: RunService, starts: list[StartRun], reply_to: str | None = None
) -> "asyncio.Task[None]":
    queue = naming.ASYNC_RUNS_QUEUE if reply_to is None else naming.SYNC_RUNS_QUEUE
    delivery = Delivery(False, reply_to, queue, "StartRuns")
    handle = runs.on_async_runs if reply_to is None else runs.on_sync_runs
    return asyncio.create_task(handle(StartRuns(items=starts), delivery))


async def test_the_service_announces_only_the_async_runs_still_going_at_the_tick() -> None:
    runs, pool, started, _ = service(started_after_s=60.0)  # its own timer never fires here
    fast, slow = async_start(1), async_start(2)
    handling = take(runs, [fast, slow])
    await settle()
    assert pool.started == ["r1", "r2"]
    assert runs.held_starts.held == 2
    pool.finish("r1")
    await settle()
    assert runs.held_starts.held == 1
    # As the timer would: r1 opened the first generation, r2 (started while its timer
    # was armed) is in the next.
    runs.held_starts.tick()
    assert started.items == []
    runs.held_starts.tick()
    assert announced(started.items) == ["r2"]
    # Announced with when it started, not when the tick came.
    at = RunProgress.model_validate_json(started.items[0]).at
    assert at <= datetime.now(UTC)
    pool.finish("r2")
    await asyncio.wait_for(handling, 1)
    assert runs.held_starts.held == 0
    runs.held_starts.tick()
    assert announced(started.items) == ["r2"]
    await runs.held_starts.close()


async def test_a_sync_run_accepted_on_its_timeout_is_announced_at_once() -> None:
    runs, pool, started, replies = service(started_after_s=60.0)
    accepted = StartRun(request=a_request(1, mode="sync"), flow_version=1, accept_on_timeout=True)
    handling = take(runs, [accepted], reply_to="caller")
    await settle()
    # Its caller is sent to the status URL at the flow's timeout: the record must be
    # there by then, whatever the hold.
    assert announced(started.items) == ["r1"]
    assert runs.held_starts.held == 0
    pool.finish("r1")
    await asyncio.wait_for(handling, 1)
    assert replies.sent == [("caller", "r1")]


async def test_a_hold_of_zero_announces_every_async_run_as_it_starts() -> None:
    runs, pool, started, _ = service(started_after_s=0)
    handling = take(runs, [async_start(1)])
    await settle()
    assert runs.held_starts is None
    assert announced(started.items) == ["r1"]
    pool.finish("r1")
    await asyncio.wait_for(handling, 1)
    assert announced(started.items) == ["r1"]

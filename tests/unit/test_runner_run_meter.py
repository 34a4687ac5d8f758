"""MeteredRun and SliceMarker: a run's slices are charged to it (their CPU time, not
their wall time) and marked while they compute; a run past its CPU budget is ended at
its next await."""

import asyncio
import os
import threading
import time

import pytest

from services.runner import run_meter
from services.runner.render_budget import RenderBudget, RenderTimeout, RenderWatchdog
from services.runner.run_meter import CpuBudgetExceeded, MeteredRun, SliceMarker


@pytest.fixture
def marker() -> SliceMarker:
    return SliceMarker.create()


def burn_cpu(seconds: float) -> None:
    """Computes until this thread has used `seconds` of CPU time (whatever the load)."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


async def test_the_marker_names_the_computing_run_only_while_it_computes(
    marker: SliceMarker,
) -> None:
    seen: list[int] = []

    async def run() -> str:
        seen.append(marker.read()[0])
        await asyncio.sleep(0)
        seen.append(marker.read()[0])
        return "done"

    assert await MeteredRun(run(), 7, marker, cpu_budget_s=5) == "done"
    assert seen == [7, 7]
    assert marker.read() == (0, 0.0)


async def test_a_run_past_its_cpu_budget_is_stopped_at_its_next_await(
    marker: SliceMarker,
) -> None:
    steps = 0

    async def burn() -> None:
        nonlocal steps
        while True:
            burn_cpu(0.02)
            steps += 1
            await asyncio.sleep(0)

    metered = MeteredRun(burn(), 1, marker, cpu_budget_s=0.1)
    with pytest.raises(CpuBudgetExceeded):
        await asyncio.wait_for(metered, 5)
    assert 0.1 < metered.cpu_used_s < 0.2
    assert 5 <= steps <= 6


async def test_waiting_costs_no_budget(marker: SliceMarker) -> None:
    async def wait() -> int:
        await asyncio.sleep(0.2)
        return 1

    metered = MeteredRun(wait(), 1, marker, cpu_budget_s=0.05)
    assert await metered == 1
    assert metered.cpu_used_s < 0.05


async def test_exceptions_and_cancellation_reach_the_run(marker: SliceMarker) -> None:
    cleaned = asyncio.Event()

    async def run() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            cleaned.set()

    task = asyncio.ensure_future(MeteredRun(run(), 3, marker, cpu_budget_s=5))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned.is_set() and marker.read() == (0, 0.0)


def test_a_slice_that_lasts_is_seen_from_outside(marker: SliceMarker) -> None:
    other = SliceMarker(marker.fd)  # as the supervisor maps it
    marker.enter(9, time.thread_time_ns())
    time.sleep(0.05)
    key, lasted = other.read()
    assert key == 9 and lasted >= 0.05
    marker.leave()
    assert other.read() == (0, 0.0)


async def test_a_light_run_passes_a_heavy_one(marker: SliceMarker) -> None:
    """After each long slice the heavy run gives turns to the others: the light run's
    five short slices all run before the heavy run's second slice."""
    events: list[str] = []

    async def heavy() -> None:
        for n in range(3):
            burn_cpu(0.03)
            events.append(f"heavy{n}")
            await asyncio.sleep(0)

    async def light() -> None:
        for _ in range(5):
            await asyncio.sleep(0)
        events.append("light")

    await asyncio.gather(
        MeteredRun(heavy(), 1, marker, cpu_budget_s=5), MeteredRun(light(), 2, marker, 5)
    )
    assert events == ["heavy0", "light", "heavy1", "heavy2"]


def test_a_slice_half_begun_reads_as_idle(marker: SliceMarker) -> None:
    """The worker can be preempted between the stores of `enter`: the times are
    stored before the key, so a reader then sees no run rather than a run paired with a
    stale time (which would read as a slice lasting since boot, and get its worker
    killed)."""
    marker.enter(3, time.thread_time_ns())
    marker.leave()
    # The first store of the next `enter`, and nothing more yet.
    run_meter._FIELD.pack_into(marker._map, run_meter._SINCE, time.monotonic_ns())
    assert marker.read() == (0, 0.0)
    run_meter._FIELD.pack_into(marker._map, run_meter._KEY, 4)  # the second store
    key, lasted = marker.read()
    assert key == 4 and 0 <= lasted < 1


async def test_a_slice_that_waits_is_not_charged_and_one_that_computes_is(
    marker: SliceMarker,
) -> None:
    """A slice blocked in a system call (a sleep, as a thread waiting on I/O or taken off
    the CPU is) costs its run no CPU; a slice that computes is charged what it used."""

    async def blocked() -> None:
        time.sleep(0.2)  # in the slice: no await

    waiting = MeteredRun(blocked(), 1, marker, cpu_budget_s=0.1)
    await waiting
    assert waiting.cpu_used_s < 0.05

    async def computing() -> None:
        for _ in range(3):
            burn_cpu(0.06)
            await asyncio.sleep(0)

    busy = MeteredRun(computing(), 2, marker, cpu_budget_s=0.1)
    with pytest.raises(CpuBudgetExceeded):
        await busy
    assert busy.cpu_used_s >= 0.12  # stopped at the await after its second slice


def test_the_supervisor_reads_a_slice_in_cpu_time(marker: SliceMarker) -> None:
    """`cpu_s` reads the worker's main thread's CPU time from /proc (here the worker is
    this process, whose main thread runs the test): a slice that lasted 0.2 s in wall
    time while it waited used almost no CPU; one that computed used what it computed."""
    assert threading.current_thread() is threading.main_thread()
    supervisor = SliceMarker(marker.fd)
    supervisor.watch(os.getpid())
    marker.enter(5, time.thread_time_ns())
    time.sleep(0.2)
    assert supervisor.read()[1] >= 0.2
    assert supervisor.cpu_s(5) < 0.05
    burn_cpu(0.1)
    # /proc's figure lags the thread's clock by a scheduler tick at most.
    assert 0.09 <= supervisor.cpu_s(5) <= supervisor.read()[1]
    assert supervisor.cpu_s(6) == 0.0  # not the run computing now
    marker.leave()
    assert supervisor.cpu_s(5) == 0.0  # the slice is over


def test_a_slice_paired_with_another_slices_cpu_time_reads_as_over(
    marker: SliceMarker,
) -> None:
    """The worker stores the CPU time, then the wall time, then the key: a reader that
    sees a new slice's wall time with an old key (the stores in between) gets 0.0, not
    a CPU time from one slice measured against another."""
    supervisor = SliceMarker(marker.fd)
    supervisor.watch(os.getpid())
    marker.enter(7, 0)  # a CPU time long past: this slice would read as seconds of CPU
    assert supervisor.cpu_s(7) > 0.05
    marker.leave()
    run_meter._FIELD.pack_into(marker._map, run_meter._CPU_SINCE, time.thread_time_ns())
    assert supervisor.cpu_s(7) == 0.0  # left, the next one half begun


def test_without_proc_the_wall_time_stands_in(marker: SliceMarker) -> None:
    supervisor = SliceMarker(marker.fd)  # not told the worker's pid
    marker.enter(8, time.thread_time_ns())
    time.sleep(0.05)
    assert supervisor.cpu_s(8) >= 0.05
    supervisor.watch(2**22 + 1)  # no such process: it is gone, its loss is handled
    assert supervisor.cpu_s(8) == 0.0


# --- the render watchdog: CPU time of the rendering thread -----------------------------


def test_the_render_watchdog_does_not_fire_for_a_render_that_is_off_the_cpu() -> None:
    """A render whose thread is off the CPU (descheduled while others compute, here
    asleep) for longer than the budget is not charged the wait; one that computes past
    it is interrupted."""
    watchdog = RenderWatchdog(tick_s=0.005)
    with watchdog.limit(0.1):
        time.sleep(0.3)
        total = sum(range(10_000))  # bytecode after the wait, where a firing would land
    assert (total, watchdog.fired_count) == (49_995_000, 0)
    with pytest.raises(RenderTimeout), watchdog.limit(0.1):
        burn_cpu(30)
    assert watchdog.fired_count == 1


def test_renders_sharing_a_budget_are_charged_what_they_used() -> None:
    watchdog = RenderWatchdog(tick_s=0.005)
    budget = RenderBudget(0.2, "the renders")
    with watchdog.limit(60, budget):
        burn_cpu(0.12)
    with watchdog.limit(60, budget):
        time.sleep(0.2)  # waiting is free
    assert 0.12 <= budget.used_s < 0.2
    with pytest.raises(RenderTimeout), watchdog.limit(60, budget):
        burn_cpu(0.12)  # 0.08 s were left
    assert watchdog.fired_count == 1 and budget.used_s >= 0.2
    with pytest.raises(RenderTimeout), watchdog.limit(60, budget):
        pass  # nothing left: refused before it starts


def test_a_render_with_a_smaller_budget_is_stopped_while_the_watchdog_sleeps_for_another() -> None:
    """The watchdog sleeps until the armed render could be past its budget; a render
    armed meanwhile with less of a budget wakes it, or it would run on unchecked."""
    watchdog = RenderWatchdog(tick_s=0.005)
    with watchdog.limit(60):
        time.sleep(0.05)  # the watchdog now sleeps for up to a minute
    with pytest.raises(RenderTimeout), watchdog.limit(0.1):
        burn_cpu(30)
    assert watchdog.fired_count == 1


def test_a_render_after_many_is_stopped_by_the_watchdog_lingering_between_renders() -> None:
    """Under load the watchdog is not woken at each render: having seen renders since
    its last check, it checks again a budget later. A render armed then with the same
    budget is still stopped once past it."""
    watchdog = RenderWatchdog(tick_s=0.005)
    for _ in range(200):
        with watchdog.limit(0.1):
            pass
    time.sleep(0.02)  # it has checked: renders were armed, so it lingers, not idle
    with pytest.raises(RenderTimeout), watchdog.limit(0.1):
        burn_cpu(30)
    assert watchdog.fired_count == 1

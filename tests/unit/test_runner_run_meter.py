"""MeteredRun and SliceMarker: a run's slices are charged to it and marked while they
compute; a run past its CPU budget is ended at its next await."""

import asyncio
import time

import pytest

from services.runner import run_meter
from services.runner.run_meter import CpuBudgetExceeded, MeteredRun, SliceMarker


@pytest.fixture
def marker() -> SliceMarker:
    return SliceMarker.create()


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
            end = time.perf_counter() + 0.02
            while time.perf_counter() < end:
                pass
            steps += 1
            await asyncio.sleep(0)

    metered = MeteredRun(burn(), 1, marker, cpu_budget_s=0.1)
    with pytest.raises(CpuBudgetExceeded):
        await asyncio.wait_for(metered, 5)
    assert 0.1 < metered.cpu_used_s < 0.2
    assert 5 <= steps <= 7


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
    marker.enter(9)
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
            end = time.perf_counter() + 0.03
            while time.perf_counter() < end:
                pass
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
    """The worker can be preempted between the two stores of `enter`: the time is
    stored first, so a reader then sees no run rather than a run paired with a stale
    time (which would read as a slice lasting since boot, and get its worker killed)."""
    marker.enter(3)
    marker.leave()
    # The first store of the next `enter`, and nothing more yet.
    run_meter._FIELD.pack_into(marker._map, run_meter._SINCE, time.monotonic_ns())
    assert marker.read() == (0, 0.0)
    run_meter._FIELD.pack_into(marker._map, run_meter._KEY, 4)  # the second store
    key, lasted = marker.read()
    assert key == 4 and 0 <= lasted < 1

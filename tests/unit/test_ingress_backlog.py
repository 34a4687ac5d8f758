"""The ingress's per-workspace queued bounds (services/ingress/backlog.py): what it
counts, when it refuses (429 with Retry-After, the contract's envelope), and how counts
go away again (runners' reports, the age bound, a broker reconnect)."""

import pytest

from harness.factories import webhook_request
from services.ingress.backlog import QUEUED_RETRY_AFTER_S, WorkspaceBacklog
from shared.errors import RateLimited
from shared.schemas.backlog import RunsDrained
from shared.schemas.runs import StartRun

A, B = "workspace-a", "workspace-b"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def backlog(clock: Clock | None = None, **bounds: int) -> WorkspaceBacklog:
    settings = {"max_runs": 3, "max_bytes": 1000, "max_sync": 2, **bounds}
    return WorkspaceBacklog(**settings, max_age_s=60.0, clock=clock or Clock())


def start(workspace: str, size: int = 10) -> StartRun:
    request = webhook_request(workspace_id=workspace, raw_body="x" * size)
    return StartRun(request=request, flow_version=1)


async def schedule(queued: WorkspaceBacklog, run: StartRun) -> None:
    async with queued.scheduling(run, "ingress-7"):
        pass


def refused(queued: WorkspaceBacklog, workspace: str) -> RateLimited:
    with pytest.raises(RateLimited) as caught:
        queued.check(workspace)
    return caught.value


async def test_past_the_run_bound_only_that_workspace_is_refused_with_the_envelope() -> None:
    queued = backlog()
    for _ in range(3):
        await schedule(queued, start(A))
    error = refused(queued, A)
    assert error.status_code == 429
    assert error.headers() == {"Retry-After": str(QUEUED_RETRY_AFTER_S)}
    envelope = error.envelope()
    assert envelope["error"] == "rate_limited"
    assert "FLOWHOOKS_INGRESS_WORKSPACE_QUEUED_RUNS" in envelope["message"]
    assert envelope["data"] == {"queued_runs": 3, "queued_bytes": 30}
    queued.check(B)  # another workspace is not affected
    with pytest.raises(RateLimited):
        await schedule(queued, start(A))  # refused before the publish, and not counted
    assert queued.queued(A) == (3, 30)
    assert (queued.refused_runs, queued.refused_bytes, queued.refused_sync) == (2, 0, 0)


async def test_the_byte_bound_takes_the_run_that_crosses_it_then_refuses() -> None:
    queued = backlog(max_runs=100)
    await schedule(queued, start(A, 600))
    await schedule(queued, start(A, 600))  # 600 < 1000 before it: taken
    error = refused(queued, A)
    assert "FLOWHOOKS_INGRESS_WORKSPACE_QUEUED_BYTES" in error.message
    assert (queued.refused_runs, queued.refused_bytes) == (0, 1)
    # A body larger than the bound alone is still taken when nothing is queued.
    await schedule(queued, start(B, 5000))
    assert queued.queued(B) == (1, 5000)


async def test_a_run_is_named_with_this_ingress_and_uncounted_if_its_publish_failed() -> None:
    queued = backlog()
    run = start(A)
    with pytest.raises(ConnectionError):
        async with queued.scheduling(run, "ingress-7"):
            raise ConnectionError("broker away")
    assert run.origin == "ingress-7"
    assert queued.queued(A) == (0, 0)


async def test_reports_of_finished_runs_give_room_back_and_unknown_ids_are_ignored() -> None:
    queued = backlog()
    runs = [start(A) for _ in range(3)]
    for run in runs:
        await schedule(queued, run)
    await queued.drained(RunsDrained(request_ids=[runs[0].request.request_id, "unknown"]))
    assert queued.queued(A) == (2, 20)
    queued.check(A)
    # A run reported twice (a redelivery ran it again) is subtracted once.
    await queued.drained(RunsDrained(request_ids=[runs[0].request.request_id]))
    assert queued.queued(A) == (2, 20)


async def test_counted_runs_age_out_so_a_lost_report_cannot_block_a_workspace() -> None:
    clock = Clock()
    queued = backlog(clock)
    for _ in range(3):
        await schedule(queued, start(A))
    clock.now += 30
    await schedule(queued, start(B))
    refused(queued, A)
    clock.now += 31  # A's runs are older than the 60 s bound, B's is not
    assert queued.queued(A) == (0, 0)
    assert queued.queued(B) == (1, 10)
    queued.check(A)


async def test_a_reconnect_forgets_every_count() -> None:
    queued = backlog()
    for _ in range(3):
        await schedule(queued, start(A))
    queued.clear()
    assert queued.queued(A) == (0, 0)
    queued.check(A)


async def test_bounds_of_zero_are_off() -> None:
    queued = backlog(max_runs=0, max_bytes=0, max_sync=0)
    for _ in range(10):
        await schedule(queued, start(A, 10_000))
    queued.check(A)
    with queued.sync_request(A), queued.sync_request(A), queued.sync_request(A):
        pass


def test_concurrent_sync_requests_of_a_workspace_are_bounded() -> None:
    queued = backlog()
    with queued.sync_request(A), queued.sync_request(A):
        with pytest.raises(RateLimited, match="FLOWHOOKS_INGRESS_WORKSPACE_SYNC_REQUESTS"):
            with queued.sync_request(A):
                pass
        with queued.sync_request(B):
            pass
    assert (queued.refused_runs, queued.refused_bytes, queued.refused_sync) == (0, 0, 1)
    # Each one that ended (answered or failed) gave its place back.
    with pytest.raises(ValueError), queued.sync_request(A):
        raise ValueError("the run failed")
    with queued.sync_request(A), queued.sync_request(A):
        pass

"""The runner's worker pool with real worker processes: hostile runs are stopped and
blamed, the runs beside them are not harmed."""

import asyncio
import os
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from services.runner.pool import WorkerPool
from services.runner.worker_protocol import FlowSnapshot, WorkerConfig
from shared.schemas.runs import RunResult, WebhookRequest
from tests.factories import webhook_request

pytestmark = pytest.mark.integration

CONFIG = WorkerConfig(
    render_timeout_s=0.5,
    max_output_chars=1_000_000,
    template_cache_size=100,
    http_allow_networks=[],
    http_max_response_bytes=1 << 20,
    loop_max_items=10_000,
    max_loop_iterations=100_000,
    max_value_bytes=1_000_000,
    max_trace_steps=100,
    max_trace_bytes=100_000,
    max_response_bytes=1_000_000,
    memory_mb=512,
    run_cpu_s=5.0,
)


def flow(
    steps: list[dict[str, Any]],
    response_body: str | None = None,
    workspace: str = "evil",
) -> FlowSnapshot:
    webhook: dict[str, Any] = {"ref_id": "web1"}
    if response_body is not None:
        webhook["response"] = {"status_code": 201, "body": response_body}
    return FlowSnapshot(
        id=str(uuid.uuid4()),
        workspace_id=workspace,
        version=1,
        definition={"name": "f", "status": "live", "webhook": webhook, "steps": steps},
    )


ECHO = flow(
    [{"ref_id": "res1", "type": "template", "template": "{{ web1.n }}"}],
    '{"n": {{ res1.value }}}',
    workspace="acme",
)


def busy(iterations: int) -> FlowSnapshot:
    """Many short steps: it yields between them, so it can be stopped from inside."""
    step = {"ref_id": "t", "type": "template", "template": "{{ loop.index * 2 }}"}
    outer = {"ref_id": "o", "type": "loop", "over": "{{ range(100) | list }}", "steps": [step]}
    return flow(
        [
            {
                "ref_id": "l",
                "type": "loop",
                "over": f"{{{{ range({iterations // 100}) | list }}}}",
                "steps": [outer],
            }
        ]
    )


BUSY = busy(50_000)  # seconds of CPU
LIGHT = busy(2_000)
BIG_INT = flow([{"ref_id": "b", "type": "template", "template": "{{ ((10**5500)**9999) > 1 }}"}])
MEMORY = flow(
    [
        {
            "ref_id": "m",
            "type": "template",
            "template": "{{ range(100000) | map('center', 9999) | list | length }}",
        }
    ]
)


def request(body: Any) -> WebhookRequest:
    return webhook_request(body)


async def start_pool(**overrides: Any) -> WorkerPool:
    config = CONFIG.model_copy(update=overrides)
    pool = WorkerPool(config, workers=2, slots_per_worker=16, workspace_share=0.5, slice_s=1.0)
    await pool.start()
    return pool


@pytest.fixture
async def pool() -> AsyncIterator[WorkerPool]:
    started = await start_pool()
    yield started
    await started.close()


async def echoes(pool: WorkerPool, count: int) -> list[RunResult]:
    return await asyncio.gather(*(pool.run(request({"n": n}), ECHO, 10) for n in range(count)))


def assert_echoed(results: list[RunResult]) -> None:
    assert [(r.outcome, r.status_code, r.body) for r in results] == [
        ("succeeded", 201, f'{{"n": {n}}}') for n in range(len(results))
    ]


async def test_a_run_that_never_pauses_is_killed_and_blamed_alone(pool: WorkerPool) -> None:
    pids = set(pool.worker_pids)
    bomb = asyncio.create_task(pool.run(request({}), BIG_INT, 30))
    await asyncio.sleep(0.1)  # the bomb is computing on one worker
    victims = await echoes(pool, 30)
    result = await bomb
    assert_echoed(victims)
    assert (result.outcome, result.status_code) == ("failed", 500)
    assert result.error == (
        "the run computed for more than 1 s without a pause and was stopped"
        " (FLOWHOOKS_RUNNER_RUN_SLICE_S)"
    )
    assert pool.workers_killed == 1
    # A new worker took the killed one's place, and serves.
    for _ in range(100):
        if len(pool.worker_pids) == 2:
            break
        await asyncio.sleep(0.05)
    assert len(set(pool.worker_pids) - pids) == 1
    assert_echoed(await echoes(pool, 40))


async def test_a_run_over_the_memory_bound_fails_alone() -> None:
    # A render budget long enough that the memory bound, not the clock, stops it.
    pool = await start_pool(render_timeout_s=20, memory_mb=256)
    try:
        results = await asyncio.gather(pool.run(request({}), MEMORY, 30), echoes(pool, 20))
        hog, victims = results
        assert_echoed(victims)
        assert hog.outcome == "failed"
        assert hog.error == (
            "step 'm' failed: the run went over its worker's memory bound"
            " (FLOWHOOKS_RUNNER_WORKER_MEMORY_MB)"
        )
        assert_echoed(await echoes(pool, 10))
    finally:
        await pool.close()


async def test_runs_on_a_worker_that_dies_run_again_elsewhere(pool: WorkerPool) -> None:
    # Long enough (about a second for all) that the kill lands while they run.
    runs = [asyncio.create_task(pool.run(request({}), busy(8_000), 30)) for _ in range(8)]
    await asyncio.sleep(0.1)
    os.kill(pool.worker_pids[0], signal.SIGKILL)
    results = await asyncio.gather(*runs)
    # The run it was computing (if any: the kernel's OOM killer looks the same) is
    # blamed; every other run finishes on another worker.
    failed = [r for r in results if r.outcome != "succeeded"]
    assert len(failed) <= 1
    for result in failed:
        assert result.error is not None
        assert result.error.startswith("the run's worker process died while running it")
    assert pool.workers_lost == 1 and pool.runs_retried >= 1


async def test_the_cpu_budget_ends_the_run_inside_the_worker() -> None:
    pool = await start_pool(run_cpu_s=0.2)
    try:
        over_budget = await pool.run(request({}), BUSY, 30)
        assert over_budget.outcome == "failed"
        assert over_budget.error == (
            "the run used more than 0.2 s of CPU time (FLOWHOOKS_RUNNER_RUN_CPU_S)"
        )
        # The trace up to there is kept, bounded.
        assert len(over_budget.steps) == 101 and over_budget.steps[-1].type == "truncated"
        assert pool.workers_killed == 0  # stopped from inside
        assert_echoed(await echoes(pool, 10))
    finally:
        await pool.close()


async def test_the_timeout_ends_the_run_inside_the_worker(pool: WorkerPool) -> None:
    late = await pool.run(request({}), BUSY, 0.1)
    assert late.outcome == "timeout" and late.status_code == 504
    assert late.error is not None and late.error.startswith("the flow did not finish within 0.1 s")
    assert pool.workers_killed == 0  # stopped from inside
    assert_echoed(await echoes(pool, 10))


async def test_fair_share_leaves_room_for_other_workspaces(pool: WorkerPool) -> None:
    slow = [asyncio.create_task(pool.run(request({}), LIGHT, 30)) for _ in range(40)]
    await asyncio.sleep(0.05)
    # 16 of the 32 slots at most are the busy workspace's: the echoes start at once.
    assert pool.fair_share.running.get("evil") == 16
    assert_echoed(await echoes(pool, 16))
    assert [r.outcome for r in await asyncio.gather(*slow)] == ["succeeded"] * 40


async def test_workers_hold_none_of_the_runners_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """User code runs in the workers: the runner's token key and database URL are not
    in their environment."""
    monkeypatch.setenv("FLOWHOOKS_RUNNER_TOKEN_KEYS", "secret-key,older-key")
    monkeypatch.setenv("FLOWHOOKS_DATABASE_URL", "postgresql://user:pw@db/flowhooks")
    monkeypatch.setenv("PGPASSWORD", "pg-secret")
    pool = await start_pool()
    try:
        for pid in pool.worker_pids:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            names = {entry.split(b"=", 1)[0] for entry in environ.split(b"\0") if entry}
            assert {name for name in names if name.startswith(b"FLOWHOOKS_")} == {
                b"FLOWHOOKS_LOG_LEVEL"
            }
            assert b"secret-key" not in environ and b"user:pw" not in environ
            assert b"older-key" not in environ and b"pg-secret" not in environ
    finally:
        await pool.close()

"""The runner's worker pool with real worker processes: hostile runs are stopped and
blamed, a worker hosts one workspace at a time so a kill stops only runs of the
workspace that caused it (those run again, marked), and other workspaces keep a worker
however many runs hang elsewhere. (The placement rules alone, with fake processes:
tests/unit/test_runner_pool_placement.py.)"""

import asyncio
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp import web

from harness.factories import webhook_request
from harness.receiver import serving
from services.runner.bounds import RunBounds
from services.runner.pool import WorkerPool
from services.runner.worker_protocol import FlowSnapshot
from shared.schemas.runs import RunResult, WebhookRequest

pytestmark = pytest.mark.integration
T = TypeVar("T")
SLICE_S = 0.3

CONFIG = RunBounds(
    render_timeout_s=0.5,
    max_output_chars=1_000_000,
    template_cache_size=100,
    http_allow_networks=(),
    http_max_response_bytes=1 << 20,
    loop_max_items=10_000,
    max_loop_iterations=100_000,
    max_value_bytes=1_000_000,
    max_trace_steps=100,
    max_trace_bytes=100_000,
    max_response_bytes=1_000_000,
    worker_memory_mb=512,
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


# An allocation past a 128 MiB address space that orjson cannot survive: the worker
# dies (SIGSEGV) instead of raising MemoryError, as a kernel OOM kill would look.
MEMORY_KILL = flow([{"ref_id": "m", "type": "template", "template": "[{{ '{},' * 330000 }}{}]"}])


def request(body: Any) -> WebhookRequest:
    return webhook_request(body)


async def start_pool(**overrides: Any) -> WorkerPool:
    config = CONFIG.model_copy(update=overrides)
    pool = WorkerPool(
        config,
        workers=2,
        slots_per_worker=16,
        workspace_share=0.5,
        slice_s=SLICE_S,
        max_workers=6,
        spare_workers=2,
    )
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
    assert [(r.outcome, r.status_code, r.body, r.repeated) for r in results] == [
        ("succeeded", 201, f'{{"n": {n}}}', None) for n in range(len(results))
    ]


async def watching(pool: WorkerPool, work: Awaitable[T]) -> tuple[T, dict[str, set[int]]]:
    """`work`'s result, and every worker pid each workspace held while it ran."""
    seen: dict[str, set[int]] = {}
    task = asyncio.ensure_future(work)
    while not task.done():
        for workspace in ("evil", "acme"):
            seen.setdefault(workspace, set()).update(pool.workers_of(workspace))
        await asyncio.sleep(0.005)
    return await task, seen


async def replaced(pool: WorkerPool, gone: int) -> None:
    """The killed worker's place was taken by a new process."""
    async with asyncio.timeout(30):
        while gone in pool.worker_pids or pool.fair_share.kills:
            await asyncio.sleep(0.02)


async def test_a_run_that_never_pauses_is_killed_and_blamed_alone(pool: WorkerPool) -> None:
    bomb = asyncio.create_task(pool.run(request({}), BIG_INT, 30))
    await asyncio.sleep(0.1)  # the bomb is computing on a worker of its own workspace
    (victims, result), seen = await watching(pool, asyncio.gather(echoes(pool, 30), bomb))
    assert_echoed(victims)
    assert (result.outcome, result.status_code, result.repeated) == ("failed", 500, None)
    assert result.error == (
        f"the run computed for more than {SLICE_S:g} s without a pause and was stopped"
        " (FLOWHOOKS_RUNNER_RUN_SLICE_S)"
    )
    assert pool.workers_killed == 1 and pool.runs_retried == 0
    (killed,) = seen["evil"]
    assert killed not in seen["acme"]  # never shared with the other workspace
    await replaced(pool, killed)
    assert_echoed(await echoes(pool, 40))


async def test_a_kill_stops_only_runs_of_the_workspace_that_caused_it(pool: WorkerPool) -> None:
    # Runs of the bomb's workspace beside it on its worker (it holds the worker's loop,
    # so they are all still running when the worker is killed).
    siblings = [asyncio.create_task(pool.run(request({}), LIGHT, 30)) for _ in range(4)]
    await asyncio.sleep(0.05)
    bomb = asyncio.create_task(pool.run(request({}), BIG_INT, 30))
    (victims, hostile), seen = await watching(
        pool, asyncio.gather(echoes(pool, 30), asyncio.gather(bomb, *siblings))
    )
    assert_echoed(victims)
    assert seen["evil"].isdisjoint(seen["acme"])
    bombed, *others = hostile
    assert bombed.outcome == "failed" and "FLOWHOOKS_RUNNER_RUN_SLICE_S" in str(bombed.error)
    expected = (
        "its worker process stopped (another run on it was stopped: the run computed for"
        f" more than {SLICE_S:g} s without a pause and was stopped"
        " (FLOWHOOKS_RUNNER_RUN_SLICE_S)) while it ran; run again (attempt 2 of 3)"
    )
    assert [(r.outcome, r.repeated) for r in others] == [("succeeded", expected)] * 4
    assert pool.workers_killed == 1 and pool.runs_retried == 4


async def test_a_worker_that_dies_of_its_memory_bound_stops_only_its_workspace() -> None:
    pool = await start_pool(render_timeout_s=20, worker_memory_mb=128)
    try:
        siblings = [asyncio.create_task(pool.run(request({}), LIGHT, 30)) for _ in range(3)]
        await asyncio.sleep(0.05)
        hog = asyncio.create_task(pool.run(request({}), MEMORY_KILL, 30))
        (victims, hostile), seen = await watching(
            pool, asyncio.gather(echoes(pool, 30), asyncio.gather(hog, *siblings))
        )
        assert_echoed(victims)
        assert seen["evil"].isdisjoint(seen["acme"])
        died, *others = hostile
        assert died.outcome == "failed" and died.repeated is None
        assert died.error == (
            "the run's worker process died while running it (killed by signal 11); a run may"
            " use at most 128 MiB (FLOWHOOKS_RUNNER_WORKER_MEMORY_MB)"
        )
        expected = (
            "its worker process stopped (killed by signal 11) while it ran; run again"
            " (attempt 2 of 3)"
        )
        assert [(r.outcome, r.repeated) for r in others] == [("succeeded", expected)] * 3
        assert pool.workers_lost == 1
    finally:
        await pool.close()


async def test_a_run_over_the_memory_bound_fails_alone() -> None:
    # A render budget long enough that the memory bound, not the clock, stops it.
    pool = await start_pool(render_timeout_s=20, worker_memory_mb=256)
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


async def test_runs_on_a_worker_that_dies_run_again_marked(pool: WorkerPool) -> None:
    runs = [asyncio.create_task(pool.run(request({}), LIGHT, 30)) for _ in range(8)]
    await asyncio.sleep(0.1)
    (pid,) = pool.workers_of("evil")  # all eight on one worker (16 slots)
    os.kill(pid, signal.SIGKILL)
    results = await asyncio.gather(*runs)
    # The run it was computing (if any: the kernel's OOM killer looks the same) is
    # blamed; every other run finishes on another worker, marked as run again.
    failed = [r for r in results if r.outcome != "succeeded"]
    assert len(failed) <= 1
    for result in failed:
        assert result.error is not None
        assert result.error.startswith("the run's worker process died while running it")
    again = (
        "its worker process stopped (killed by signal 9) while it ran; run again (attempt 2 of 3)"
    )
    assert {r.repeated for r in results if r.outcome == "succeeded"} == {again}
    assert pool.workers_lost == 1 and pool.runs_retried == 8 - len(failed)


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


@pytest.fixture
async def slow_url() -> AsyncIterator[str]:
    """An endpoint that answers only once the test is over: a run waiting on it holds
    its slot meanwhile."""
    over = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await over.wait()
        return web.json_response({"slow": True})

    app = web.Application()
    app.router.add_get("/slow", slow)
    async with serving(app, "127.0.0.1") as base:
        yield f"{base}/slow"
        over.set()


async def test_two_workspaces_with_hanging_runs_leave_a_worker_for_a_third(
    slow_url: str,
) -> None:
    config = CONFIG.model_copy(update={"http_allow_networks": ("127.0.0.1/32",)})
    # Six processes, four slots each; a workspace holds at most three, the last two
    # free ones (the spares) go only to a workspace holding none, and the two hostile
    # ones are served fewest-held first: two each, their other runs wait.
    pool = WorkerPool(
        config,
        workers=2,
        slots_per_worker=4,
        workspace_share=0.5,
        slice_s=SLICE_S,
        max_workers=6,
        spare_workers=2,
    )
    await pool.start()
    try:

        def hanging(workspace: str) -> FlowSnapshot:
            step = {"ref_id": "wait", "type": "http", "url": slow_url, "retries": 0}
            return flow([step], workspace=workspace)

        hostile = [
            asyncio.create_task(pool.run(request({}), hanging(workspace), 30))
            for workspace in ("evil", "evil2")
            for _ in range(16)
        ]

        def settled() -> bool:
            held = {w: len(pool.workers_of(w)) for w in ("evil", "evil2")}
            return held == {"evil": 2, "evil2": 2} and pool.idle_workers == 2

        async with asyncio.timeout(20):  # processes start, slowly on a busy machine
            while not settled():
                await asyncio.sleep(0.02)
        assert pool.must_wait("evil") and pool.must_wait("evil2") and not pool.must_wait("acme")
        started = time.monotonic()
        victims = await echoes(pool, 20)
        # At once, on a spare worker; not after a hanging run.
        assert time.monotonic() - started < 2.0
        assert_echoed(victims)
        for run in hostile:
            run.cancel()
    finally:
        await pool.close()


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

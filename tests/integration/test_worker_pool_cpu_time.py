"""The supervisor's slice bound counts CPU time (issue 20): a slice that lasts past the
bound in wall time because its worker was off the CPU (here stopped outright, the
extreme of a machine busy with others' work) is not killed; its run succeeds."""

import asyncio
import os
import signal
import time

import orjson
import pytest

from services.runner.pool import WorkerPool
from tests.cpu_templates import burning
from tests.integration.test_worker_pool import CONFIG, flow, request

pytestmark = pytest.mark.integration


def computing_worker(pool: WorkerPool) -> int | None:
    """The pid of the worker whose run is well into a slice (by its marker, as the
    supervisor sees it): 30 ms of CPU, which only the heavy render takes."""
    for worker in pool._workers:
        key, _ = worker.marker.read()
        if key and worker.marker.cpu_s(key) >= 0.03:
            return worker.process.pid
    return None


async def test_a_slice_stretched_by_time_off_the_cpu_is_not_killed() -> None:
    config = CONFIG.model_copy(update={"render_timeout_s": 5.0})
    pool = WorkerPool(config, workers=1, slots_per_worker=4, workspace_share=1, slice_s=0.5)
    await pool.start()
    try:
        # One render, one slice: 0.3 s of CPU, within the 0.5 s bound.
        heavy = flow([{"ref_id": "heavy", "type": "template", "template": burning(0.3, "ok")}])
        run = asyncio.create_task(pool.run(request({}), heavy, 30))
        while (pid := computing_worker(pool)) is None:
            assert not run.done(), run.result()
            await asyncio.sleep(0.002)
        os.kill(pid, signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            await asyncio.sleep(1.0)  # the slice now lasts over 1 s in wall time
        finally:
            os.kill(pid, signal.SIGCONT)
        result = await run
        assert time.monotonic() - stopped >= 1.0
        assert (result.outcome, result.status_code, result.error) == ("succeeded", 200, None)
        assert orjson.loads(result.body)["data"] == {"value": "ok"}
        assert (pool.workers_killed, pool.workers_lost) == (0, 0)
        assert pid in pool.worker_pids
    finally:
        await pool.close()

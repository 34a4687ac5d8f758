"""`python -m bench.runner_pool [--seconds S]`: the runner's worker hop alone, without
the broker, the ingress or the database: a real `WorkerPool` with real worker
processes runs the bench's sync flow (bench/measure.py `SYNC_FLOW`) for one workspace,
`--in-flight` runs at once, handed over in bursts of `--burst` (as a broker message of
`StartRuns` hands them), for `--seconds` after a warm-up. Prints the CPU per run of the
supervisor's process (this one: the pool's side, placement, frames, results) and of its
worker processes, and the mean runs per frame each way. Steadier than the whole system's
bench on a shared machine, for changes to pool.py, worker.py and the worker protocol."""

import argparse
import asyncio
import os
import resource
import time
from typing import Any

import uvloop

from bench.measure import SYNC_FLOW
from harness.factories import webhook_request
from services.runner.bounds import RunBounds
from services.runner.flow_cache import without_auth
from services.runner.pool import WorkerPool
from services.runner.worker_protocol import FlowSnapshot


def _children_cpu_s(pids: list[int]) -> float:
    """CPU seconds of the live workers (utime + stime from /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / ticks


def _frames(pool: WorkerPool) -> tuple[int, int]:
    """Frames sent to and received from workers (0: a pool that does not count them)."""
    return getattr(pool, "frames_sent", 0), getattr(pool, "frames_received", 0)


def _own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _load(
    pool: WorkerPool, flow: FlowSnapshot, in_flight: int, burst: int, until: float
) -> int:
    """Closed loop: a burst of runs goes in whenever that many have finished."""
    done = 0
    finished = asyncio.Queue[None]()

    async def one() -> None:
        request = webhook_request({"kind": "myResult"}, workspace_id=flow.workspace_id)
        request.flow_id = flow.id
        await pool.run(request, flow, 10.0)
        finished.put_nowait(None)

    tasks: set[asyncio.Task[None]] = set()

    def start(count: int) -> None:
        for _ in range(count):
            task = asyncio.create_task(one())
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    start(in_flight)
    waiting = 0
    while time.monotonic() < until:
        await finished.get()
        done += 1
        waiting += 1
        if waiting >= burst:
            start(waiting)
            waiting = 0
    await asyncio.gather(*tasks)
    return done


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    pool = WorkerPool(
        RunBounds(),
        workers=2,
        slots_per_worker=args.slots,
        workspace_share=0.5,
        slice_s=5.0,
        spare_workers=2,
        log_level="warning",
    )
    await pool.start()
    flow = FlowSnapshot(
        id="00000000-0000-0000-0000-000000000001",
        workspace_id="00000000-0000-0000-0000-0000000000aa",
        version=1,
        definition={"name": "bench", "status": "live", **without_auth(SYNC_FLOW)},
    )
    try:
        await _load(pool, flow, args.in_flight, args.burst, time.monotonic() + args.warmup)
        pids = pool.worker_pids
        frames = _frames(pool)
        own, children = _own_cpu_s(), _children_cpu_s(pids)
        started = time.monotonic()
        runs = await _load(pool, flow, args.in_flight, args.burst, started + args.seconds)
        elapsed = time.monotonic() - started
        own, children = _own_cpu_s() - own, _children_cpu_s(pids) - children
        sent = _frames(pool)[0] - frames[0]
        received = _frames(pool)[1] - frames[1]
    finally:
        await pool.close()
    return {
        "runs_per_s": round(runs / elapsed),
        "supervisor_us_per_run": round(own / runs * 1e6, 1),
        "workers_us_per_run": round(children / runs * 1e6, 1),
        "runs_per_frame_to_workers": round(runs / max(1, sent), 1),
        "runs_per_frame_from_workers": round(runs / max(1, received), 1),
        "workers": len(pids),
        "workers_started_meanwhile": len(set(pool.worker_pids) - set(pids)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--in-flight", type=int, default=50)
    parser.add_argument("--burst", type=int, default=14)
    parser.add_argument("--slots", type=int, default=16)
    args = parser.parse_args()
    print(uvloop.run(_main(args)))


if __name__ == "__main__":
    main()

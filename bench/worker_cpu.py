"""`python -m bench.worker_cpu [--runs N] [--profile]`: a runner worker's CPU per run,
in one process, without the supervisor, the socket or the other services: a real
`Worker` (services/runner/worker.py) serves frames of the bench's sync flow fed to it
in memory, `--in-flight` runs at once in bursts of `--burst` (as the pool sends them),
and its results frames are read back as the supervisor reads them. Prints the process
CPU time (`time.process_time`, no wall-time sampling) per run, the least and the
median of `--rounds` rounds; `--profile` prints
cProfile's top functions too. For changes to the worker's per-run path."""

import argparse
import asyncio
import cProfile
import io
import pstats
import statistics
import time
from typing import Any

import orjson
import uvloop

from bench.measure import SYNC_FLOW
from harness.factories import webhook_request
from services.runner.bounds import RunBounds
from services.runner.flow_cache import without_auth
from services.runner.run_meter import SliceMarker
from services.runner.worker import Worker
from services.runner.worker_protocol import (
    RESULTS,
    FlowSnapshot,
    frame_of,
    read_results,
    work_item,
)
from shared import heap
from shared.schemas.vocabulary import Outcome


class _Writer:
    """The worker's end of the socket: hands each frame it writes to the harness."""

    def __init__(self, on_frame: Any) -> None:
        self.on_frame = on_frame
        self._buffer = b""

    def write(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= 4:
            length = int.from_bytes(self._buffer[:4], "big")
            if len(self._buffer) < 4 + length:
                return
            payload, self._buffer = self._buffer[4 : 4 + length], self._buffer[4 + length :]
            self.on_frame(payload)

    async def drain(self) -> None:
        await asyncio.sleep(0)


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    bounds = RunBounds()
    marker = SliceMarker.create()
    worker = Worker(bounds, marker)
    heap.settle()  # as the worker's start-up ends (services/runner/worker.py `_main`)
    snapshot = FlowSnapshot(
        id="00000000-0000-0000-0000-000000000001",
        workspace_id="00000000-0000-0000-0000-0000000000aa",
        version=1,
        definition={"name": "bench", "status": "live", **without_auth(SYNC_FLOW)},
    )
    flow_encoded = snapshot.model_dump_json().encode()
    keys = iter(range(1, 10**9))
    reader = asyncio.StreamReader()
    finished = asyncio.Queue[int]()
    failed: list[bytes] = []

    def on_frame(payload: bytes) -> None:
        if not payload.startswith(RESULTS):
            return  # the ready frame
        for _, output in read_results(payload):
            if output.outcome != Outcome.SUCCEEDED:
                failed.append(output.encoded)
            finished.put_nowait(1)

    # Encoded before the clock starts: the supervisor's work, not the worker's.
    requests = []
    for _ in range(args.warmup_runs + args.runs * args.rounds):
        request = webhook_request({"kind": "myResult"}, workspace_id=snapshot.workspace_id)
        request.flow_id = snapshot.id
        requests.append(request.model_dump_json().encode())
    encoded_requests = iter(requests)

    def feed(count: int) -> None:
        items = [
            work_item(next(keys), next(encoded_requests), flow_encoded, 10.0, None)
            for _ in range(count)
        ]
        reader.feed_data(frame_of("runs", items))

    serving = asyncio.create_task(worker.serve(reader, _Writer(on_frame)))  # type: ignore[arg-type]

    async def load(runs: int) -> None:
        """Closed loop: a burst goes in whenever that many have finished, `runs` in all."""
        started = min(runs, args.in_flight)
        feed(started)
        done = waiting = 0
        while done < runs:
            done += await finished.get()
            waiting += 1
            if waiting >= args.burst and started < runs:
                count = min(waiting, runs - started)
                feed(count)
                started += count
                waiting = 0

    await load(args.warmup_runs)
    profiler = cProfile.Profile() if args.profile else None
    if profiler is not None:
        profiler.enable()
    # Rounds in turn: on a shared machine, others' load slows some of them (caches,
    # cores' clocks); the least of the rounds is the steadier figure.
    per_round = []
    for _ in range(args.rounds):
        started = time.process_time()
        await load(args.runs)
        per_round.append((time.process_time() - started) / args.runs * 1e6)
    if profiler is not None:
        profiler.disable()
    reader.feed_eof()
    await serving
    if profiler is not None:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats(args.sort).print_stats(args.top)
        print(out.getvalue())
    if failed:
        print(orjson.loads(failed[0]))
    return {
        "runs": args.runs * args.rounds,
        "us_per_run_min": round(min(per_round), 1),
        "us_per_run_median": round(statistics.median(per_round), 1),
        "failed": len(failed),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5000, help="runs a round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmup-runs", type=int, default=3000)
    parser.add_argument("--in-flight", type=int, default=50)
    parser.add_argument("--burst", type=int, default=14)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--sort", default="tottime")
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()
    print(uvloop.run(_main(args)))


if __name__ == "__main__":
    main()

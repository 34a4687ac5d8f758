"""Where the CPU goes on the webhook path: `python -m bench.profile [--mode async]`.

Starts the system, loads a sync (or async) flow with the load generator, and after a
warm-up (the runner starts the workers a load needs when it arrives: their imports are
not the steady state) samples the ingress, the runner (its supervisor and its workers
apart) and the debugger with py-spy (`pip install py-spy`) for `--seconds`. Prints, per
process, the functions with the most samples on top of the stack (self time), the
packages that time belongs to, and flowhooks' functions by inclusive samples.

py-spy samples wall time: on a loaded machine a thread preempted in a system call
(socket writes, clock reads) is counted there although it is not computing. Check a
hot spot it shows against CPU per request (`bench.compare`)."""

import argparse
import asyncio
import collections
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.measure import SMALL_JSON, api_setup
from harness.infra import fresh_database, fresh_vhost
from harness.system import REPO, System


def package_of(frame: str) -> str:
    path = "/" + frame.split("(", 1)[-1]
    if path.startswith("/asyncio/runners.py"):
        # The loop is inside uvloop's C code: I/O, native callbacks, or idle.
        return "event loop (uvloop native or idle)"
    if "time.sleep" in frame or "_watch (services/runner/render_budget.py" in frame:
        return "render watchdog thread (sleeping)"
    for marker in (
        "aiormq",
        "aio_pika",
        "pamqp",
        "aiohttp",
        "asyncpg",
        "pydantic",
        "jinja2",
        "structlog",
        "orjson",
        "uvloop",
        "yarl",
        "multidict",
        "services",
        "shared",
    ):
        if f"/{marker}/" in path:
            return "flowhooks" if marker in ("services", "shared") else marker
    return "stdlib (asyncio streams = socket writes, ...)"


def top(raw: Path, count: int = 12) -> dict[str, object]:
    """Per process (`worker`: a stack through services/runner/worker.py, the runner's
    workers; `main`: the service's own process): share of samples by package of the
    leaf, the leaves with most samples, and the flowhooks functions with most samples
    anywhere on the stack (inclusive: what a function and everything it calls costs)."""
    processes: dict[str, dict[str, collections.Counter[str]]] = {}
    totals: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        if not stack or not samples.isdigit():
            continue
        n = int(samples)
        frames = stack.split(";")
        process = "worker" if any("(services/runner/worker.py" in f for f in frames) else "main"
        counters = processes.setdefault(
            process,
            {key: collections.Counter() for key in ("leaves", "packages", "inclusive")},
        )
        leaf = frames[-1]
        counters["leaves"][leaf] += n
        counters["packages"][package_of(leaf)] += n
        for frame in set(frames):
            if package_of(frame) == "flowhooks":
                counters["inclusive"][frame] += n
        totals[process] += n
    return {
        process: {
            "samples": totals[process],
            "packages": {
                k: round(100 * v / totals[process], 1)
                for k, v in counters["packages"].most_common()
            },
            "top_functions": [
                f"{round(100 * v / totals[process], 1)}% {k}"
                for k, v in counters["leaves"].most_common(count)
            ],
            "flowhooks_inclusive": [
                f"{round(100 * v / totals[process], 1)}% {k}"
                for k, v in counters["inclusive"].most_common(count)
            ],
        }
        for process, counters in processes.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--mode", choices=("sync", "async"), default="sync")
    parser.add_argument(
        "--warmup",
        type=float,
        default=8.0,
        help="seconds of load before sampling (the runner starts its workers meanwhile)",
    )
    args = parser.parse_args()
    with fresh_vhost() as amqp_url, fresh_database() as database_url:
        system = System(
            amqp_url,
            database_url,
            extra_env={
                "FLOWHOOKS_LOG_LEVEL": "warning",
                "FLOWHOOKS_INGRESS_FLOW_RATE_LIMIT_PER_S": "0",
            },
        )
        try:
            system.start_all()
            token = system.create_token("bench", "automation")
            flows = asyncio.run(api_setup(system, token))
            spec = {
                "url": f"{system.url('ingress')}/v1/flow-webhook/{flows[args.mode]}",
                "headers": {"Authorization": f"Bearer {flows[args.mode + '_token']}"},
                "body": SMALL_JSON,
                "seconds": args.warmup + args.seconds + 4,
                "concurrency": 50,
            }
            load = subprocess.Popen(
                [sys.executable, "-m", "bench.loadgen", json.dumps(spec)],
                cwd=REPO,
                stdout=subprocess.DEVNULL,
            )
            time.sleep(args.warmup)
            out = Path(tempfile.mkdtemp(prefix="flowhooks-profile-"))
            spies = {
                name: subprocess.Popen(
                    [
                        str(Path(sys.executable).parent / "py-spy"),
                        "record",
                        "--subprocesses",  # the runner's workers
                        "--format",
                        "raw",
                        "--nonblocking",
                        "-r",
                        "200",
                        "-d",
                        str(args.seconds),
                        "-p",
                        str(system.processes[name][0].process.pid),
                        "-o",
                        str(out / f"{name}.txt"),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                for name in ("ingress", "runner", "debugger")
            }
            for spy in spies.values():
                spy.wait(timeout=args.seconds + 60)
            load.wait(timeout=120)
        finally:
            system.stop_all()
    print(json.dumps({name: top(out / f"{name}.txt") for name in spies}, indent=1))


if __name__ == "__main__":
    main()

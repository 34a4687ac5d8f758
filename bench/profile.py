"""Where the CPU goes on the sync webhook path: `python -m bench.profile`.

Starts the system, loads a sync flow with the load generator, and samples the ingress,
runner and debugger with py-spy (`pip install py-spy`) for `--seconds`. Prints, per
service, the functions with the most samples on top of the stack (self time) and the
packages that time belongs to."""

import argparse
import asyncio
import collections
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.__main__ import SMALL_JSON, api_setup
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
    leaves: collections.Counter[str] = collections.Counter()
    packages: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        if not stack or not samples.isdigit():
            continue
        n = int(samples)
        leaf = stack.split(";")[-1]
        leaves[leaf] += n
        packages[package_of(leaf)] += n
        total += n
    return {
        "samples": total,
        "packages": {k: round(100 * v / total, 1) for k, v in packages.most_common()},
        "top_functions": [
            f"{round(100 * v / total, 1)}% {k}" for k, v in leaves.most_common(count)
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    with fresh_vhost() as amqp_url, fresh_database() as database_url:
        system = System(amqp_url, database_url, extra_env={"FLOWHOOKS_LOG_LEVEL": "warning"})
        try:
            system.start_all()
            token = system.create_token("bench", "automation")
            flows = asyncio.run(api_setup(system, token))
            spec = {
                "url": f"{system.url('ingress')}/v1/flow-webhook/{flows['sync']}",
                "headers": {"Authorization": f"Bearer {flows['sync_token']}"},
                "body": SMALL_JSON,
                "seconds": args.seconds + 4,
                "concurrency": 50,
            }
            load = subprocess.Popen(
                [sys.executable, "-m", "bench.loadgen", json.dumps(spec)],
                cwd=REPO,
                stdout=subprocess.DEVNULL,
            )
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

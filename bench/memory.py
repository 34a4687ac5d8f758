"""`python -m bench.memory`: each service's peak memory under the largest allowed body,
to size the Kubernetes memory limits (deploy/README.md, "Memory").

Starts the four services as subprocesses (as `python -m bench` does; the runner with
2 workers, as deployed), then for each body shape sends maximum-size JSON webhooks
(just under `FLOWHOOKS_INGRESS_MAX_BODY_BYTES`, 10 MiB) to a sync flow that reads the
whole input, and waits until the debugger has stored each request. Before each
scenario the peak counters are reset (`echo 5 > /proc/PID/clear_refs`); after it each
process's VmHWM (peak resident set) is read from /proc/PID/status. The runner's figure
is its supervisor plus every worker process (the sum of their peaks: an upper bound of
what the container's cgroup sees at once).

Body shapes: `records` (a list of small objects with a few fields: a typical large
webhook) and `empty_objects` (`[{},{},...]`: the most Python objects per byte of JSON,
the worst case a sender can choose within the size limit).
"""

import argparse
import asyncio
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from harness.infra import fresh_database, fresh_vhost
from harness.system import REPO, System
from services import registry

RESULTS = REPO / "bench" / "results"
MAX_BODY = 10 * 1024 * 1024
SERVICES = registry.NAMES

# Reads the whole input (its length), answers a small body: the cost is the input's.
FLOW: dict[str, Any] = {
    "name": "memory",
    "status": "live",
    "webhook": {"ref_id": "web1", "timeout_s": 120},
    "steps": [{"ref_id": "size", "type": "template", "template": "{{ web1 | length }}"}],
}


def records_body(limit: int) -> bytes:
    """A list of objects as a CRM export would send, filled up to `limit` bytes."""
    item = '{"id": %d, "name": "user-%d", "email": "u%d@example.com", "tags": ["a", "b"]}'
    parts: list[str] = []
    size = 2
    n = 0
    while True:
        text = item % (n, n, n)
        if size + len(text) + 1 > limit:
            break
        parts.append(text)
        size += len(text) + 1
        n += 1
    return ("[" + ",".join(parts) + "]").encode()


def empty_objects_body(limit: int) -> bytes:
    count = (limit - 2 + 1) // 3  # "{}," per item, no comma after the last
    return ("[" + ",".join(["{}"] * count) + "]").encode()


SHAPES = {"records": records_body, "empty_objects": empty_objects_body}


def descendants(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
        for child in children:
            found += [child, *descendants(child)]
    return found


def status_kib(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass  # gone meanwhile (a worker that was replaced)
    return 0


def reset_peaks(pids: list[int]) -> None:
    for pid in pids:
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to VmRSS
        except OSError:
            pass


def service_pids(system: System) -> dict[str, list[int]]:
    pids: dict[str, list[int]] = {}
    for name in SERVICES:
        pid = system.processes[name][0].process.pid
        pids[name] = [pid, *descendants(pid)]
    return pids


def mib(kib: int) -> float:
    return round(kib / 1024, 1)


async def setup(system: System, token: str) -> tuple[str, str]:
    headers = {"Authorization": f"Bearer {token}"}
    runner = system.url("runner")
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{runner}/v1/flows", json=FLOW, headers=headers) as answer:
            flow = await answer.json()
            assert answer.status == 201, flow
        async with session.get(f"{runner}/v1/flows/{flow['id']}/webhook", headers=headers) as r:
            return flow["id"], (await r.json())["token"]


async def stored(database_url: str, flow_id: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM debugger.requests"
                " WHERE flow_id = $1::uuid AND outcome <> 'running'",
                flow_id,
            )
        )
    finally:
        await conn.close()


async def send(url: str, token: str, body: bytes, concurrent: int) -> list[tuple[int, str]]:
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def one() -> tuple[int, str]:
            async with session.post(
                url,
                data=body,
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            ) as answer:
                return answer.status, (await answer.text())[:200]

        return await asyncio.gather(*(one() for _ in range(concurrent)))


def scenario(
    system: System, flow_id: str, token: str, body: bytes, concurrent: int, done_before: int
) -> dict[str, Any]:
    pids = service_pids(system)
    everything = [pid for group in pids.values() for pid in group]
    reset_peaks(everything)
    rest = {name: sum(status_kib(p, "VmRSS") for p in group) for name, group in pids.items()}
    started = time.monotonic()
    url = f"{system.url('ingress')}/v1/flow-webhook/{flow_id}"
    answers = asyncio.run(send(url, token, body, concurrent))
    answered_s = time.monotonic() - started
    expected = done_before + concurrent
    while asyncio.run(stored(system.database_url, flow_id)) < expected:
        if time.monotonic() - started > 300:
            raise RuntimeError(f"the debugger did not store the requests\n{system.logs()}")
        time.sleep(0.2)
    time.sleep(1.0)  # let late frees and the last batch settle before reading peaks
    # Children started after the reset (a replaced worker) count with their own peak.
    pids = service_pids(system)
    peaks = {name: sum(status_kib(p, "VmHWM") for p in group) for name, group in pids.items()}
    return {
        "concurrent": concurrent,
        "answers": sorted({f"{status} {text[:80]}" for status, text in answers}),
        "answered_s": round(answered_s, 2),
        "stored_s": round(time.monotonic() - started - 1.0, 2),
        "rest_mib": {name: mib(kib) for name, kib in rest.items()},
        "peak_mib": {name: mib(kib) for name, kib in peaks.items()},
        # Each process on its own (the runner: supervisor first, then its workers).
        "process_peaks_mib": {
            name: [mib(status_kib(p, "VmHWM")) for p in group] for name, group in pids.items()
        },
    }


def table(results: dict[str, Any]) -> str:
    lines = [
        "| body | at once | " + " | ".join(f"{s} rest → peak MiB" for s in SERVICES) + " |",
        "|---|---|" + "---|" * len(SERVICES),
    ]
    for name, result in results["scenarios"].items():
        cells = " | ".join(f"{result['rest_mib'][s]} → {result['peak_mib'][s]}" for s in SERVICES)
        lines.append(f"| {name.rsplit('_x', 1)[0]} | {result['concurrent']} | {cells} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--concurrent", nargs="+", type=int, default=[1, 4])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "body_limit_bytes": MAX_BODY,
        "workers": args.workers,
        "scenarios": {},
    }
    with fresh_vhost() as amqp_url, fresh_database() as database_url:
        system = System(
            amqp_url,
            database_url,
            extra_env={
                "FLOWHOOKS_LOG_LEVEL": "warning",
                "FLOWHOOKS_RUNNER_WORKERS": str(args.workers),
                "FLOWHOOKS_INGRESS_FLOW_RATE_LIMIT_PER_S": "0",
            },
        )
        try:
            system.start_all()
            token = system.create_token("memory", "automation")
            flow_id, flow_token = asyncio.run(setup(system, token))
            # Warm up every path with a small body first (imports, caches, pools).
            asyncio.run(
                send(
                    f"{system.url('ingress')}/v1/flow-webhook/{flow_id}", flow_token, b'{"a": 1}', 1
                )
            )
            done = 1
            while asyncio.run(stored(database_url, flow_id)) < done:
                time.sleep(0.2)
            for shape in args.shapes:
                body = SHAPES[shape](MAX_BODY)
                assert len(body) <= MAX_BODY
                for concurrent in args.concurrent:
                    key = f"{shape}_x{concurrent}"
                    result = scenario(system, flow_id, flow_token, body, concurrent, done)
                    done += concurrent
                    results["scenarios"][key] = result
                    print(key, json.dumps(result), flush=True)
        finally:
            system.stop_all()
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%SZ")
    (RESULTS / f"memory-{stamp}.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / f"memory-{stamp}.md").write_text(table(results) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()

"""Runs waiting in `delay` steps: `python -m bench.delays [--runs 10000] [--delay 120]
[--concurrency 64] [--max-wait 300]`.

1. Baseline, in the same run: `--runs` async requests of a flow of two template steps
   (no delay), sent closed loop by the load generator (its own process); the time until
   the runner recorded them all gives the async completion rate (`baseline`).
2. `--runs` async requests of the same flow with a `delay` of `--delay` seconds between
   its steps (long enough that every run is stored before the first is due). Once every
   run waits (`runner.waiting_runs` holds them all), the runner's memory (supervisor and
   workers, RSS) and the database's growth (the runner schema's tables, and the whole
   database) are measured against what they were before the sends: per waiting run.
3. Every waiting run is made due at once (`resume_at` set to now in the table: the bench
   does not wait out the delay), and the time until the runners republished them all
   (the table empty) and until every run was recorded finished gives the resume rates,
   reported also as a ratio to the baseline's completion rate (which includes the
   ingress; a resumed run skips it). The runner's memory is read again once all
   finished: memory held per waiting run would be given back then.
Loopback only, bounded (`--max-wait` per phase). Results: `bench/results/delays-<date>.json`.
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

from bench.measure import RESULTS, loadgen, rss_mib
from harness.infra import fresh_database, fresh_vhost
from harness.system import System

STEPS = [
    {"ref_id": "first", "type": "template", "template": "{{ web1.n + 1 }}"},
    {"ref_id": "last", "type": "template", "template": "{{ first.value * 2 }}"},
]
RUNNER_TABLES = ("waiting_runs", "waiting_totals", "finished_runs")


def flow(name: str, delay_s: int | None) -> dict[str, Any]:
    steps = list(STEPS)
    if delay_s is not None:
        steps.insert(1, {"ref_id": "wait", "type": "delay", "seconds": delay_s})
    return {"name": name, "status": "live", "webhook": {"async": True}, "steps": steps}


def processes(pid: int) -> int:
    """A process and its descendants, counted (the runner and its worker processes)."""
    count, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            for task in Path(f"/proc/{current}/task").glob("*"):
                pending += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
        count += 1
    return count


def tree_rss_mib(pid: int) -> float:
    """RSS of a process and its descendants (the runner's supervisor and workers)."""
    total_kib = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kib += int(line.split()[1])
            for task in Path(f"/proc/{current}/task").glob("*"):
                pending += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
    return round(total_kib / 1024, 1)


async def create_flows(system: System, token: str, delay_s: int) -> dict[str, tuple[str, str]]:
    headers = {"Authorization": f"Bearer {token}"}
    runner = system.url("runner")
    flows = {}
    async with aiohttp.ClientSession() as session:
        for key, definition in (
            ("plain", flow("bench plain", None)),
            ("delayed", flow("bench delayed", delay_s)),
        ):
            async with session.post(f"{runner}/v1/flows", json=definition, headers=headers) as r:
                created = await r.json()
                assert r.status == 201, created
            async with session.get(
                f"{runner}/v1/flows/{created['id']}/webhook", headers=headers
            ) as r:
                flows[key] = (created["id"], (await r.json())["token"])
    await asyncio.sleep(1)  # auth applies the new flows (flow.changed)
    return flows


async def scalar(database_url: str, query: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(await conn.fetchval(query))
    finally:
        await conn.close()


FINISHED = "SELECT count(*) FROM runner.finished_runs WHERE request_id NOT LIKE '%#%'"
WAITING = "SELECT count(*) FROM runner.waiting_runs"
RUNNER_BYTES = "SELECT " + " + ".join(
    f"pg_total_relation_size('runner.{table}')" for table in RUNNER_TABLES
)
DATABASE_BYTES = "SELECT pg_database_size(current_database())"


def wait_for(database_url: str, query: str, target: int, max_wait_s: float) -> float:
    """Seconds until `query` counts `target` (bounded)."""
    started = time.monotonic()
    while time.monotonic() - started < max_wait_s:
        try:
            if asyncio.run(scalar(database_url, query)) == target:
                return time.monotonic() - started
        except (OSError, asyncpg.PostgresError) as exc:  # a restart of the shared server
            print(f"database: {exc!r}; asking again", flush=True)
        time.sleep(0.2)
    raise TimeoutError(f"{query!r} did not reach {target} within {max_wait_s} s")


def send(args: argparse.Namespace, system: System, flow_id: str, token: str) -> dict[str, Any]:
    result = loadgen(
        {
            "url": f"{system.url('ingress')}/v1/flow-webhook/{flow_id}",
            "headers": {"Authorization": f"Bearer {token}"},
            "body": '{"n": 1}',
            "concurrency": args.concurrency,
            "max_requests": args.runs,
            "seconds": args.max_wait,
        }
    )
    result.pop("ids", None)
    assert result["statuses"] == {"200": args.runs}, result
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--delay", type=int, default=120)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--max-wait", type=float, default=300.0)
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"settings": vars(args)}
    with fresh_vhost() as amqp_url, fresh_database() as database_url:
        system = System(
            amqp_url,
            database_url,
            extra_env={
                "FLOWHOOKS_LOG_LEVEL": "warning",
                "FLOWHOOKS_INGRESS_FLOW_RATE_LIMIT_PER_S": "0",
                "FLOWHOOKS_INGRESS_WORKSPACE_QUEUED_RUNS": str(2 * args.runs),
                "FLOWHOOKS_RUNNER_DELAY_POLL_S": "0.2",
            },
        )
        try:
            system.start_all()
            token = system.create_token("bench", "automation")
            flows = asyncio.run(create_flows(system, token, args.delay))
            runner_pid = system.processes["runner"][0].process.pid

            started = time.monotonic()
            results["baseline_send"] = send(args, system, *flows["plain"])
            wait_for(database_url, FINISHED, args.runs, args.max_wait)
            seconds = time.monotonic() - started
            results["baseline"] = {
                "runs": args.runs,
                "seconds": round(seconds, 2),
                "completed_per_s": round(args.runs / seconds, 1),
            }

            before = {
                "runner_processes": processes(runner_pid),
                "supervisor_rss_mib": rss_mib(runner_pid),
                "runner_rss_mib": tree_rss_mib(runner_pid),
                "runner_schema_bytes": asyncio.run(scalar(database_url, RUNNER_BYTES)),
                "database_bytes": asyncio.run(scalar(database_url, DATABASE_BYTES)),
            }
            sent_at = time.monotonic()
            results["delayed_send"] = send(args, system, *flows["delayed"])
            wait_for(database_url, WAITING, args.runs, args.max_wait)
            stored_s = time.monotonic() - sent_at
            assert stored_s < args.delay, "runs came due before all were stored: raise --delay"
            waiting = {
                "runner_processes": processes(runner_pid),
                "supervisor_rss_mib": rss_mib(runner_pid),
                "runner_rss_mib": tree_rss_mib(runner_pid),
                "waiting_runs_bytes": asyncio.run(
                    scalar(database_url, "SELECT pg_total_relation_size('runner.waiting_runs')")
                ),
                "runner_schema_bytes": asyncio.run(scalar(database_url, RUNNER_BYTES)),
                "database_bytes": asyncio.run(scalar(database_url, DATABASE_BYTES)),
            }
            results["waiting"] = {
                "runs": args.runs,
                "stored_within_s": round(stored_s, 2),
                "before": before,
                "all_waiting": waiting,
                "runner_rss_ratio": round(waiting["runner_rss_mib"] / before["runner_rss_mib"], 3),
                "supervisor_rss_ratio": round(
                    waiting["supervisor_rss_mib"] / before["supervisor_rss_mib"], 3
                ),
                "supervisor_rss_kib_per_run": round(
                    (waiting["supervisor_rss_mib"] - before["supervisor_rss_mib"])
                    * 1024
                    / args.runs,
                    3,
                ),
                "runner_rss_kib_per_run": round(
                    (waiting["runner_rss_mib"] - before["runner_rss_mib"]) * 1024 / args.runs, 3
                ),
                "runner_schema_bytes_per_run": round(
                    (waiting["runner_schema_bytes"] - before["runner_schema_bytes"]) / args.runs
                ),
                "database_bytes_per_run": round(
                    (waiting["database_bytes"] - before["database_bytes"]) / args.runs
                ),
            }
            print(json.dumps(results, indent=2), flush=True)

            finished_before = asyncio.run(scalar(database_url, FINISHED))
            due_at = time.monotonic()
            asyncio.run(
                scalar(
                    database_url,
                    "WITH d AS (UPDATE runner.waiting_runs"
                    " SET resume_at = now() RETURNING 1) SELECT count(*) FROM d",
                )
            )
            republished_s = wait_for(database_url, WAITING, 0, args.max_wait)
            wait_for(database_url, FINISHED, finished_before + args.runs, args.max_wait)
            finished_s = time.monotonic() - due_at
            results["resume"] = {
                "runs": args.runs,
                "republished_s": round(republished_s, 2),
                "republished_per_s": round(args.runs / republished_s, 1),
                "finished_s": round(finished_s, 2),
                "resumed_and_finished_per_s": round(args.runs / finished_s, 1),
                "ratio_to_baseline": round(
                    args.runs / finished_s / results["baseline"]["completed_per_s"], 2
                ),
                # After every run resumed and finished: what memory the waiting runs held
                # would be given back (or was never taken).
                "after": {
                    "runner_processes": processes(runner_pid),
                    "supervisor_rss_mib": rss_mib(runner_pid),
                    "runner_rss_mib": tree_rss_mib(runner_pid),
                },
            }
        finally:
            system.stop_all()
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%SZ")
    (RESULTS / f"delays-{stamp}.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    print(f"written: bench/results/delays-{stamp}.json")


if __name__ == "__main__":
    main()

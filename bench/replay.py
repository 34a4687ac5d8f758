"""Live latency while a bulk replay job runs: `python -m bench.replay [--requests 10000]
[--rate 200] [--seconds 30] [--replay-rate 100] [--in-flight 4]`.

1. `--requests` failed requests of a flow (since fixed) are COPYed into the debugger's
   table (as if they had arrived and failed).
2. Live sync webhooks to another flow of the same workspace, open loop at `--rate` a
   second for `--seconds`, without any job: p50 / p99 (`live_alone`).
3. A job replaying those requests is started (the debugger's throttle:
   `--replay-rate` replays started a second, `--in-flight` awaiting their outcome),
   and the same live load runs again while it works (`live_with_job`); the job's
   progress over that window is reported, and the run then waits (bounded) for the
   job to finish.
The ratio with / alone of p50 and p99 is the figure: 1.0 = the job costs live traffic
nothing. Results: `bench/results/replay-<date>.json`.
"""

import argparse
import asyncio
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg

from bench.measure import RESULTS, SMALL_JSON, SYNC_FLOW, create_flows, loadgen
from harness.infra import fresh_database, fresh_vhost
from harness.system import System
from shared.schemas.vocabulary import Outcome, RunMode

FIXED_FLOW = {
    "name": "bench replayed",
    "status": "live",
    "steps": [{"ref_id": "n", "type": "template", "template": "{{ web1.n * 10 }}"}],
}
_COLUMNS = (
    "id, flow_id, workspace_id, received_at, method, path, query, headers, content_type,"
    " raw_body, raw_body_truncated, input, mode, outcome, status_code,"
    " response_content_type, response_body, error, steps, started_at, finished_at,"
    " source_rank"
).split(", ")


async def seed_failed(database_url: str, flow_id: str, count: int) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        workspace = await conn.fetchval(
            "SELECT workspace_id FROM runner.flows WHERE id = $1::uuid", flow_id
        )
        start = datetime.now(UTC) - timedelta(hours=1)
        records = []
        for i in range(count):
            at = start + timedelta(milliseconds=i)
            records.append(
                (
                    uuid.uuid4().hex,
                    uuid.UUID(flow_id),
                    workspace,
                    at,
                    "POST",
                    f"/v1/flow-webhook/{flow_id}",
                    "{}",
                    '{"content-type": "application/json"}',
                    "application/json",
                    f'{{"n": {i}}}',
                    False,
                    f'{{"n": {i}}}',
                    RunMode.SYNC,
                    Outcome.FAILED,
                    500,
                    "application/json",
                    '{"status": 500, "error": "flow_error"}',
                    "a step failed",
                    "[]",
                    at,
                    at + timedelta(milliseconds=3),
                    3,
                )
            )
        await conn.copy_records_to_table(
            "requests", schema_name="debugger", records=records, columns=_COLUMNS
        )
        await conn.execute("ANALYZE debugger.requests")
    finally:
        await conn.close()


async def call(method: str, url: str, token: str, body: Any = None) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session:
        async with session.request(
            method, url, json=body, headers={"Authorization": f"Bearer {token}"}
        ) as answer:
            return answer.status, dict(await answer.json())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--replay-rate", type=float, default=100.0)
    parser.add_argument("--in-flight", type=int, default=4)
    parser.add_argument("--max-wait", type=float, default=240.0)
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
                "FLOWHOOKS_DEBUGGER_REPLAY_RATE": str(args.replay_rate),
                "FLOWHOOKS_DEBUGGER_REPLAY_IN_FLIGHT": str(args.in_flight),
            },
        )
        try:
            system.start_all()
            token = system.create_token("bench", "automation")
            flows = asyncio.run(
                create_flows(system, token, {"live": SYNC_FLOW, "replayed": FIXED_FLOW})
            )
            asyncio.run(seed_failed(database_url, flows["replayed"], args.requests))
            live = {
                "url": f"{system.url('ingress')}/v1/flow-webhook/{flows['live']}",
                "headers": {"Authorization": f"Bearer {flows['live_token']}"},
                "body": SMALL_JSON,
                "rate": args.rate,
                "seconds": args.seconds,
            }
            loadgen({**live, "seconds": 3})  # warm-up
            results["live_alone"] = loadgen(live)
            debugger = system.url("debugger")
            status, job = asyncio.run(
                call(
                    "POST",
                    f"{debugger}/v1/flows/{flows['replayed']}/replays",
                    token,
                    {"filter": {"outcome": Outcome.FAILED}},
                )
            )
            assert status == 202 and job["total"] == args.requests, job
            job_url = f"{debugger}/v1/replays/{job['id']}"
            started = time.monotonic()
            results["live_with_job"] = loadgen(live)
            status, during = asyncio.run(call("GET", job_url, token))
            assert status == 200, during
            results["job_during_live"] = {
                "done": during["done"],
                "status": during["status"],
                "replays_per_s": round(during["done"] / (time.monotonic() - started), 1),
            }
            print(json.dumps(results, indent=2), flush=True)
            state = during
            while time.monotonic() - started < args.max_wait:
                status, answer = asyncio.run(call("GET", job_url, token))
                if status != 200:
                    print(f"GET job: {status} {answer}", flush=True)
                else:
                    state = answer
                    if state["status"] != "running":
                        break
                time.sleep(1)
            results["job"] = {
                key: state[key] for key in ("status", "total", "done", "succeeded", "failed")
            } | {"seconds": round(time.monotonic() - started, 1)}
        finally:
            system.stop_all()
    for result in results.values():
        result.pop("ids", None)
    alone, with_job = results["live_alone"], results["live_with_job"]
    results["ratio"] = {
        "p50": round(with_job["p50_ms"] / alone["p50_ms"], 2),
        "p99": round(with_job["p99_ms"] / alone["p99_ms"], 2),
    }
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%SZ")
    (RESULTS / f"replay-{stamp}.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    print(f"written: bench/results/replay-{stamp}.json")


if __name__ == "__main__":
    main()

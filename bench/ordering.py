"""What ordering costs: `python -m bench.ordering [--burst 600] [--rate 8] [--seconds 6]`.

One system (one runner), five async flows with one template step: unordered (the
baseline), and `webhook.ordering` `{"key": "json:/k", "concurrency": 1}` with requests
spread over 1, 10 and 1,000 keys. For each, in the same run:
1. throughput: `--burst` requests sent back to back (load generator in its own process),
   then the time from the first one's acceptance to the last one's end, read from the
   debugger's records: runs a second, and its ratio to the unordered flow's;
2. latency: `--rate` requests a second for `--seconds` (open loop, well under every
   flow's capacity, a single key's included, so that it measures the mechanism, not a
   backlog), acceptance to end of each run: p50 and p99, and what ordering adds to the
   unordered flow's.
Writes `bench/results/ordering-<date>.json`.
"""

import argparse
import asyncio
import json
import time
from datetime import UTC, datetime
from typing import Any

import aiohttp
import asyncpg

from bench.loadgen import percentile
from bench.measure import RESULTS, loadgen
from harness.infra import fresh_database, fresh_vhost
from harness.system import System
from shared.schemas.vocabulary import PENDING

BODY = '{"k": "%KEY%", "n": 1}'
SCENARIOS: dict[str, tuple[dict[str, Any], int]] = {
    # name: (webhook settings, keys the requests are spread over)
    "unordered": ({}, 0),
    "ordered_1_key": ({"ordering": {"key": "json:/k", "concurrency": 1}}, 1),
    "ordered_10_keys": ({"ordering": {"key": "json:/k", "concurrency": 1}}, 10),
    "ordered_1000_keys": ({"ordering": {"key": "json:/k", "concurrency": 1}}, 1000),
}


async def create_flow(system: System, token: str, name: str, webhook: dict[str, Any]) -> str:
    definition = {
        "name": name,
        "status": "live",
        "webhook": {"ref_id": "web1", "async": True, **webhook},
        "steps": [{"ref_id": "t", "type": "template", "template": "{{ web1.k }}"}],
    }
    headers = {"Authorization": f"Bearer {token}"}
    runner = system.url("runner")
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{runner}/v1/flows", json=definition, headers=headers) as r:
            flow = await r.json()
            assert r.status == 201, flow
        async with session.get(f"{runner}/v1/flows/{flow['id']}/webhook", headers=headers) as r:
            webhook_token = (await r.json())["token"]
    # Usable once auth has applied it (the ingress answers 401 before).
    conn = await asyncpg.connect(system.database_url)
    try:
        for _ in range(600):  # 30 s at most
            if await conn.fetchval(
                "SELECT version FROM auth.flow_access WHERE flow_id = $1::uuid", flow["id"]
            ):
                break
            await asyncio.sleep(0.05)
    finally:
        await conn.close()
    return f"{flow['id']} {webhook_token}"


async def finished_times(
    database_url: str, ids: list[str], max_wait_s: float
) -> list[tuple[datetime, datetime]]:
    """(received_at, finished_at) of each of `ids`, once all are recorded (bounded)."""
    conn = await asyncpg.connect(database_url)
    try:
        deadline = time.monotonic() + max_wait_s
        while True:
            rows = await conn.fetch(
                "SELECT received_at, finished_at, outcome FROM debugger.requests"
                " WHERE id = ANY($1::text[])",
                ids,
            )
            done = [row for row in rows if row["outcome"] not in PENDING]
            if len(done) == len(ids) or time.monotonic() > deadline:
                return [(row["received_at"], row["finished_at"]) for row in done]
            await asyncio.sleep(0.2)
    finally:
        await conn.close()


def measure(system: System, flow: str, keys: int, args: argparse.Namespace) -> dict[str, Any]:
    flow_id, token = flow.split()
    spec = {
        "url": f"{system.url('ingress')}/v1/flow-webhook/{flow_id}",
        "headers": {"Authorization": f"Bearer {token}"},
        "body": BODY,
        "key_count": max(keys, 1),
        "collect_ids": True,
    }
    burst = loadgen({**spec, "concurrency": 32, "max_requests": args.burst, "seconds": 60})
    times = asyncio.run(finished_times(system.database_url, burst["ids"], args.max_wait))
    span_s = (max(end for _, end in times) - min(start for start, _ in times)).total_seconds()
    paced = loadgen({**spec, "rate": args.rate, "seconds": args.seconds})
    times_paced = asyncio.run(finished_times(system.database_url, paced["ids"], args.max_wait))
    latencies = sorted((end - start).total_seconds() * 1000 for start, end in times_paced)
    return {
        "burst": args.burst,
        "runs_done": len(times),
        "runs_per_s": round(len(times) / span_s, 1),
        "latency_runs": len(latencies),
        "p50_ms": round(percentile(latencies, 0.5), 1),
        "p99_ms": round(percentile(latencies, 0.99), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--burst", type=int, default=600)
    parser.add_argument("--rate", type=float, default=8.0)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--max-wait", type=float, default=120.0)
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
            },
        )
        try:
            system.start_all()
            token = system.create_token("bench", "automation")
            for name, (webhook, keys) in SCENARIOS.items():
                flow = asyncio.run(create_flow(system, token, name, webhook))
                results[name] = measure(system, flow, keys, args)
                print(name, json.dumps(results[name]), flush=True)
        finally:
            system.stop_all()
    base = results["unordered"]
    for name in SCENARIOS:
        if name != "unordered":
            result = results[name]
            result["throughput_ratio"] = round(result["runs_per_s"] / base["runs_per_s"], 3)
            result["added_p50_ms"] = round(result["p50_ms"] - base["p50_ms"], 1)
            result["added_p99_ms"] = round(result["p99_ms"] - base["p99_ms"], 1)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%SZ")
    (RESULTS / f"ordering-{stamp}.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    print(f"written: bench/results/ordering-{stamp}.json")


if __name__ == "__main__":
    main()

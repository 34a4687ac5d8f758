"""What a flood of forged, large signed bodies costs the ingress, with the per-flow budget
of failed signature checks on (the default) and off (FLOWHOOKS_INGRESS_BAD_SIGNATURE_RATE_PER_S=0:
every body read and hashed, as before the budget existed): forged bodies the ingress
read and checked a second, how many it refused unread (429), its CPU, and the latency of
another flow's requests meanwhile. Its own system for each variant; loopback only.

    .venv/bin/python -m bench.bad_signatures [--seconds 10] [--senders 4] [--mb 10]
"""

import argparse
import asyncio
import os
import statistics
import time
from typing import Any

import aiohttp

from harness.system import System, running_system

SECRETS_KEY = "bench-webhook-secrets-key-0123456789abcdef"


def cpu_s(pid: int) -> float:
    """The process's user + system CPU time so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def flood(system: System, seconds: float, senders: int, size: int) -> dict[str, Any]:
    token = system.create_token("acme", "automation")
    auth = {"Authorization": f"Bearer {token}"}
    runner = system.url("runner")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def create(definition: dict[str, Any]) -> str:
            async with session.post(f"{runner}/v1/flows", json=definition, headers=auth) as answer:
                assert answer.status == 201, await answer.text()
                return str((await answer.json())["id"])

        forged_id = await create(
            {
                "name": "A, flooded",
                "status": "live",
                "webhook": {"auth": {"mode": "github", "secrets": ["github-secret-0123"]}},
            }
        )
        other_id = await create({"name": "B", "status": "live"})
        async with session.get(f"{runner}/v1/flows/{other_id}/webhook", headers=auth) as answer:
            other_token = (await answer.json())["token"]
        ingress = system.processes["ingress"][0]
        body = b'{"pad": "' + b"x" * (size - 11) + b'"}'
        forged = {"Content-Type": "application/json", "X-Hub-Signature-256": "sha256=" + "0" * 64}
        statuses: dict[int, int] = {}
        latencies: list[float] = []
        deadline = time.monotonic() + seconds

        async def sender() -> None:
            while time.monotonic() < deadline:
                try:
                    async with session.post(
                        f"{ingress.url}/v1/flow-webhook/{forged_id}", data=body, headers=forged
                    ) as answer:
                        await answer.read()
                        status = answer.status
                except aiohttp.ClientError:
                    status = 0  # the connection closed before the answer was read
                statuses[status] = statuses.get(status, 0) + 1

        async def other_flow() -> None:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                async with session.post(
                    f"{ingress.url}/v1/flow-webhook/{other_id}",
                    json={"n": 1},
                    headers={"Authorization": f"Bearer {other_token}"},
                ) as answer:
                    await answer.read()
                    assert answer.status == 200
                latencies.append(time.perf_counter() - started)
                await asyncio.sleep(0.05)

        cpu_before, began = cpu_s(ingress.process.pid), time.monotonic()
        await asyncio.gather(*(sender() for _ in range(senders)), other_flow())
        elapsed = time.monotonic() - began
        cpu = cpu_s(ingress.process.pid) - cpu_before
    latencies.sort()
    return {
        "checked_per_s": round(statuses.get(401, 0) / elapsed, 1),
        "refused_unread_per_s": round(statuses.get(429, 0) / elapsed, 1),
        "reset_before_answer_per_s": round(statuses.get(0, 0) / elapsed, 1),
        "statuses": statuses,
        "ingress_cpu_share": round(cpu / elapsed, 2),
        "other_flow_p50_ms": round(statistics.median(latencies) * 1000, 1),
        "other_flow_p99_ms": round(latencies[int(0.99 * (len(latencies) - 1))] * 1000, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--mb", type=float, default=10)
    args = parser.parse_args()
    size = int(args.mb * 1024 * 1024)
    for name, rate in (("budget off (before)", "0"), ("budget on (default)", "1")):
        with running_system(
            FLOWHOOKS_WEBHOOK_SECRETS_KEY=SECRETS_KEY,
            FLOWHOOKS_INGRESS_BAD_SIGNATURE_RATE_PER_S=rate,
            FLOWHOOKS_LOG_LEVEL="warning",
        ) as system:
            result = asyncio.run(flood(system, args.seconds, args.senders, size))
        print(f"{name}: {result}", flush=True)


if __name__ == "__main__":
    main()

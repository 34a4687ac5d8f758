"""What a source costs the ingress: a source with 1, 5 and 25 routes whose filters match
0 %, 10 % and 100 % of requests, against the one-flow async webhook in the same run
(the baseline): accepted requests a second and ingress CPU per request, each as a ratio
to the baseline's; and what filtering a request out costs against running it (CPU of
every service per request, the runs' drain included). One system, loopback only, the
load generator in its own process (bench/loadgen.py), every scenario bounded in time.

    .venv/bin/python -m bench.sources [--seconds 4] [--concurrency 16]
"""

import argparse
import asyncio
import json
import time
from typing import Any

import aiohttp

from bench.measure import cpu_seconds, loadgen
from harness.system import System, running_system

ROUTES = (1, 5, 25)
MATCHING = (0, 10, 100)  # percent of requests every route's filter matches
HIT = '{"kind": "hit", "n": 1}'
MISS = '{"kind": "miss", "n": 1}'
FILTER = {"body": {"kind": "hit"}}
SETTLE_S = 60.0  # at most, waiting for the runs queued by a scenario to be done


def bodies(percent: int) -> list[str]:
    """Ten bodies sent in turn, `percent` of them matching."""
    hits = percent // 10
    return [HIT] * hits + [MISS] * (10 - hits)


class Api:
    def __init__(self, system: System, session: aiohttp.ClientSession) -> None:
        self.runner = system.url("runner")
        self.session = session
        self.auth = {"Authorization": f"Bearer {system.create_token('acme', 'automation')}"}

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        async with self.session.request(
            method, f"{self.runner}{path}", json=body, headers=self.auth
        ) as answer:
            assert answer.status < 300, await answer.text()
            return await answer.json()


async def setup(system: System) -> dict[str, Any]:
    """The baseline flow (async: a source's runs are) and a source per route count."""
    async with aiohttp.ClientSession() as session:
        api = Api(system, session)
        flow = {"name": "bench", "status": "live", "webhook": {"async": True}, "steps": []}
        baseline = await api.call("POST", "/v1/flows", flow)
        info = await api.call("GET", f"/v1/flows/{baseline['id']}/webhook")
        flows = [await api.call("POST", "/v1/flows", flow) for _ in range(max(ROUTES))]
        sources = {}
        for count in ROUTES:
            source = await api.call("POST", "/v1/sources", {"name": f"{count} routes"})
            for routed in flows[:count]:
                path = f"/v1/sources/{source['id']}/routes/{routed['id']}"
                await api.call("PUT", path, {"filter": FILTER})
            sources[count] = source
    await asyncio.sleep(1.5)  # auth learns the baseline flow (flow.changed)
    return {"baseline": (baseline["id"], info["token"]), "sources": sources}


def service_cpu(system: System) -> dict[str, float]:
    return {
        name: cpu_seconds(processes[0].process.pid) for name, processes in system.processes.items()
    }


def settle(system: System) -> None:
    """Until the services are idle again (the runs a scenario queued are done)."""
    deadline = time.monotonic() + SETTLE_S
    before = sum(service_cpu(system).values())
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = sum(service_cpu(system).values())
        if now - before < 0.05:
            return
        before = now


def scenario(system: System, url: str, token: str, sent: list[str], args: Any) -> dict[str, Any]:
    spec = {
        "url": url,
        "bodies": sent,
        "headers": {"Authorization": f"Bearer {token}"},
        "seconds": args.seconds,
        "concurrency": args.concurrency,
    }
    loadgen({**spec, "seconds": 1})  # warm (caches, connections), not measured
    settle(system)
    cpu_before = service_cpu(system)
    result = loadgen(spec)
    ingress_cpu = service_cpu(system)["ingress"] - cpu_before["ingress"]
    settle(system)
    all_cpu = sum(service_cpu(system).values()) - sum(cpu_before.values())
    accepted = result["statuses"].get("200", 0)
    return {
        "accepted_per_s": round(accepted / result["seconds"], 1),
        "statuses": result["statuses"],
        "p50_ms": result["p50_ms"],
        "ingress_cpu_ms_per_request": round(1000 * ingress_cpu / max(1, accepted), 3),
        "all_cpu_ms_per_request": round(1000 * all_cpu / max(1, accepted), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    # The per-flow rate limit (a source counts as one flow) would cap the filtered
    # scenarios, which are measured past it.
    with running_system(
        FLOWHOOKS_LOG_LEVEL="warning", FLOWHOOKS_INGRESS_FLOW_RATE_LIMIT_PER_S="1000000"
    ) as system:
        made = asyncio.run(setup(system))
        ingress = system.url("ingress")
        flow_id, token = made["baseline"]
        base = scenario(system, f"{ingress}/v1/flow-webhook/{flow_id}", token, [HIT], args)
        print(f"baseline (one-flow async webhook): {json.dumps(base)}", flush=True)
        report: dict[str, Any] = {"baseline": base, "sources": {}}
        for count, source in made["sources"].items():
            for percent in MATCHING:
                url = f"{ingress}/v1/source-webhook/{source['id']}"
                measured = scenario(system, url, source["token"], bodies(percent), args)
                measured["rps_ratio"] = round(
                    measured["accepted_per_s"] / base["accepted_per_s"], 2
                )
                measured["ingress_cpu_ratio"] = round(
                    measured["ingress_cpu_ms_per_request"] / base["ingress_cpu_ms_per_request"], 2
                )
                report["sources"][f"{count} routes, {percent}% match"] = measured
                print(f"{count} routes, {percent:3d}% match: {json.dumps(measured)}", flush=True)
        filtered = report["sources"]["1 routes, 0% match"]["all_cpu_ms_per_request"]
        run = report["sources"]["1 routes, 100% match"]["all_cpu_ms_per_request"]
        print(
            f"filtering out vs running (1 route, every service's CPU per request):"
            f" {filtered} ms vs {run} ms, ratio {round(filtered / run, 2)}",
            flush=True,
        )
        settle(system)  # the last scenario's runs done before the services stop


if __name__ == "__main__":
    main()

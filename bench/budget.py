"""`python -m bench.budget`: the CPU budget of one webhook request, hop by hop, beside the
ceiling of the same run (about a minute).

Measures the bare-aiohttp ceiling, then the system (four services, RabbitMQ's Erlang VM,
PostgreSQL) under the 50-connection closed loop, sync and async, and reports per
request: the CPU of the ingress, RabbitMQ (beam.smp), the runner supervisor, its
workers, the debugger, PostgreSQL (the backends of the run's own database) and the load
generator (wrk when on PATH, else bench/loadgen.py: bench/measure.py; from /proc and
the load generator's rusage), and the mean items per broker
message on every hop (the services' batch counters, shared/metrics.py
`BatchCounters`). The ceiling's own CPU per request is the yardstick: "x ceiling" is
how many bare-aiohttp requests each hop's share would pay for. The broker's VM serves
every vhost of the machine: on a shared machine its figure includes others' traffic.
Writes `bench/results/budget-<date>.json` and `.md`. `make bench` prints the same table
for its own sync and async scenarios."""

import argparse
import asyncio
import json
from datetime import UTC, datetime
from typing import Any

from bench.measure import (
    RESULTS,
    api_setup,
    default_generator,
    measure_ceiling,
    system_bench,
    webhook_load,
)

HOPS = (
    ("ingress", "ingress"),
    ("auth (cache misses only)", "auth"),
    ("RabbitMQ (beam.smp)", "rabbitmq"),
    ("runner supervisor", "runner_supervisor"),
    ("runner workers", "runner_workers"),
    ("debugger", "debugger"),
    ("PostgreSQL", "postgresql"),
    ("load generator", "loadgen"),
)
SCENARIOS = ("sync", "async")


def measure(seconds: float, concurrency: int, warmup: float, env: dict[str, str]) -> dict[str, Any]:
    generator = default_generator()
    # The ceiling's own process is measured like a service, under the name `ceiling`.
    results: dict[str, Any] = {"ceiling": measure_ceiling(seconds, concurrency, generator)}
    with system_bench(seconds, concurrency, generator, env) as (bench, _):
        system = bench.system
        flows = asyncio.run(api_setup(system, system.create_token("bench", "automation")))
        for scenario in SCENARIOS:
            load = webhook_load(system.url("ingress"), flows, scenario)
            bench.warm_up(load, warmup)
            bench.measure(scenario, load)
    for scenario in SCENARIOS:
        bench.results[scenario].pop("ids", None)
        results[scenario] = bench.results[scenario]
    return results


def table(results: dict[str, Any]) -> list[str]:
    ceiling = results["ceiling"]
    ceiling_cpu = ceiling["cpu_ms_per_request"].get("ceiling", 0.0)
    lines = [
        f"ceiling {ceiling['rps']} req/s, {ceiling_cpu} ms of its process's CPU a request"
        f" (load generator {ceiling['cpu_ms_per_request'].get('loadgen')} ms,"
        f" {ceiling['generator']})",
        "",
        "| CPU ms per request | " + " | ".join(f"{s} (x ceiling)" for s in SCENARIOS) + " |",
        "|---|" + "---|" * len(SCENARIOS),
    ]
    for label, key in HOPS:
        cells = []
        for scenario in SCENARIOS:
            cpu = results[scenario]["cpu_ms_per_request"].get(key)
            cells.append(
                "-"
                if cpu is None
                else f"{cpu:.3f} ({cpu / ceiling_cpu:.1f})"
                if ceiling_cpu
                else f"{cpu:.3f}"
            )
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    totals = []
    for scenario in SCENARIOS:
        cpu = results[scenario]["cpu_ms_per_request"]
        total = sum(cpu.get(key, 0.0) for _, key in HOPS)
        totals.append(f"{total:.3f} ({total / ceiling_cpu:.1f})" if ceiling_cpu else f"{total:.3f}")
    lines.append("| **all** | " + " | ".join(totals) + " |")
    lines.append(
        "| req/s (ratio to ceiling) | "
        + " | ".join(
            f"{results[s]['rps']} ({results[s]['rps'] / ceiling['rps']:.3f})" for s in SCENARIOS
        )
        + " |"
    )
    lines.append(
        "| p50 / p99 ms | "
        + " | ".join(f"{results[s]['p50_ms']} / {results[s]['p99_ms']}" for s in SCENARIOS)
        + " |"
    )
    lines += ["", "| hop: mean items per message | " + " | ".join(SCENARIOS) + " |"]
    lines.append("|---|" + "---|" * len(SCENARIOS))
    hops = sorted({hop for s in SCENARIOS for hop in results[s]["items_per_message"]})
    for hop in hops:
        cells = [
            f"{results[s]['items_per_message'].get(hop, '-')}"
            f" ({results[s]['messages_per_request'].get(hop, 0)} msg/request)"
            for s in SCENARIOS
        ]
        lines.append(f"| {hop} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="FLOWHOOKS_X=VALUE",
        help="a setting for every service (a variant to compare with the default)",
    )
    parser.add_argument("--warmup", type=float, default=8.0, help="unmeasured seconds first")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    env = dict(pair.split("=", 1) for pair in args.env)
    results = measure(args.seconds, args.concurrency, args.warmup, env)
    results["env"] = env
    lines = table(results)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%SZ")
    (RESULTS / f"budget-{stamp}.json").write_text(json.dumps(results, indent=2))
    (RESULTS / f"budget-{stamp}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"written: bench/results/budget-{stamp}.json and .md")


if __name__ == "__main__":
    main()

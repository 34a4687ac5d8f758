"""`python -m bench` (`make bench`): the ceiling, Node-RED when installed, the
architecture alone (bench/pattern.py), then the system, every scenario with the load
generator in its own process; writes `bench/results/<date>.json` and `.md`. Bounded:
every scenario runs a fixed number of seconds; the whole run takes 4-5 minutes on a
2-core machine.

The load generator of the closed loops (50 connections) is `wrk` when it is on PATH
(Debian's package, as in issue 29's figures), else bench/loadgen.py (Python); the
sequential and open-loop scenarios are always bench/loadgen.py. `--loadgen` chooses.
With wrk the ceiling is measured with both, so runs of either can be compared.
Node-RED (optional, like promtool): FLOWHOOKS_BENCH_NODE_RED=/path/to/node-red or
`node-red` on PATH (bench/nodered.py); without it the report says "not installed".

Scenarios (each reported as a ratio to the ceiling measured in the same run):
ceiling, Node-RED, the pattern's sync and async, sync, async (closed loop, then open
loop at half the closed-loop rate: p99 at half of saturation), paused, unauthorized,
xml, runners (sync, and an I/O-bound flow whose `http` step waits 50 ms on a local
endpoint, with 1, 2 and 4 runner processes), debugger (every accepted async request
stored, and the lag until the last one was). Under the sync and async closed loops,
the per-hop CPU budget per request and the mean items per broker message on every hop
(bench/budget.py's table).
"""

import argparse
import asyncio
import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from functools import partial
from typing import Any

from bench import nodered, pattern, wrk
from bench.budget import table as budget_table
from bench.measure import (
    RESULTS,
    SLOW_DELAY_MS,
    SLOW_HOST,
    SMALL_JSON,
    XML_5K,
    Bench,
    api_setup,
    ceiling,
    default_generator,
    measure_server,
    rss_mib,
    stored_count,
    system_bench,
    webhook_load,
)
from bench.pattern import PROCESSES
from harness.system import REPO, free_port

# Issue 29's aims, as ratios to the ceiling of the same run, and p99 at half load.
AIMS = {"sync": 0.35, "async": 0.5}
HALF_LOAD_P99_AIM_MS = 25.0


def measure_peers(args: argparse.Namespace, generator: str) -> dict[str, Any]:
    """The ceiling (also with bench/loadgen.py when wrk drives the closed loops), then
    Node-RED where installed: what the system is compared with, in the same run."""
    results: dict[str, Any] = {}
    with ceiling() as (pid, url):
        load = {"url": url, "body": SMALL_JSON}
        results["ceiling"] = measure_server(
            "ceiling", pid, load, args.seconds, args.concurrency, generator
        )
        if generator != "python":
            results["ceiling_python_loadgen"] = measure_server(
                "ceiling", pid, load, args.seconds, args.concurrency, "python"
            )
    results["node_red"] = nodered.measure(args.seconds, args.concurrency, generator, args.warmup)
    # The architecture with none of flowhooks' work (bench/pattern.py): how far the aims,
    # ratios to the bare ceiling, are reachable at all on the machine of this run.
    for kind, result in pattern.measure(
        args.seconds, args.concurrency, generator, args.warmup
    ).items():
        results[f"pattern_{kind}"] = result
    return results


def wait_stored(database_url: str, flow_id: str, before: int, accepted: int) -> dict[str, Any]:
    """Every accepted async request stored: waits (at most 2 minutes) until the
    debugger holds as many new records of the flow as requests were answered 200.
    A request still in flight when the load generator stopped may be stored without
    having been counted, so `stored` may pass `accepted` by up to the concurrency."""
    load_ended = time.monotonic()
    stored = 0
    while time.monotonic() - load_ended < 120:
        stored = asyncio.run(stored_count(database_url, flow_id)) - before
        if stored >= accepted:
            break
        time.sleep(0.2)
    found = {
        "accepted": accepted,
        "stored": stored,
        "all_stored": stored >= accepted,
        "lag_after_load_s": round(time.monotonic() - load_ended, 2),
    }
    print(
        f"debugger                 accepted {accepted} stored {stored} "
        f"lag {found['lag_after_load_s']} s",
        flush=True,
    )
    return found


def run_scenarios(bench: Bench, database_url: str, slow_port: int, warmup: float) -> dict[str, Any]:
    system = bench.system
    rest = {k: rss_mib(p) for k, p in bench.service_pids().items()}
    flows = asyncio.run(api_setup(system, system.create_token("bench", "automation"), slow_port))
    target = partial(webhook_load, system.url("ingress"), flows)

    # Unmeasured: the runner starts the workers the load needs (their start-up CPU
    # would be charged to the first scenario). The sync flow only, so that the async
    # flow's records are the measured ones.
    bench.warm_up(target("sync"), warmup)
    # One request at a time: the round trip of a single sync webhook.
    bench.measure(
        "sync_sequential_500", target("sync", concurrency=1, max_requests=500, seconds=60)
    )
    bench.measure("sync", target("sync"))
    before = asyncio.run(stored_count(database_url, flows["async"]))
    accepted = bench.measure("async", target("async"))["statuses"].get("200", 0)
    bench.results["debugger"] = wait_stored(database_url, flows["async"], before, accepted)
    # p99 at half of saturation: an open loop at half the closed loop's rate.
    for kind in ("sync", "async"):
        half = max(1.0, bench.results[kind]["rps"] / 2)
        bench.measure(f"{kind}_open_loop_half", target(kind, rate=half))
    bench.measure("paused", target("paused"))
    bench.measure(
        "unauthorized", {**target("sync"), "headers": {"Authorization": "Bearer fhp_wrong"}}
    )
    bench.measure(
        "xml_5k_sync", {**target("xml"), "body": XML_5K, "content_type": "application/xml"}
    )
    # An I/O-bound flow (50 ms of waiting a run): runners add slots, so throughput
    # should grow with them; a CPU-bound flow is limited by the two cores.
    io_load = {"concurrency": 400}
    bench.measure("io_1_runner", target("io", **io_load))
    for runners in (2, 4):
        while len(system.processes["runner"]) < runners:
            system.start("runner")
        bench.measure(f"sync_{runners}_runners", target("sync"))
        bench.measure(f"io_{runners}_runners", target("io", **io_load))
    bench.results["rss_mib_at_rest"] = rest
    return bench.results


def summary(results: dict[str, Any]) -> list[str]:
    """Issue 29's figures first: the generator, the ceiling, Node-RED, the aims."""
    generator = results["load_generator"]
    ceiling = results["ceiling"]
    lines = [f"load generator of the closed loops: {generator['closed_loop']}"]
    if "ceiling_python_loadgen" in results:
        python = results["ceiling_python_loadgen"]["rps"]
        lines.append(
            f"ceiling: {ceiling['rps']} req/s with wrk, {python} with bench/loadgen.py (Python)"
        )
    else:
        lines.append(f"ceiling: {ceiling['rps']} req/s")
    node_red = results["node_red"]
    if not node_red.get("installed"):
        lines.append("Node-RED: not installed")
    elif "rps" not in node_red:
        lines.append(f"Node-RED: not measured ({node_red.get('error')})")
    else:
        lines.append(
            f"Node-RED ({node_red['version']}): {node_red['rps']} req/s,"
            f" ratio {node_red['ratio_to_ceiling']},"
            f" p50 {node_red['p50_ms']} / p99 {node_red['p99_ms']} ms, {node_red['statuses']}"
        )
    for kind, aim in AIMS.items():
        found, floor = results[kind], results[f"pattern_{kind}"]
        lines.append(
            f"{kind}: ratio {found['ratio_to_ceiling']} (aim ≥ {aim}); the architecture alone"
            f" (bench/pattern.py) {floor['ratio_to_ceiling']}, so flowhooks reaches"
            f" {found['rps'] / floor['rps']:.2f} of its own architecture's rate"
        )
    for kind in AIMS:
        half = results[f"{kind}_open_loop_half"]
        lines.append(
            f"{kind} p99 at half of saturation ({half['rps']} req/s offered open loop):"
            f" {half['p99_ms']} ms (aim < {HALF_LOAD_P99_AIM_MS:g}), p50 {half['p50_ms']} ms"
        )
    debugger = results["debugger"]
    lines.append(
        f"every accepted async request stored: {'yes' if debugger['all_stored'] else 'NO'}"
        f" (accepted {debugger['accepted']}, stored {debugger['stored']},"
        f" the last {debugger['lag_after_load_s']} s after the load)"
    )
    return lines


def scenario_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "| scenario | load generator | req/s | ratio to ceiling | p50 ms | p99 ms | statuses "
        "| CPU ms per request (ingress or the peer's process / runner with workers "
        "/ debugger / RabbitMQ / PostgreSQL) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, result in results.items():
        if isinstance(result, dict) and "rps" in result:
            cpu = result.get("cpu_ms_per_request", {})
            # The ceiling's and Node-RED's own process stand in the ingress's place, the
            # pattern's worker and sink in the runner's and the debugger's.
            cpu = {
                "ingress": cpu.get("ceiling", cpu.get("node_red", cpu.get("pattern_ingress"))),
                "runner": cpu.get("pattern_worker"),
                "debugger": cpu.get("pattern_sink"),
                **cpu,
            }
            per_service = " / ".join(
                str(cpu.get(service, "-"))
                for service in ("ingress", "runner", "debugger", "rabbitmq", "postgresql")
            )
            lines.append(
                f"| {name} | {result['generator']} | {result['rps']} "
                f"| {result['ratio_to_ceiling']} | {result['p50_ms']} | {result['p99_ms']} "
                f"| {result['statuses']} | {per_service} |"
            )
    return lines


# Each flowhooks hop beside the pattern's process doing its part (bench/pattern.py).
BESIDE_PATTERN = (
    ("ingress", ("ingress",), ("pattern_ingress",)),
    ("runner (supervisor and workers) / worker", ("runner",), ("pattern_worker",)),
    ("debugger and PostgreSQL / sink", ("debugger", "postgresql"), ("pattern_sink",)),
    ("RabbitMQ", ("rabbitmq",), ("rabbitmq",)),
)


def pattern_table(results: dict[str, Any]) -> list[str]:
    """CPU ms a request of each hop, flowhooks beside the architecture alone, in the
    same run: what flowhooks' own work costs on each hop."""
    lines = [
        "| CPU ms a request: flowhooks / the pattern (x) | sync | async |",
        "|---|---|---|",
    ]
    everything = sum((hop[1] for hop in BESIDE_PATTERN), ())
    rows = [*BESIDE_PATTERN, ("all", everything, (*PROCESSES, "rabbitmq"))]
    for label, ours, theirs in rows:
        cells = []
        for kind in ("sync", "async"):
            found = results[kind]["cpu_ms_per_request"]
            floor = results[f"pattern_{kind}"]["cpu_ms_per_request"]
            mine = sum(found.get(key, 0.0) for key in ours)
            base = sum(floor.get(key, 0.0) for key in theirs)
            ratio = f" ({mine / base:.1f})" if base else ""
            cells.append(f"{mine:.3f} / {base:.3f}{ratio}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument(
        "--loadgen",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="the closed loops' load generator (auto: wrk when on PATH)",
    )
    parser.add_argument(
        "--warmup", type=float, default=4.0, help="unmeasured seconds before the system's"
    )
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="run without the debugger's queued/running events",
    )
    args = parser.parse_args()
    generator = default_generator() if args.loadgen == "auto" else args.loadgen
    if generator == "wrk" and wrk.binary() is None:
        raise SystemExit("--loadgen wrk: wrk is not on PATH (apt-get install wrk)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "load_generator": {
            "closed_loop": wrk.version() if generator == "wrk" else "bench/loadgen.py (Python)",
            "sequential_and_open_loop": "bench/loadgen.py (Python)",
        }
    }
    results |= measure_peers(args, generator)
    slow_port = free_port()
    slow = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.slow_endpoint",
            SLOW_HOST,
            str(slow_port),
            str(SLOW_DELAY_MS),
        ],
        cwd=REPO,
    )
    progress = str(not args.no_progress).lower()
    env = {
        "FLOWHOOKS_INGRESS_RECORD_QUEUED": progress,
        "FLOWHOOKS_RUNNER_RECORD_STARTED": progress,
        "FLOWHOOKS_RUNNER_HTTP_ALLOW_NETWORKS": f'["{SLOW_HOST}/32"]',
    }
    try:
        with system_bench(args.seconds, args.concurrency, generator, env) as (bench, database):
            results |= run_scenarios(bench, database, slow_port, args.warmup)
    finally:
        slow.terminate()
    base = results["ceiling"]["rps"]
    for result in results.values():
        if isinstance(result, dict) and "rps" in result:
            result["ratio_to_ceiling"] = round(result["rps"] / base, 3)
    lines = [
        *summary(results),
        "",
        *scenario_table(results),
        "",
        "Each hop beside the architecture alone (bench/pattern.py):",
        "",
        *pattern_table(results),
        "",
        "Per-hop CPU budget per request and items per broker message (bench/budget.py):",
        "",
        *budget_table(results),
    ]
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%SZ")
    (RESULTS / f"{stamp}.json").write_text(json.dumps(results, indent=2))
    (RESULTS / f"{stamp}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"written: bench/results/{stamp}.json and .md")


if __name__ == "__main__":
    main()

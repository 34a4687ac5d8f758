"""`python -m bench` (`make bench`): start the ceiling and the system, run every
scenario with the load generator in its own process, write
`bench/results/<date>.json` and `.md`. Bounded: every scenario runs a fixed number of
seconds; the whole run takes a few minutes on a 2-core machine.

Scenarios (each reported as a ratio to the ceiling measured in the same run):
ceiling, sync, async (closed loop and open loop at half the closed-loop rate), paused,
unauthorized, xml, runners (sync, and an I/O-bound flow whose `http` step waits 50 ms
on a local endpoint, with 1, 2 and 4 runner processes), debugger (every accepted async
request stored, and the lag until the last one was).
"""

import argparse
import asyncio
import json
import re
import resource
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from harness.infra import fresh_database, fresh_vhost
from harness.system import REPO, System, free_port

RESULTS = REPO / "bench" / "results"
SMALL_JSON = '{"kind": "myResult", "company_id": 123456, "user_id": 789123}'
XML_5K = (
    "<order>"
    + "".join(f'<item id="{i}"><sku>SKU-{i:05d}</sku><qty>{i % 7}</qty></item>' for i in range(110))
    + "</order>"
)
SYNC_FLOW = {
    "name": "bench sync",
    "status": "live",
    "webhook": {
        "ref_id": "web1",
        "response": {
            "status_code": 200,
            "body": (
                '{"valid": {% if res1.value == "myResult" %}"{{ res1.value }}"'
                "{% else %}false{% endif %}}"
            ),
        },
    },
    "steps": [{"ref_id": "res1", "type": "template", "template": "{{ web1.kind }}"}],
}


XML_FLOW = {
    "name": "bench xml",
    "status": "live",
    "webhook": {
        "ref_id": "web1",
        "response": {"status_code": 200, "body": '{"items": {{ count.value }}}'},
    },
    "steps": [
        {"ref_id": "count", "type": "template", "template": "{{ web1.order.item | length }}"}
    ],
}

# The I/O-bound flow: one `http` step to an endpoint that answers after 50 ms.
SLOW_HOST = "127.0.0.2"
SLOW_DELAY_MS = 50


def io_flow(port: int) -> dict[str, Any]:
    return {
        "name": "bench io",
        "status": "live",
        "webhook": {
            "ref_id": "web1",
            "response": {"status_code": 200, "body": '{"remote": {{ call.body.ok | tojson }}}'},
        },
        "steps": [
            {
                "ref_id": "call",
                "type": "http",
                "method": "GET",
                "url": f"http://{SLOW_HOST}:{port}/slow",
            }
        ],
    }


def loadgen(spec: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.loadgen", json.dumps(spec)],
        cwd=REPO,
        capture_output=True,
        check=True,
        timeout=float(spec.get("seconds", 5)) + 90,
    )
    return dict(json.loads(done.stdout))


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def own_cpu_seconds(pid: int) -> float:
    """CPU time of one process (its threads), not of its children."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0  # gone meanwhile (a worker that was replaced)
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks


def cpu_seconds(pid: int) -> float:
    """CPU time of a service: its process and its children (the runner's workers)."""
    return own_cpu_seconds(pid) + sum(cpu_seconds(child) for child in _children(pid))


def backends_cpu_seconds(postmaster: int, database: str) -> float:
    """CPU time of the PostgreSQL backends serving `database` (the server is shared with
    other databases; its WAL writer and checkpointer, shared too, are not counted)."""
    total = 0.0
    for child in _children(postmaster):
        try:
            title = Path(f"/proc/{child}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if f" {database} " in title:
            total += own_cpu_seconds(child)
    return total


BATCH_LINE = re.compile(r'^flowhooks_broker_batch_(messages|items)_total\{hop="([^"]+)"\} (\S+)$')


def batch_counts(ops_url: str) -> dict[tuple[str, str], float]:
    """A service's batched messages and items sent so far, by (kind, hop), from its
    `/metrics` (shared/metrics.py `BatchCounters`); empty when it has none."""
    try:
        # A loopback http URL of our own (harness/system.py).
        with urllib.request.urlopen(f"{ops_url}/metrics", timeout=10) as answer:  # noqa: S310
            text = answer.read().decode()
    except OSError:
        return {}
    counts: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        found = BATCH_LINE.match(line)
        if found:
            counts[(found[1], found[2])] = float(found[3])
    return counts


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def broker_pid() -> int | None:
    """The local RabbitMQ node's Erlang VM (the broker every scenario here uses)."""
    try:
        done = subprocess.run(
            ["rabbitmqctl", "-q", "eval", "os:getpid()."],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return int(done.stdout.strip().strip('"'))
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None


async def postgresql_pid(database_url: str) -> int | None:
    """The postmaster of the database's server; its children are every backend."""
    conn = await asyncpg.connect(database_url)
    try:
        directory = await conn.fetchval("SHOW data_directory")
    except asyncpg.InsufficientPrivilegeError:
        return None
    finally:
        await conn.close()
    try:
        return int((Path(directory) / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


class Bench:
    def __init__(
        self,
        system: System,
        seconds: float,
        concurrency: int,
        infrastructure: dict[str, int] | None = None,
        database: str | None = None,
    ) -> None:
        self.system = system
        self.seconds = seconds
        self.concurrency = concurrency
        # RabbitMQ's and PostgreSQL's processes, measured like a service (on this machine
        # they serve nothing else while the bench runs).
        self.infrastructure = infrastructure or {}
        # When set, PostgreSQL's CPU is that of this database's backends only.
        self.database = database
        self.results: dict[str, Any] = {}

    def service_pids(self) -> dict[str, int]:
        return {
            f"{s.name}:{s.port}": s.process.pid
            for services in self.system.processes.values()
            for s in services
        }

    def pids(self) -> dict[str, int]:
        infrastructure = {f"{name}:0": pid for name, pid in self.infrastructure.items()}
        return {**self.service_pids(), **infrastructure}

    def own_cpu(self) -> dict[str, float]:
        """The runner supervisors' own CPU, without their workers; PostgreSQL's, of the
        system's own database when it is known."""
        own = {
            f"runner_supervisor:{s.port}": own_cpu_seconds(s.process.pid)
            for s in self.system.processes.get("runner", [])
        }
        postmaster = self.infrastructure.get("postgresql")
        if self.database and postmaster is not None:
            own["postgresql:0"] = backends_cpu_seconds(postmaster, self.database)
        return own

    def batches(self) -> dict[tuple[str, str], float]:
        """Batched messages and items sent so far by every service, by (kind, hop)."""
        total: dict[tuple[str, str], float] = {}
        for services in self.system.processes.values():
            for service in services:
                for key, value in batch_counts(service.ops_url).items():
                    total[key] = total.get(key, 0.0) + value
        return total

    def measure(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        batches_before = self.batches()
        before = {k: cpu_seconds(p) for k, p in self.pids().items()} | self.own_cpu()
        # The load generator is the only child waited for meanwhile: its CPU is the
        # difference in the finished children's usage.
        children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        result = loadgen({"seconds": self.seconds, "concurrency": self.concurrency, **spec})
        children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        after = {k: cpu_seconds(p) for k, p in self.pids().items()} | self.own_cpu()
        batches_after = self.batches()
        count = max(1, result["count"])
        # Per service, summed over its replicas (the runners of the scaling scenarios).
        per_service: dict[str, float] = {}
        for key in before:
            service = key.split(":")[0]
            per_service[service] = per_service.get(service, 0.0) + after.get(key, 0.0) - before[key]
        if "runner_supervisor" in per_service:
            per_service["runner_workers"] = per_service["runner"] - per_service["runner_supervisor"]
        per_service["loadgen"] = (
            children_after.ru_utime
            + children_after.ru_stime
            - children_before.ru_utime
            - children_before.ru_stime
        )
        # Mean items per message on every hop that sent messages during the scenario.
        result["items_per_message"] = {
            hop: round(
                (batches_after.get(("items", hop), 0.0) - batches_before.get(("items", hop), 0.0))
                / sent,
                2,
            )
            for (kind, hop), value in sorted(batches_after.items())
            if kind == "messages" and (sent := value - batches_before.get((kind, hop), 0.0)) > 0
        }
        result["messages_per_request"] = {
            hop: round((value - batches_before.get(("messages", hop), 0.0)) / count, 4)
            for (kind, hop), value in sorted(batches_after.items())
            if kind == "messages" and value > batches_before.get((kind, hop), 0.0)
        }
        result["cpu_ms_per_request"] = {
            service: round(seconds * 1000 / count, 3) for service, seconds in per_service.items()
        }
        result["rss_mib_under_load"] = {
            k.split(":")[0]: rss_mib(p) for k, p in self.service_pids().items()
        }
        ids = result.pop("ids", [])
        self.results[name] = result
        print(
            f"{name:24} {result['rps']:>9} req/s  p50 {result['p50_ms']:>7} ms  "
            f"p99 {result['p99_ms']:>7} ms  {result['statuses']}",
            flush=True,
        )
        result["ids_count"] = len(ids)
        return {**result, "ids": ids}


async def api_setup(system: System, token: str, slow_port: int | None = None) -> dict[str, str]:
    """Flows for the scenarios; returns their ids and webhook tokens."""
    headers = {"Authorization": f"Bearer {token}"}
    runner = system.url("runner")
    out: dict[str, str] = {}
    async with aiohttp.ClientSession() as session:
        for key, definition in (
            ("sync", SYNC_FLOW),
            (
                "async",
                {
                    **SYNC_FLOW,
                    "name": "bench async",
                    "webhook": {**SYNC_FLOW["webhook"], "async": True},
                },
            ),
            ("paused", {**SYNC_FLOW, "name": "bench paused", "status": "paused"}),
            ("xml", XML_FLOW),
            *((("io", io_flow(slow_port)),) if slow_port is not None else ()),
        ):
            async with session.post(f"{runner}/v1/flows", json=definition, headers=headers) as r:
                flow = await r.json()
                assert r.status == 201, flow
            async with session.get(f"{runner}/v1/flows/{flow['id']}/webhook", headers=headers) as r:
                out[key] = flow["id"]
                out[f"{key}_token"] = (await r.json())["token"]
    return out


async def stored_count(database_url: str, flow_id: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM debugger.requests WHERE flow_id = $1::uuid", flow_id
            )
        )
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="run without the debugger's queued/running events",
    )
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)

    ceiling_port = free_port()
    ceiling = subprocess.Popen([sys.executable, "-m", "bench.ceiling", str(ceiling_port)], cwd=REPO)
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
    time.sleep(1.5)
    with fresh_vhost() as amqp_url, fresh_database() as database_url:
        system = System(
            amqp_url,
            database_url,
            extra_env={
                "FLOWHOOKS_LOG_LEVEL": "warning",
                "FLOWHOOKS_INGRESS_FLOW_RATE_LIMIT_PER_S": "0",
                "FLOWHOOKS_INGRESS_RECORD_QUEUED": str(not args.no_progress).lower(),
                "FLOWHOOKS_RUNNER_RECORD_STARTED": str(not args.no_progress).lower(),
                "FLOWHOOKS_RUNNER_HTTP_ALLOW_NETWORKS": f'["{SLOW_HOST}/32"]',
            },
        )
        infrastructure = {
            name: pid
            for name, pid in (
                ("rabbitmq", broker_pid()),
                ("postgresql", asyncio.run(postgresql_pid(database_url))),
            )
            if pid is not None
        }
        bench = Bench(system, args.seconds, args.concurrency, infrastructure)
        try:
            bench.measure(
                "ceiling",
                {"url": f"http://127.0.0.1:{ceiling_port}/v1/flow-webhook/x", "body": SMALL_JSON},
            )
            ceiling.terminate()
            system.start_all()
            rest = {k: rss_mib(p) for k, p in bench.service_pids().items()}
            token = system.create_token("bench", "automation")
            flows = asyncio.run(api_setup(system, token, slow_port))
            ingress = system.url("ingress")

            def target(key: str, token_key: str | None = None, **extra: Any) -> dict[str, Any]:
                return {
                    "url": f"{ingress}/v1/flow-webhook/{flows[key]}",
                    "headers": {"Authorization": f"Bearer {flows[token_key or key + '_token']}"},
                    "body": SMALL_JSON,
                    **extra,
                }

            # One request at a time: the round trip of a single sync webhook.
            bench.measure(
                "sync_sequential_500", target("sync", concurrency=1, max_requests=500, seconds=60)
            )
            bench.measure("sync", target("sync"))
            accepted = bench.measure("async", target("async", collect_ids=True))
            # Debugger lag: from the end of the async load until everything is stored.
            load_ended = time.monotonic()
            expected = accepted["statuses"].get("200", 0)
            stored = 0
            while time.monotonic() - load_ended < 120:
                stored = asyncio.run(stored_count(database_url, flows["async"]))
                if stored >= expected:
                    break
                time.sleep(0.2)
            bench.results["debugger"] = {
                "accepted": expected,
                "stored": stored,
                "lag_after_load_s": round(time.monotonic() - load_ended, 2),
            }
            print(
                f"debugger                 accepted {expected} stored {stored} "
                f"lag {bench.results['debugger']['lag_after_load_s']} s",
                flush=True,
            )
            half = max(1.0, bench.results["async"]["rps"] / 2)
            bench.measure("async_open_loop_half", target("async", rate=half))
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
        finally:
            system.stop_all()
            slow.terminate()
            if ceiling.poll() is None:
                ceiling.terminate()
    base = bench.results["ceiling"]["rps"]
    for result in bench.results.values():
        if isinstance(result, dict) and "rps" in result:
            result["ratio_to_ceiling"] = round(result["rps"] / base, 3)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%SZ")
    (RESULTS / f"{stamp}.json").write_text(json.dumps(bench.results, indent=2))
    lines = [
        "| scenario | req/s | ratio to ceiling | p50 ms | p99 ms | statuses "
        "| CPU ms per request (ingress / runner with workers / debugger "
        "/ RabbitMQ / PostgreSQL) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, result in bench.results.items():
        if isinstance(result, dict) and "rps" in result:
            cpu = result.get("cpu_ms_per_request", {})
            per_service = " / ".join(
                str(cpu.get(service, "-"))
                for service in (*("ingress", "runner", "debugger"), "rabbitmq", "postgresql")
            )
            lines.append(
                f"| {name} | {result['rps']} | {result['ratio_to_ceiling']} | "
                f"{result['p50_ms']} | {result['p99_ms']} | {result['statuses']} "
                f"| {per_service} |"
            )
    debugger = bench.results.get("debugger", {})
    lines.append(
        f"\ndebugger: accepted {debugger.get('accepted')}, stored {debugger.get('stored')},"
        f" the last {debugger.get('lag_after_load_s')} s after the load"
    )
    (RESULTS / f"{stamp}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"written: bench/results/{stamp}.json and .md")


if __name__ == "__main__":
    main()

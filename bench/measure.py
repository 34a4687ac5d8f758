"""What the system benchmarks share (`python -m bench`, `bench.budget`, `bench.compare`):
the bench's flows, the load generators (wrk when installed, else bench/loadgen.py),
CPU per request per process from /proc, items per broker message from the services'
batch counters, and single-process servers (the ceiling, Node-RED) measured alike."""

import asyncio
import json
import re
import resource
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from bench import wrk
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
    """bench/loadgen.py (Python) in its own process."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.loadgen", json.dumps(spec)],
        cwd=REPO,
        capture_output=True,
        check=True,
        timeout=float(spec.get("seconds", 5)) + 90,
    )
    return dict(json.loads(done.stdout))


def default_generator() -> str:
    return "wrk" if wrk.binary() else "python"


def run_load(spec: dict[str, Any], generator: str) -> dict[str, Any]:
    """The load with `generator` ("wrk" or "python") where it can run it, else with
    bench/loadgen.py; the result says which ran it."""
    if generator == "wrk" and wrk.suits(spec):
        return wrk.run(spec)
    return {**loadgen(spec), "generator": "python"}


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
        generator: str | None = None,
    ) -> None:
        self.system = system
        self.seconds = seconds
        self.concurrency = concurrency
        self.generator = generator or default_generator()
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

    def warm_up(self, spec: dict[str, Any], seconds: float) -> None:
        """Unmeasured load first: the runner starts the worker processes a load needs
        when it arrives (0.3-0.5 s of CPU each), which would otherwise be charged to
        the first scenario's requests (docs/performance.md, issue 29)."""
        if seconds > 0:
            run_load({"concurrency": self.concurrency, **spec, "seconds": seconds}, self.generator)

    def measure(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        batches_before = self.batches()
        before = {k: cpu_seconds(p) for k, p in self.pids().items()} | self.own_cpu()
        # The load generator is the only child waited for meanwhile: its CPU is the
        # difference in the finished children's usage.
        children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        result = run_load(
            {"seconds": self.seconds, "concurrency": self.concurrency, **spec}, self.generator
        )
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
            f"p99 {result['p99_ms']:>7} ms  {result['statuses']}  ({result['generator']})",
            flush=True,
        )
        result["ids_count"] = len(ids)
        return {**result, "ids": ids}


async def create_flows(
    system: System, token: str, definitions: dict[str, dict[str, Any]]
) -> dict[str, str]:
    """The flows by key: returns `{key: id, key_token: webhook token}`."""
    headers = {"Authorization": f"Bearer {token}"}
    runner = system.url("runner")
    out: dict[str, str] = {}
    async with aiohttp.ClientSession() as session:
        for key, definition in definitions.items():
            async with session.post(f"{runner}/v1/flows", json=definition, headers=headers) as r:
                flow = await r.json()
                assert r.status == 201, flow
            async with session.get(f"{runner}/v1/flows/{flow['id']}/webhook", headers=headers) as r:
                out[key] = flow["id"]
                out[f"{key}_token"] = (await r.json())["token"]
    return out


async def api_setup(system: System, token: str, slow_port: int | None = None) -> dict[str, str]:
    """Flows for the scenarios; returns their ids and webhook tokens."""
    definitions: dict[str, dict[str, Any]] = {
        "sync": SYNC_FLOW,
        "async": {
            **SYNC_FLOW,
            "name": "bench async",
            "webhook": {**SYNC_FLOW["webhook"], "async": True},  # type: ignore[dict-item]
        },
        "paused": {**SYNC_FLOW, "name": "bench paused", "status": "paused"},
        "xml": XML_FLOW,
    }
    if slow_port is not None:
        definitions["io"] = io_flow(slow_port)
    return await create_flows(system, token, definitions)


def webhook_load(ingress: str, flows: dict[str, str], key: str, **extra: Any) -> dict[str, Any]:
    """A load on the webhook of flow `key` of api_setup's `flows`, with its token."""
    return {
        "url": f"{ingress}/v1/flow-webhook/{flows[key]}",
        "headers": {"Authorization": f"Bearer {flows[key + '_token']}"},
        "body": SMALL_JSON,
        **extra,
    }


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


def wait_listening(port: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@contextmanager
def ceiling() -> Iterator[tuple[int, str]]:
    """The bare-aiohttp ceiling (bench/ceiling.py) running: its pid and webhook URL."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "bench.ceiling", str(port)], cwd=REPO)
    try:
        wait_listening(port)
        yield process.pid, f"http://127.0.0.1:{port}/v1/flow-webhook/x"
    finally:
        process.terminate()
        process.wait()


def measure_server(
    name: str,
    pid: int,
    load: dict[str, Any],
    seconds: float,
    concurrency: int,
    generator: str,
    warmup: float = 0.0,
) -> dict[str, Any]:
    """A single-process server (the ceiling, Node-RED) under a closed loop: its
    answers, its process's CPU per request (under `name`) and the load generator's."""
    server = Bench(System("", ""), seconds, concurrency, {name: pid}, generator=generator)
    server.warm_up(load, warmup)
    result = server.measure(name, load)
    result.pop("ids", None)
    return result


def measure_ceiling(seconds: float, concurrency: int, generator: str) -> dict[str, Any]:
    with ceiling() as (pid, url):
        load = {"url": url, "body": SMALL_JSON}
        return measure_server("ceiling", pid, load, seconds, concurrency, generator)


@contextmanager
def system_bench(
    seconds: float,
    concurrency: int,
    generator: str | None = None,
    env: dict[str, str] | None = None,
    repo: Path = REPO,
) -> Iterator[tuple[Bench, str]]:
    """The four services of `repo` started against a fresh vhost and database (rate
    limit off), measured with RabbitMQ's VM and the database's own PostgreSQL
    backends: the Bench and the database's URL."""
    with fresh_vhost() as amqp_url, fresh_database() as database_url:
        system = System(
            amqp_url,
            database_url,
            repo=repo,
            extra_env={
                "FLOWHOOKS_LOG_LEVEL": "warning",
                "FLOWHOOKS_INGRESS_FLOW_RATE_LIMIT_PER_S": "0",
                **(env or {}),
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
        database = database_url.rsplit("/", 1)[-1]
        bench = Bench(system, seconds, concurrency, infrastructure, database, generator)
        try:
            system.start_all()
            yield bench, database_url
        finally:
            system.stop_all()

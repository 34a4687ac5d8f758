"""`/metrics` on each service's ops port, after known traffic: the webhook counters by
outcome and mode are exact, runs and RPCs are timed, the access cache counts its hits
and misses, queue depth is read, and every service exports the process collectors."""

import asyncio
from collections.abc import Iterator

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.client import Api, eventually, ok_or_failing_flow
from harness.system import System, running_system
from shared.messaging import topology
from shared.messaging.contracts import AUTHORIZE_WEBHOOK

pytestmark = pytest.mark.e2e

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def system() -> Iterator[System]:
    """Its own system: the counters must hold this module's traffic only; queue depth
    read every second rather than every 15."""
    with running_system(FLOWHOOKS_QUEUE_DEPTH_INTERVAL_S="1") as running:
        yield running


async def scrape(session: aiohttp.ClientSession, system: System, service: str) -> Series:
    """Every series of every process of `service`, summed over the processes."""
    series: Series = {}
    for process in system.processes[service]:
        async with session.get(f"{process.ops_url}/metrics") as answer:
            assert answer.status == 200
            text = await answer.text()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                key = (sample.name, frozenset(sample.labels.items()))
                series[key] = series.get(key, 0.0) + sample.value
    return series


def value(series: Series, name: str, **labels: str) -> float | None:
    return series.get((name, frozenset(labels.items())))


def with_name(series: Series, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in series.items() if n == name}


async def test_metrics_after_known_traffic(api: Api) -> None:
    system, session = api.system, api.session
    sync_id, sync_token = await ok_or_failing_flow(api, "metered")
    async_id, async_token = await ok_or_failing_flow(api, "metered", mode_async=True)
    # Let the flows' access events settle: one arriving between two requests would
    # evict the cached answer and turn an expected hit into a miss.
    await asyncio.sleep(1.0)

    status, _, _ = await api.send(sync_id, sync_token, json={"ok": True})
    assert status == 200
    status, _, _ = await api.send(sync_id, sync_token, json={"ok": True})  # cache hit
    assert status == 200
    status, _, _ = await api.send(sync_id, sync_token, json={"ok": False})  # fails, hit
    assert status >= 400
    status, _, _ = await api.send(async_id, async_token, json={"ok": True})
    assert status == 200
    status, _, _ = await api.send(sync_id, "not-a-token", json={"ok": True})
    assert status == 401

    ingress = await scrape(session, system, "ingress")
    assert with_name(ingress, "flowhooks_webhook_requests_total") == {
        frozenset({("outcome", "succeeded"), ("mode", "sync")}): 2.0,
        frozenset({("outcome", "failed"), ("mode", "sync")}): 1.0,
        frozenset({("outcome", "queued"), ("mode", "async")}): 1.0,
        frozenset({("outcome", "unauthorized"), ("mode", "unknown")}): 1.0,
    }
    # Misses: the first call of each (flow, bearer): sync, async, the bad token.
    assert value(ingress, "flowhooks_access_cache_total", result="hit") == 2.0
    assert value(ingress, "flowhooks_access_cache_total", result="miss") == 3.0
    # Each miss is one RPC to auth, timed.
    method = AUTHORIZE_WEBHOOK.method
    assert value(ingress, "flowhooks_rpc_duration_seconds_count", method=method) == 3.0
    assert (value(ingress, "flowhooks_rpc_duration_seconds_sum", method=method) or 0) > 0

    async def runs_timed() -> Series | None:
        runner = await scrape(session, system, "runner")
        count = "flowhooks_run_duration_seconds_count"
        done = value(runner, count, outcome="succeeded") == 3.0  # the async one too
        return runner if done and value(runner, count, outcome="failed") == 1.0 else None

    runner = await eventually(runs_timed, timeout_s=15)
    assert (value(runner, "flowhooks_run_duration_seconds_sum", outcome="succeeded") or 0) > 0
    assert value(runner, "flowhooks_runner_workers_killed_total") == 0.0
    assert value(runner, "flowhooks_broker_publish_failures_total") == 0.0

    async def queue_depths() -> Series | None:
        runner = await scrape(session, system, "runner")
        known = {dict(labels)["queue"] for labels in with_name(runner, "flowhooks_queue_messages")}
        return runner if topology.SYNC_RUNS.name in known else None

    runner = await eventually(queue_depths, timeout_s=10)
    assert topology.ASYNC_RUNS.name in {
        dict(labels)["queue"] for labels in with_name(runner, "flowhooks_queue_messages")
    }

    async def ingested() -> Series | None:
        debugger = await scrape(session, system, "debugger")
        lagged = value(debugger, "flowhooks_debugger_ingest_lag_seconds_count") or 0
        return debugger if lagged >= 4 else None  # the four requests that ran

    debugger = await eventually(ingested, timeout_s=15)
    assert value(debugger, "flowhooks_dead_lettered_runs_total", reason="delivery_limit") == 0.0
    assert (
        value(debugger, "flowhooks_queue_messages", queue=topology.DEBUGGER_EVENTS.name) is not None
    )

    for service in ("ingress", "auth", "runner", "debugger"):
        series = await scrape(session, system, service)
        for name in ("process_cpu_seconds_total", "process_resident_memory_bytes"):
            assert (value(series, name) or 0) > 0, (service, name)
        assert with_name(series, "python_info"), service
        assert value(series, "flowhooks_broker_connected") == 1.0, service

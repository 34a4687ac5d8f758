"""Isolation at the queues (issue 20: "Async head-of-line", "Unbounded queues"): one
workspace's async backlog neither holds the runner's prefetch window that another's
runs are queued behind, nor grows past its queued bounds.

The runner here is small on purpose: 2 slots per worker, a fifth of the (at most 12)
workers per workspace (2 workers: 4 runs at once) and a prefetch window of 8 async
messages, so that a hostile workspace floods it with a few dozen requests instead of
hundreds. A's runs hang on an `http` step to a local endpoint until the test releases
them. The queues' own backstops (a broker policy) are in
tests/integration/test_parked_runs.py."""

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aio_pika
import orjson
import pytest
from aiohttp import web

from harness.client import Api, eventually
from harness.receiver import serving
from harness.system import System, running_system
from services.ingress.backlog import QUEUED_RETRY_AFTER_S
from shared.messaging import naming

pytestmark = pytest.mark.e2e

ENDPOINT_HOST = "127.0.0.2"
# The contract's bound on another workspace's async run: started and done within it.
BOUND_S = 2.0
QUEUED_BYTES = 2_500_000
FINAL = frozenset({"succeeded", "failed", "timeout", "expired", "rejected"})


@pytest.fixture(scope="module")
def system() -> Iterator[System]:
    with running_system(
        FLOWHOOKS_RUNNER_HTTP_ALLOW_NETWORKS=f'["{ENDPOINT_HOST}/32"]',
        # Three processes started with the runner: A's share is two, so B's first run
        # finds one ready (a process started on demand would be a wait of its own).
        FLOWHOOKS_RUNNER_WORKERS="3",
        FLOWHOOKS_RUNNER_WORKER_SLOTS="2",
        FLOWHOOKS_RUNNER_WORKSPACE_SHARE="0.2",
        FLOWHOOKS_RUNNER_ASYNC_PREFETCH="8",
        FLOWHOOKS_INGRESS_WORKSPACE_QUEUED_BYTES=str(QUEUED_BYTES),
    ) as running:
        yield running


@dataclass
class Endpoint:
    """Holds every request until the test releases it; counts those it holds."""

    base: str = ""
    holding: int = 0
    most: int = 0
    released: asyncio.Event = field(default_factory=asyncio.Event)


@pytest.fixture
async def endpoint() -> AsyncIterator[Endpoint]:
    state = Endpoint()

    async def hang(request: web.Request) -> web.Response:
        state.holding += 1
        state.most = max(state.most, state.holding)
        try:
            await state.released.wait()
        finally:
            state.holding -= 1
        return web.json_response({"released": True})

    app = web.Application()
    app.router.add_get("/hang", hang)
    async with serving(app, ENDPOINT_HOST) as base:
        state.base = base
        try:
            yield state
        finally:
            state.released.set()  # A's runs end, so the services stop at once


async def workspace(api: Api, name: str) -> Api:
    return Api(api.system, api.session, api.system.create_token(name, "automation"))


async def async_flow(api: Api, steps: list[dict[str, Any]]) -> tuple[str, str]:
    flow = await api.create_flow(
        {
            "name": "queues",
            "status": "live",
            "webhook": {"ref_id": "web1", "async": True, "timeout_s": 60},
            "steps": steps,
        }
    )

    async def known() -> bool | None:
        status, _ = await api.debugger(f"/v1/flows/{flow['id']}/requests?limit=1")
        return True if status == 200 else None

    await eventually(known)
    return flow["id"], (await api.webhook_info(flow["id"]))["token"]


def hanging(endpoint: Endpoint) -> list[dict[str, Any]]:
    return [
        {
            "ref_id": "hang",
            "type": "http",
            "method": "GET",
            "url": endpoint.base + "/hang",
            "timeout_s": 60,
            "retries": 0,
        }
    ]


QUICK = [{"ref_id": "double", "type": "template", "template": "{{ web1.n * 2 }}"}]


async def queue(api: Api, flow_id: str, token: str, **send: Any) -> str:
    """One async request, accepted (200 `scheduled`); its request id."""
    status, headers, body = await api.send(flow_id, token, **send)
    assert status == 200, body[:300]
    assert orjson.loads(body)["message"] == "scheduled"
    return headers["X-Request-Id"]


async def final_record(api: Api, request_id: str) -> dict[str, Any]:
    async def final() -> dict[str, Any] | None:
        status, record = await api.debugger(f"/v1/requests/{request_id}")
        return record if status == 200 and record["outcome"] in FINAL else None

    return await eventually(final, timeout_s=30)


async def parked_now(system: System) -> int:
    """Messages in the runner's wait queue of parked async runs."""
    connection = await aio_pika.connect(system.amqp_url)
    try:
        channel = await connection.channel()
        declared = await channel.declare_queue(naming.ASYNC_RUNS_WAIT_QUEUE, passive=True)
        return declared.declaration_result.message_count or 0
    finally:
        await connection.close()


async def parked_or_none(system: System) -> int | None:
    return await parked_now(system) or None


def seconds(later: str, earlier: str) -> float:
    return (datetime.fromisoformat(later) - datetime.fromisoformat(earlier)).total_seconds()


async def test_a_workspaces_hanging_backlog_does_not_hold_back_anothers_async_runs(
    api: Api, endpoint: Endpoint
) -> None:
    a = await workspace(api, "flooder")
    b = await workspace(api, "bystander")
    a_flow, a_token = await async_flow(a, hanging(endpoint))
    b_flow, b_token = await async_flow(b, QUICK)
    # More of A's runs than the whole window, one message each (sent one by one).
    flood = [await queue(a, a_flow, a_token, json={}) for _ in range(24)]

    async def a_at_its_share() -> bool | None:
        return True if endpoint.holding >= 4 else None

    await eventually(a_at_its_share, timeout_s=20)
    # The rest of A's runs wait in the broker, not in the runner's window.
    await eventually(lambda: parked_or_none(api.system), timeout_s=10)
    bystander = [await queue(b, b_flow, b_token, json={"n": n}) for n in range(6)]
    records = await asyncio.gather(*(final_record(b, request_id) for request_id in bystander))
    for n, record in enumerate(records):
        print(
            n,
            seconds(record["started_at"], record["received_at"]),
            seconds(record["finished_at"], record["received_at"]),
        )
    for n, record in enumerate(records):
        assert record["outcome"] == "succeeded", record
        assert orjson.loads(record["response"]["body"])["data"] == {"value": 2 * n}
        started_after = seconds(record["started_at"], record["received_at"])
        done_after = seconds(record["finished_at"], record["received_at"])
        print(f"B's run {n}: started {started_after:.3f} s, done {done_after:.3f} s after accepted")
        assert done_after <= BOUND_S, (n, started_after, done_after)
    # A never had more than its share running, and none of its runs was lost.
    assert endpoint.most == 4
    endpoint.released.set()
    a_records = await asyncio.gather(*(final_record(a, request_id) for request_id in flood))
    assert {r["outcome"] for r in a_records} == {"succeeded"}


async def test_past_its_queued_bytes_a_workspace_gets_429_and_another_is_still_taken(
    api: Api, endpoint: Endpoint
) -> None:
    a = await workspace(api, "big-sender")
    b = await workspace(api, "small-sender")
    a_flow, a_token = await async_flow(a, hanging(endpoint))
    b_flow, b_token = await async_flow(b, QUICK)
    megabyte = {"n": 1, "pad": "x" * 1_000_000}
    # Counted from the first byte queued: 0, 1 and 2 MB queued are below the bound.
    for _ in range(3):
        await queue(a, a_flow, a_token, json=megabyte)
    status, headers, body = await a.send(a_flow, a_token, json=megabyte)
    assert status == 429, body[:300]
    assert headers["Retry-After"] == str(QUEUED_RETRY_AFTER_S)
    envelope = orjson.loads(body)
    assert (envelope["status"], envelope["error"]) == (429, "rate_limited")
    assert "FLOWHOOKS_INGRESS_WORKSPACE_QUEUED_BYTES" in envelope["message"]
    assert envelope["data"]["queued_runs"] == 3
    # Another workspace's large body is taken and run.
    request_id = await queue(b, b_flow, b_token, json=megabyte)
    record = await final_record(b, request_id)
    assert record["outcome"] == "succeeded", record
    assert orjson.loads(record["response"]["body"])["data"] == {"value": 2}
    # Once A's runs are done (reported to the ingress), A is taken again.
    endpoint.released.set()

    async def a_taken_again() -> str | None:
        status, headers, _ = await a.send(a_flow, a_token, json={"n": 1})
        return headers["X-Request-Id"] if status == 200 else None

    await eventually(a_taken_again, timeout_s=15)

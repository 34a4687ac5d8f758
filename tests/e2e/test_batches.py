"""Batches of requests (StartRuns) through the real services: a batch the broker
delivers again after its runner died runs only the requests that had not finished.

The batch is published to the async queue directly (as the ingress would, but with a
known content), so that the test knows which requests share it."""

import asyncio
import signal
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import aio_pika
import pytest
from aiohttp import web

from harness.client import Api, eventually
from harness.receiver import serving
from harness.system import System, running_system
from services.runner.runs import REPEATED_AFTER_CRASH
from shared.messaging import naming
from shared.schemas.runs import StartRun, StartRuns, WebhookRequest

pytestmark = pytest.mark.e2e

ENDPOINT_HOST = "127.0.0.2"
SLOW_S = 3


@pytest.fixture(scope="module")
def system() -> Iterator[System]:
    with running_system(FLOWHOOKS_RUNNER_HTTP_ALLOW_NETWORKS=f'["{ENDPOINT_HOST}/32"]') as running:
        yield running


@pytest.fixture
async def endpoint() -> AsyncIterator[tuple[str, Counter[str]]]:
    """Counts the side effects per request id; /slow answers after SLOW_S seconds."""
    effects: Counter[str] = Counter()

    async def effect(request: web.Request) -> web.Response:
        effects[request.match_info["request_id"]] += 1
        return web.json_response({"ok": True})

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(SLOW_S)
        return web.json_response({"slow": True})

    app = web.Application()
    app.router.add_post("/effect/{request_id}", effect)
    app.router.add_get("/slow", slow)
    async with serving(app, ENDPOINT_HOST) as base:
        yield base, effects


def start_run(flow: dict[str, Any], body: dict[str, Any]) -> StartRun:
    request_id = uuid.uuid4().hex
    return StartRun(
        request=WebhookRequest(
            request_id=request_id,
            flow_id=flow["id"],
            workspace_id=flow["workspace_id"],
            received_at=datetime.now(UTC),
            method="POST",
            path=f"/v1/flow-webhook/{flow['id']}",
            query={},
            headers={"content-type": "application/json"},
            content_type="application/json",
            raw_body="{}",
            input=body,
            mode="async",
        ),
        flow_version=flow["version"],
    )


async def outcome(api: Api, request_id: str) -> str | None:
    status, record = await api.debugger(f"/v1/requests/{request_id}")
    return record["outcome"] if status == 200 else None


async def test_a_batch_delivered_again_runs_only_what_had_not_finished(
    api: Api, endpoint: tuple[str, Counter[str]]
) -> None:
    base, effects = endpoint
    system = api.system
    flow = await api.create_flow(
        {
            "name": "batch",
            "status": "live",
            "webhook": {"ref_id": "web1", "async": True},
            "steps": [
                {
                    "ref_id": "effect",
                    "type": "http",
                    "method": "POST",
                    "url": base + "/effect/{{ request.id }}",
                    "retries": 0,
                },
                {
                    "ref_id": "maybe_slow",
                    "type": "condition",
                    "if": "{{ web1.slow }}",
                    "then": [{"ref_id": "wait", "type": "http", "url": base + "/slow"}],
                },
            ],
        }
    )
    starts = [start_run(flow, {"slow": n == 4}) for n in range(5)]
    fast, slow = [s.request.request_id for s in starts[:4]], starts[4].request.request_id
    connection = await aio_pika.connect(system.amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await channel.default_exchange.publish(
            aio_pika.Message(
                StartRuns(items=starts).model_dump_json().encode(),
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key=naming.ASYNC_RUNS_QUEUE,
        )

    async def fast_done_slow_running() -> bool | None:
        outcomes = [await outcome(api, request_id) for request_id in fast]
        return True if outcomes == ["succeeded"] * 4 and effects[slow] == 1 else None

    await eventually(fast_done_slow_running, timeout_s=SLOW_S)
    # The runner dies mid-batch: the batch is unacked, the broker delivers it again.
    for runner in list(system.processes["runner"]):
        system.stop(runner, signal.SIGKILL)
    system.start("runner")

    async def slow_done() -> bool | None:
        return True if await outcome(api, slow) == "succeeded" else None

    await eventually(slow_done, timeout_s=30)
    # The four that had finished did not run again; the one that had not, did.
    assert {request_id: effects[request_id] for request_id in [*fast, slow]} == {
        **dict.fromkeys(fast, 1),
        slow: 2,
    }
    # The repeat is not silent: its record says it ran again, and why; the others ran once.
    repeated = {}
    for request_id in [*fast, slow]:
        status, record = await api.debugger(f"/v1/requests/{request_id}")
        assert status == 200, record
        repeated[request_id] = record["repeated"]
    assert repeated == {**dict.fromkeys(fast, None), slow: REPEATED_AFTER_CRASH}

"""Sync timeouts (504, result still recorded), sync runs that expire unrun, and async
requests the broker cannot take (503, never a false 200)."""

from collections.abc import Iterator
from typing import Any

import aio_pika
import orjson
import pytest

from harness.client import Api, eventually
from harness.system import System, running_system

pytestmark = pytest.mark.e2e

# Some 200 ms of CPU in the runner.
# Well past the 0.1 s timeout below even on an idle machine (about 0.3 s; a run that ends
# past its timeout is a timeout, whether the render finished or its budget cut it).
SLOW = "{% for i in range(10000) %}{% for j in range(1500) %}{% endfor %}{% endfor %}done"


@pytest.fixture(scope="module")
def system() -> Iterator[System]:
    """Its own system: these tests stop runners and delete queues."""
    with running_system() as running:
        yield running


async def stored(api: Api, request_id: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        status, record = await api.debugger(f"/v1/requests/{request_id}")
        return record if status == 200 else None

    return await eventually(probe, timeout_s=20)


async def test_sync_timeout_is_504_and_still_recorded(api: Api) -> None:
    flow = await api.create_flow(
        {
            "name": "slow",
            "status": "live",
            "webhook": {"ref_id": "web1", "timeout_s": 0.1},
            "steps": [{"ref_id": "slow", "type": "template", "template": SLOW}],
        }
    )
    token = (await api.webhook_info(flow["id"]))["token"]
    status, headers, body = await api.send(flow["id"], token, json={})
    request_id = headers["X-Request-Id"]
    assert status == 504
    envelope = orjson.loads(body)
    assert envelope["error"] == "timeout"
    assert request_id in envelope["message"]
    assert envelope["data"] == {"request_id": request_id}
    record = await stored(api, request_id)
    assert record["outcome"] == "timeout"
    assert record["response"]["status_code"] == 504


async def test_sync_run_nobody_picked_up_expires_unrun(api: Api) -> None:
    system = api.system
    flow = await api.create_flow(
        {
            "name": "expiring",
            "status": "live",
            "webhook": {"ref_id": "web1", "timeout_s": 0.5},
            "steps": [{"ref_id": "a", "type": "template", "template": "ran"}],
        }
    )
    token = (await api.webhook_info(flow["id"]))["token"]
    for runner in list(system.processes["runner"]):
        system.stop(runner)
    try:
        status, headers, body = await api.send(flow["id"], token, json={})
        assert status == 504
        assert orjson.loads(body)["error"] == "timeout"
        request_id = headers["X-Request-Id"]
        record = await stored(api, request_id)
        assert record["outcome"] == "expired"
        assert record["steps"] == []
    finally:
        system.start("runner")
    # The runner that is back does not run it late: the record stays expired.
    status, _, _ = await api.send(flow["id"], token, json={})
    assert status == 200
    record = await stored(api, request_id)
    assert record["outcome"] == "expired"


async def test_async_request_the_broker_cannot_take_is_503(api: Api) -> None:
    system = api.system
    flow = await api.create_flow(
        {
            "name": "async",
            "status": "live",
            "webhook": {"ref_id": "web1", "async": True},
            "steps": [],
        }
    )
    token = (await api.webhook_info(flow["id"]))["token"]
    status, _, _ = await api.send(flow["id"], token, json={})
    assert status == 200
    for runner in list(system.processes["runner"]):
        system.stop(runner)
    # The queue disappears (an operator's mistake): the broker returns the message.
    connection = await aio_pika.connect(system.amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete("flowhooks.runner.async-runs")
    try:
        status, headers, body = await api.send(flow["id"], token, json={"n": 1})
        assert status == 503
        assert orjson.loads(body)["error"] == "unavailable"
        assert headers["Retry-After"] == "5"
    finally:
        system.start("runner")  # declares the queue again
    status, _, _ = await api.send(flow["id"], token, json={"n": 2})
    assert status == 200

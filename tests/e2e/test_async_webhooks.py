"""Async flows: answered once the broker has the request durably, run later, never
lost when a runner dies mid-run."""

import asyncio
import signal
from collections.abc import Iterator
from typing import Any

import aio_pika
import asyncpg
import orjson
import pytest

from harness.client import Api, eventually
from harness.system import System, running_system

pytestmark = pytest.mark.e2e

# About 200,000 template loop iterations: long enough to be mid-run when killed.
SLOW = "{% for i in range(1000) %}{% for j in range(200) %}{% endfor %}{% endfor %}{{ web1.n }}"


@pytest.fixture(scope="module")
def system() -> Iterator[System]:
    """Its own system: these tests stop and kill runners."""
    with running_system() as running:
        yield running


async def async_flow(api: Api, template: str = "{{ web1.n }}") -> tuple[str, str]:
    flow = await api.create_flow(
        {
            "name": "async",
            "status": "live",
            "webhook": {"ref_id": "web1", "async": True},
            "steps": [{"ref_id": "n", "type": "template", "template": template}],
        }
    )
    return flow["id"], (await api.webhook_info(flow["id"]))["token"]


async def stored_rows(database_url: str, flow_id: str) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT id, outcome, input::text FROM debugger.requests WHERE flow_id = $1::uuid",
            flow_id,
        )
    finally:
        await conn.close()
    return [dict(row) for row in rows]


async def test_accepted_while_no_runner_then_run(api: Api) -> None:
    system = api.system
    flow_id, token = await async_flow(api)
    for runner in list(system.processes["runner"]):
        system.stop(runner)

    accepted = []
    for n in range(5):
        status, headers, body = await api.send(flow_id, token, json={"n": n})
        assert status == 200
        envelope = orjson.loads(body)
        assert envelope == {
            "status": 200,
            "error": None,
            "message": "scheduled",
            "data": {"request_id": headers["X-Request-Id"]},
        }
        accepted.append(headers["X-Request-Id"])

    # Not run, but visible as queued.
    async def all_queued() -> list[dict[str, Any]] | None:
        rows = await stored_rows(system.database_url, flow_id)
        return rows if len(rows) == len(accepted) else None

    queued = await eventually(all_queued)
    assert {row["outcome"] for row in queued} == {"queued"}

    system.start("runner")

    async def all_stored() -> list[dict[str, Any]] | None:
        rows = await stored_rows(system.database_url, flow_id)
        done = [row for row in rows if row["outcome"] == "succeeded"]
        return done if len(done) == len(accepted) else None

    rows = await eventually(all_stored, timeout_s=20)
    assert sorted(row["id"] for row in rows) == sorted(accepted)
    assert {row["outcome"] for row in rows} == {"succeeded"}

    status, record = await api.debugger(f"/v1/requests/{accepted[3]}")
    assert status == 200
    assert record["mode"] == "async"
    assert record["steps"][0]["output"] == {"value": 3}


async def test_runner_killed_mid_run_loses_nothing(api: Api) -> None:
    system = api.system
    flow_id, token = await async_flow(api, SLOW)
    accepted = []
    for n in range(120):
        status, headers, _ = await api.send(flow_id, token, json={"n": n})
        assert status == 200
        accepted.append(headers["X-Request-Id"])

    async def finished(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [row for row in rows if row["outcome"] not in ("queued", "running")]

    async def some_done() -> int | None:
        count = len(await finished(await stored_rows(system.database_url, flow_id)))
        return count if count >= 5 else None

    await eventually(some_done, timeout_s=30)
    for runner in list(system.processes["runner"]):
        system.stop(runner, signal.SIGKILL)
    done_before_restart = len(await finished(await stored_rows(system.database_url, flow_id)))
    assert done_before_restart < len(accepted), "the kill came too late to test anything"

    system.start("runner")

    async def all_stored() -> list[dict[str, Any]] | None:
        rows = await finished(await stored_rows(system.database_url, flow_id))
        return rows if len(rows) >= len(accepted) else None

    rows = await eventually(all_stored, timeout_s=90)
    ids = [row["id"] for row in rows]
    assert sorted(ids) == sorted(accepted)  # every accepted request, each exactly once
    assert {row["outcome"] for row in rows} == {"succeeded"}
    assert sorted(orjson.loads(row["input"])["n"] for row in rows) == list(range(120))


async def test_run_failing_every_delivery_is_dead_lettered_and_shown_failed(api: Api) -> None:
    """A run that never completes (here: a consumer that always gives it back, as a
    runner crashing on it would) is delivered up to the queue's limit, then
    dead-lettered to the debugger, which records it as failed: not dropped, not looping."""
    system = api.system
    flow_id, token = await async_flow(api)
    for runner in list(system.processes["runner"]):
        system.stop(runner)
    try:
        status, headers, _ = await api.send(flow_id, token, json={"n": 1})
        assert status == 200
        request_id = headers["X-Request-Id"]
        deliveries = 0
        connection = await aio_pika.connect(system.amqp_url)
        async with connection:
            channel = await connection.channel()
            queue = await channel.get_queue("flowhooks.runner.async-runs", ensure=False)
            while deliveries < 20:
                message = await queue.get(no_ack=False, fail=False, timeout=5)
                if message is None:
                    break
                deliveries += 1
                await message.nack(requeue=True)
        assert deliveries == 6  # the first delivery and x-delivery-limit (5) more
        status, record = 404, None
        # The `queued` record may be there before the dead-lettered outcome lands.
        for _ in range(100):
            status, record = await api.debugger(f"/v1/requests/{request_id}")
            if status == 200 and record["outcome"] != "queued":
                break
            await asyncio.sleep(0.1)
        assert status == 200 and record is not None
        assert record["outcome"] == "failed"
        assert "dead-lettered after 6 deliveries (delivery_limit)" in record["error"]
        assert record["input"] == {"n": 1}
    finally:
        system.start("runner")

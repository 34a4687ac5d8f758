"""Parked async runs and the queues' backstops on the real broker: a run parked in the
wait queue comes back to the async-runs queue after the queue's TTL as a new message
(not a redelivery: parking costs no attempt), and past the backstop policy's bounds the
broker refuses publishes, which the publisher reports as `Unavailable` (503 with
Retry-After at the ingress) instead of letting the queue grow."""

import asyncio
import time

import aio_pika
import pytest

from harness.factories import webhook_request
from shared.errors import Unavailable
from shared.messaging import encoding, naming, topology
from shared.messaging.broker_setup import Rabbitmqctl, apply_queue_bounds, vhost_of
from shared.messaging.connection import Broker
from shared.messaging.contracts import PARKED_RUNS
from shared.messaging.rpc import RpcClient
from shared.messaging.runner_client import RunnerClient
from shared.schemas.runs import StartRun, StartRuns

pytestmark = pytest.mark.integration


def parked_runs(count: int, size: int = 10) -> StartRuns:
    return StartRuns(
        items=[
            StartRun(
                request=webhook_request(raw_body="x" * size, mode="async"),
                flow_version=1,
                origin="ingress-1",
                parked=1,
            )
            for _ in range(count)
        ]
    )


async def test_a_parked_message_comes_back_to_the_async_queue_after_the_ttl_as_a_new_message(
    amqp_url: str,
) -> None:
    broker = Broker(amqp_url, "test")
    await broker.connect()  # declares the topology, the wait queue included
    arrived: asyncio.Queue[tuple[aio_pika.abc.AbstractIncomingMessage, float]] = asyncio.Queue()
    try:
        body = parked_runs(3)
        started = time.monotonic()
        # As RunService._park publishes it: confirmed, to the wait queue.
        await broker.publish(
            body.model_dump_json().encode(),
            routing_key=PARKED_RUNS.queue.name,
            message_type=PARKED_RUNS.body.__name__,
        )

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            await arrived.put((message, time.monotonic() - started))
            await message.ack()

        await broker.consume(topology.ASYNC_RUNS, on_message, prefetch=10)
        message, after_s = await asyncio.wait_for(arrived.get(), 10)
    finally:
        await broker.close()
    assert topology.PARK_TTL_S * 0.9 <= after_s < topology.PARK_TTL_S + 2.0
    assert StartRuns.model_validate_json(encoding.body(message)) == body
    # Not a redelivery: the delivery limit of the async queue counts it from zero.
    assert not message.redelivered
    headers = message.headers or {}
    assert "x-delivery-count" not in headers
    (death,) = headers["x-death"]  # type: ignore[misc]
    assert death["queue"] == naming.ASYNC_RUNS_WAIT_QUEUE  # type: ignore[index]
    assert death["reason"] == "expired"  # type: ignore[index]


async def test_past_the_backstop_policy_the_broker_refuses_and_the_queue_stops_growing(
    amqp_url: str,
) -> None:
    # The policy as broker-setup and `flowhooks run` apply it, with tiny bounds.
    bounds = topology.QueueBounds(max_length=5, max_bytes=64 * 1024)
    await apply_queue_bounds(Rabbitmqctl(), vhost_of(amqp_url), bounds)
    broker = Broker(amqp_url, "test")
    await broker.connect()  # the queues, declared after the policy, have it from the start
    try:
        runner = RunnerClient(broker, RpcClient(broker, 5.0), max_items=1)
        accepted, refused = 0, 0
        for _ in range(8):
            start = parked_runs(1).items[0]
            try:
                await runner.schedule(start)
                accepted += 1
            except Unavailable as error:
                refused += 1
                assert error.status_code == 503
                assert error.headers() == {"Retry-After": "5"}
        # A quorum queue notices it is full after the publish that filled it (3.10 takes
        # one message more), then refuses every publish until messages are taken.
        assert accepted in (bounds.max_length, bounds.max_length + 1)
        assert refused == 8 - accepted
        depth = await broker.queue_depths([naming.ASYNC_RUNS_QUEUE])
        assert depth == {naming.ASYNC_RUNS_QUEUE: accepted}
        # The byte bound holds on its own, here on the (classic) sync queue: a publish that
        # would take it past the bound is refused.
        big = parked_runs(1, size=25 * 1024).model_dump_json().encode()
        await broker.publish(big, routing_key=naming.SYNC_RUNS_QUEUE)
        await broker.publish(big, routing_key=naming.SYNC_RUNS_QUEUE)  # 51 KiB < 64: taken
        with pytest.raises(Unavailable):
            await broker.publish(big, routing_key=naming.SYNC_RUNS_QUEUE)
        assert await broker.queue_depths([naming.SYNC_RUNS_QUEUE]) == {naming.SYNC_RUNS_QUEUE: 2}
    finally:
        await broker.close()

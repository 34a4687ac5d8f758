"""The callback wait ladder on the real broker: a message parked in a wait queue comes
back to the callbacks queue after that queue's fixed TTL (quorum queues, at-least-once
dead-lettering to the default exchange), and a short wait is not held behind a long
one (each step is its own queue)."""

import asyncio
import time

import aio_pika
import pytest

from shared.messaging import encoding, naming, topology
from shared.messaging.connection import Broker

pytestmark = pytest.mark.integration


async def test_a_parked_message_returns_after_its_step_and_is_not_held_behind_a_longer_one(
    amqp_url: str,
) -> None:
    broker = Broker(amqp_url, "test")
    await broker.connect()  # declares the whole topology, the ladder included
    arrived: asyncio.Queue[tuple[bytes, float]] = asyncio.Queue()
    try:
        started = time.monotonic()
        # The long wait first: a per-message TTL in one queue would hold the short one.
        await broker.publish(b"long", routing_key=naming.callback_wait_queue_name(5))
        await broker.publish(b"short", routing_key=naming.callback_wait_queue_name(1))

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            await arrived.put((encoding.body(message), time.monotonic() - started))
            await message.ack()

        await broker.consume(topology.CALLBACKS, on_message, prefetch=10)
        first, first_after = await asyncio.wait_for(arrived.get(), 10)
        second, second_after = await asyncio.wait_for(arrived.get(), 10)
    finally:
        await broker.close()
    assert first == b"short" and 0.9 <= first_after < 3.0
    assert second == b"long" and 4.9 <= second_after < 8.0


def test_the_ladder_queues_dead_letter_into_the_callbacks_queue() -> None:
    assert [spec.name for spec in topology.CALLBACK_WAITS] == [
        "flowhooks.runner.callbacks.wait-1s",
        "flowhooks.runner.callbacks.wait-5s",
        "flowhooks.runner.callbacks.wait-30s",
        "flowhooks.runner.callbacks.wait-2m",
        "flowhooks.runner.callbacks.wait-10m",
        "flowhooks.runner.callbacks.wait-1h",
    ]
    for spec, step_s in zip(topology.CALLBACK_WAITS, topology.CALLBACK_LADDER_S, strict=True):
        assert spec.arguments["x-message-ttl"] == step_s * 1000
        assert spec.arguments["x-dead-letter-exchange"] == ""
        assert spec.arguments["x-dead-letter-routing-key"] == naming.CALLBACKS_QUEUE

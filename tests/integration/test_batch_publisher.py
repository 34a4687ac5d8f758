"""BatchPublisher against the real RabbitMQ: many callers, few messages, each caller
released only by its message's confirm."""

import asyncio

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage
from pydantic import BaseModel

from shared.errors import Unavailable
from shared.messaging import encoding
from shared.messaging.batching import BatchPublisher
from shared.messaging.connection import Broker
from shared.messaging.contracts import Event

pytestmark = pytest.mark.integration


class Item(BaseModel):
    n: int


class Items(BaseModel):
    items: list[Item]


async def test_many_events_few_messages(amqp_url: str) -> None:
    broker = Broker(amqp_url, "test")
    await broker.connect()
    received: list[Items] = []

    async def on_message(message: AbstractIncomingMessage) -> None:
        received.append(Items.model_validate_json(encoding.body(message)))

    await broker.consume(
        f"test-batches-{broker.instance}",
        on_message,
        prefetch=100,
        no_ack=True,
        bindings=("test.happened",),
    )
    publisher: BatchPublisher[Item] = BatchPublisher(
        broker, Event("test.happened", Items), max_items=50
    )
    try:
        await asyncio.gather(*(publisher.publish(Item(n=n)) for n in range(120)))
        for _ in range(100):
            if sum(len(batch.items) for batch in received) == 120:
                break
            await asyncio.sleep(0.02)
        assert sorted(item.n for batch in received for item in batch.items) == list(range(120))
        # All 120 were waiting when the sender first ran: at most 50 a message.
        assert [len(batch.items) for batch in received] == [50, 50, 20]
        # Alone, an event goes at once, in a message of its own.
        await publisher.publish(Item(n=120))
        for _ in range(100):
            if len(received) == 4:
                break
            await asyncio.sleep(0.02)
        assert [item.n for item in received[3].items] == [120]
        assert publisher.messages_sent == 4
    finally:
        await broker.close()


async def test_every_waiter_hears_of_a_failed_publish(amqp_url: str) -> None:
    broker = Broker(amqp_url, "test")
    await broker.connect()
    # Unroutable: mandatory publish to a routing key nobody binds -> returned -> Unavailable.
    publisher: BatchPublisher[Item] = BatchPublisher(broker, Event("nobody.listens", Items))
    try:
        results = await asyncio.gather(
            *(publisher.publish(Item(n=n)) for n in range(5)), return_exceptions=True
        )
        assert all(isinstance(result, Unavailable) for result in results)
    finally:
        await broker.close()


class Note(BaseModel):
    text: str


class Notes(BaseModel):
    items: list[Note]


async def test_an_event_the_broker_refuses_fails_alone(amqp_url: str) -> None:
    """The only queue bound to the key refuses any message over 2,000 bytes (a nack,
    as for a message too large): the batch holding the large event is split until the
    large one stands alone; the events beside it are delivered, their callers released.
    Uncompressed: deflated, the large event would fit."""
    broker = Broker(amqp_url, "test", compress_min_bytes=0)
    await broker.connect()
    observer = await aio_pika.connect(amqp_url)
    try:
        channel = await observer.channel()
        queue = await channel.declare_queue(
            f"test-refusing-{broker.instance}",
            arguments={"x-max-length-bytes": 2000, "x-overflow": "reject-publish"},
        )
        await queue.bind("flowhooks.events", "test.noted")
        publisher: BatchPublisher[Note] = BatchPublisher(broker, Event("test.noted", Notes))
        texts = ["a", "b", "x" * 3000, "c", "d"]
        results = await asyncio.gather(
            *(publisher.publish(Note(text=text)) for text in texts), return_exceptions=True
        )
        assert [type(result).__name__ for result in results] == [
            "NoneType",
            "NoneType",
            "Unavailable",
            "NoneType",
            "NoneType",
        ]
        delivered: list[str] = []
        while (message := await queue.get(no_ack=True, fail=False)) is not None:
            delivered += [
                note.text for note in Notes.model_validate_json(encoding.body(message)).items
            ]
        assert sorted(delivered) == ["a", "b", "c", "d"]
    finally:
        await observer.close()
        await broker.close()

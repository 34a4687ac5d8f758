"""The service kernel against the real RabbitMQ (a vhost per test): how it settles a
command's deliveries (ack, requeue after `Retry`, dead-letter what cannot be read), how
it dispatches events, and its shutdown order."""

import asyncio
import zlib

import aio_pika
import pytest
from pydantic import BaseModel

from shared.messaging import encoding
from shared.messaging.batching import BatchPublisher
from shared.messaging.contracts import Command, Event
from shared.messaging.dispatch import EventHandlers
from shared.messaging.topology import QueueSpec
from shared.service import Delivery, Kernel, Retry
from shared.settings import ServiceSettings
from shared.web import base_app

pytestmark = pytest.mark.integration

DEAD = "flowhooks.test.kernel.dead"
# Rejected messages go to DEAD through the default exchange.
WORK = QueueSpec(
    "flowhooks.test.kernel.work",
    {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": DEAD},
)
EVENTS = QueueSpec(
    "flowhooks.test.kernel.events",
    {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": DEAD},
)


class Note(BaseModel):
    text: str


NOTE: Command[Note] = Command(WORK, Note)
NOTED: Event[Note] = Event("test.kernel.noted", Note)


async def _kernel(amqp_url: str) -> Kernel[ServiceSettings]:
    app = base_app("test")
    kernel = Kernel("test", ServiceSettings(amqp_url=amqp_url, shutdown_timeout_s=5), app)
    await kernel.start(database=None)
    return kernel


async def _declare(amqp_url: str) -> aio_pika.abc.AbstractRobustConnection:
    connection = await aio_pika.connect_robust(amqp_url)
    channel = await connection.channel()
    await channel.declare_queue(DEAD, durable=True)
    for spec in (WORK, EVENTS):
        await channel.declare_queue(spec.name, durable=True, arguments=spec.arguments)
    events = await channel.get_exchange("flowhooks.events")
    queue = await channel.get_queue(EVENTS.name)
    await queue.bind(events, NOTED.routing_key)
    await queue.bind(events, "test.kernel.unknown")
    return connection


async def _dead_letters(connection: aio_pika.abc.AbstractConnection, count: int) -> list[bytes]:
    """The first `count` bodies dead-lettered to DEAD, sorted."""
    channel = await connection.channel()
    queue = await channel.get_queue(DEAD)
    bodies: list[bytes] = []
    async with asyncio.timeout(10):
        while len(bodies) < count:
            message = await queue.get(no_ack=True, fail=False)
            if message is None:
                await asyncio.sleep(0.05)
            else:
                bodies.append(encoding.body(message))
    return sorted(bodies)


async def _until(condition: object, timeout_s: float = 10) -> None:
    async with asyncio.timeout(timeout_s):
        while not callable(condition) or not condition():
            await asyncio.sleep(0.02)


async def test_commands_acked_retried_and_unreadable_dead_lettered(amqp_url: str) -> None:
    kernel = await _kernel(amqp_url)
    connection = await _declare(amqp_url)
    seen: list[tuple[str, bool]] = []

    async def on_note(note: Note, delivery: Delivery) -> None:
        seen.append((note.text, delivery.redelivered))
        if note.text == "flaky" and not delivery.redelivered:
            raise Retry("the database is away")

    kernel.on_command(NOTE, on_note, prefetch=10)
    await kernel.start_consuming()
    try:
        for body in (b'{"text":"a"}', b'{"text":"flaky"}', b"not json", b'{"txt":"b"}'):
            await kernel.broker.publish(body, routing_key=WORK.name)
        await _until(lambda: len(seen) == 3)
        assert seen == [("a", False), ("flaky", False), ("flaky", True)]
        assert await _dead_letters(connection, 2) == [b"not json", b'{"txt":"b"}']
    finally:
        await kernel.stop()
        await connection.close()
    # Everything was settled: nothing waits in the work queue.
    check = await aio_pika.connect(amqp_url)
    channel = await check.channel()
    work = await channel.declare_queue(WORK.name, durable=True, arguments=WORK.arguments)
    assert work.declaration_result.message_count == 0
    await check.close()


async def test_events_by_routing_key_and_unknown_ones_dead_lettered(amqp_url: str) -> None:
    kernel = await _kernel(amqp_url)
    connection = await _declare(amqp_url)
    noted: list[str] = []

    async def on_noted(note: Note) -> None:
        noted.append(note.text)

    handlers = EventHandlers()
    handlers.on(NOTED, on_noted)
    kernel.on_events(EVENTS, handlers, prefetch=10)
    await kernel.start_consuming()
    try:
        await kernel.broker.publish_event(NOTED, Note(text="x"))
        await kernel.broker.publish(
            b'{"text":"y"}', routing_key="test.kernel.unknown", to_events=True
        )
        await kernel.broker.publish(b'{"nope":1}', routing_key=NOTED.routing_key, to_events=True)
        await _until(lambda: noted == ["x"])
        assert await _dead_letters(connection, 2) == [b'{"nope":1}', b'{"text":"y"}']
    finally:
        await kernel.stop()
        await connection.close()


async def test_shutdown_waits_for_handlers_then_runs_hooks_last_first(amqp_url: str) -> None:
    kernel = await _kernel(amqp_url)
    connection = await _declare(amqp_url)
    order: list[str] = []
    started = asyncio.Event()

    async def on_note(note: Note, delivery: Delivery) -> None:
        started.set()
        await asyncio.sleep(0.3)
        order.append(f"handled {note.text}")

    async def background() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            order.append("background cancelled")
            raise

    async def first() -> None:
        order.append("first hook")

    async def second() -> None:
        order.append("second hook")

    kernel.on_command(NOTE, on_note, prefetch=10)
    kernel.background(background())
    kernel.on_shutdown(first)
    kernel.on_shutdown(second)
    await kernel.start_consuming()
    try:
        await kernel.broker.publish(b'{"text":"slow"}', routing_key=WORK.name)
        await asyncio.wait_for(started.wait(), 10)
        await kernel.stop()
        assert order == ["handled slow", "background cancelled", "second hook", "first hook"]
        assert not kernel.broker.is_connected
    finally:
        await connection.close()


async def test_a_periodic_job_outlives_its_failures_and_stops_with_the_service(
    amqp_url: str,
) -> None:
    kernel = await _kernel(amqp_url)
    runs: list[int] = []

    async def job() -> None:
        runs.append(len(runs))
        if len(runs) == 1:
            raise OSError("the database is away")

    kernel.periodic("test_job", 0.05, job)
    await kernel.start_consuming()
    await _until(lambda: len(runs) >= 3)
    await kernel.stop()
    stopped_at = len(runs)
    await asyncio.sleep(0.2)
    assert runs[:3] == [0, 1, 2]
    assert len(runs) == stopped_at


class Notes(BaseModel):
    items: list[Note]


NOTES: Event[Notes] = Event("test.kernel.notes", Notes)
# A quorum queue, as the debugger's events: where a batch is sent deflated.
QUORUM_EVENTS = QueueSpec(
    "flowhooks.test.kernel.quorum-events",
    {"x-queue-type": "quorum", "x-dead-letter-exchange": "", "x-dead-letter-routing-key": DEAD},
)


async def test_a_deflated_batch_is_read_as_sent_and_a_bad_encoding_dead_lettered(
    amqp_url: str,
) -> None:
    """A batch `BatchPublisher` deflated (25 items, over the default threshold) reaches
    the kernel's event handler item for item; a body in an unknown encoding, or
    marked deflated but corrupt, is dead-lettered as it came."""
    kernel = await _kernel(amqp_url)
    connection = await _declare(amqp_url)
    channel = await connection.channel()
    await channel.declare_queue(QUORUM_EVENTS.name, durable=True, arguments=QUORUM_EVENTS.arguments)
    events = await channel.get_exchange("flowhooks.events")
    await (await channel.get_queue(QUORUM_EVENTS.name)).bind(events, NOTES.routing_key)
    # What went over the wire, seen by a queue of its own.
    wire = await channel.declare_queue(exclusive=True)
    await wire.bind(events, NOTES.routing_key)
    received: list[Notes] = []

    async def on_notes(notes: Notes) -> None:
        received.append(notes)

    handlers = EventHandlers()
    handlers.on(NOTES, on_notes)
    kernel.on_events(QUORUM_EVENTS, handlers, prefetch=10)
    await kernel.start_consuming()
    sent = [Note(text=f"run {n}: " + "the same request, the same steps " * 3) for n in range(25)]
    try:
        publisher: BatchPublisher[Note] = BatchPublisher(kernel.broker, NOTES)
        await publisher.publish_together(sent)
        await _until(lambda: len(received) == 1)
        assert received == [Notes(items=sent)]
        raw = await wire.get(no_ack=True, timeout=5)
        plain = Notes(items=sent).model_dump_json().encode()
        assert len(plain) >= encoding.DEFAULT_MIN_BYTES
        assert raw.content_encoding == "deflate"
        assert len(raw.body) < len(plain) // 4
        assert encoding.body(raw) == plain

        corrupt = zlib.compress(plain, 1)[:-8]
        await kernel.broker.publish(
            plain, routing_key=NOTES.routing_key, to_events=True, content_encoding="gzip"
        )
        await kernel.broker.publish(
            corrupt, routing_key=NOTES.routing_key, to_events=True, content_encoding="deflate"
        )
        dead = await channel.get_queue(DEAD)
        bodies: list[tuple[str | None, bytes]] = []
        async with asyncio.timeout(10):
            while len(bodies) < 2:
                message = await dead.get(no_ack=True, fail=False)
                if message is None:
                    await asyncio.sleep(0.05)
                else:
                    bodies.append((message.content_encoding, message.body))
        assert sorted(bodies) == [("deflate", corrupt), ("gzip", plain)]
        assert len(received) == 1
    finally:
        await kernel.stop()
        await connection.close()

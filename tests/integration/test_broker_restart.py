"""After RabbitMQ restarts, a process's consumers and RPC come back by themselves (the
robust connection re-declares queues and re-consumes), and nothing durable is lost.
Restarts the local broker's application: a few seconds."""

import asyncio
import subprocess

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage
from pydantic import BaseModel

from shared.errors import Timeout, Unavailable
from shared.messaging.connection import Broker
from shared.messaging.contracts import Event, Rpc
from shared.messaging.rpc import RpcClient, RpcServer
from shared.messaging.topology import QueueSpec

pytestmark = pytest.mark.integration

QUEUE = QueueSpec("flowhooks.test.restart-rpc")
EVENTS = QueueSpec("flowhooks.test.restart-events", {"x-queue-type": "quorum"}, ("test.done",))


class Echo(BaseModel):
    text: str


ECHO: Rpc[Echo, Echo] = Rpc("test.echo", QUEUE, Echo, Echo)
DONE: Event[Echo] = Event("test.done", Echo)
LIVE: Event[Echo] = Event("test.live", Echo)


def restart_rabbitmq() -> None:
    subprocess.run(["rabbitmqctl", "-q", "stop_app"], check=True, timeout=120)
    subprocess.run(["rabbitmqctl", "-q", "start_app"], check=True, timeout=120)
    subprocess.run(["rabbitmqctl", "-q", "await_startup"], check=True, timeout=120)


async def test_consumers_and_rpc_survive_a_broker_restart(amqp_url: str) -> None:
    server_broker = Broker(amqp_url, "test-server")
    client_broker = Broker(amqp_url, "test-client")
    await server_broker.connect()
    await client_broker.connect()
    server = RpcServer(server_broker)

    async def echo(request: Echo) -> Echo:
        return Echo(text=request.text.upper())

    server.register(ECHO, echo)
    await server_broker.consume(QUEUE, server.on_call, prefetch=10)
    # The durable event queue, declared before the restart.
    declaring = await aio_pika.connect(amqp_url)
    exchange_channel = await declaring.channel()
    queue = await exchange_channel.declare_queue(
        EVENTS.name, durable=True, arguments=EVENTS.arguments
    )
    await queue.bind("flowhooks.events", "test.done")
    await declaring.close()
    received: list[str] = []

    async def on_event(message: AbstractIncomingMessage) -> None:
        received.append(message.body.decode())
        await message.ack()

    client = RpcClient(client_broker, default_timeout_s=2)
    await client.start()
    try:
        assert (await client.call(ECHO, Echo(text="a"))).text == "A"
        # Published (and confirmed) before the restart, with no consumer yet.
        await client_broker.publish_event(DONE, Echo(text="before"))
        # A consumer started before the restart must be consuming again after it.
        live_received: list[str] = []

        async def on_live(message: AbstractIncomingMessage) -> None:
            live_received.append(message.body.decode())

        await server_broker.consume(
            f"flowhooks.test.live.{server_broker.instance}",
            on_live,
            prefetch=10,
            no_ack=True,
            bindings=("test.live",),
        )

        await asyncio.to_thread(restart_rabbitmq)

        answer = None
        for _ in range(60):
            try:
                answer = await client.call(ECHO, Echo(text="b"), timeout_s=1)
                break
            except (Timeout, Unavailable):
                await asyncio.sleep(0.5)
        assert answer is not None and answer.text == "B"

        # The live queue comes back on its own channel, maybe a moment after the RPC's:
        # publish (mandatory: an unroutable event raises) until its binding is back.
        for _ in range(60):
            try:
                await client_broker.publish_event(LIVE, Echo(text="live"))
                break
            except Unavailable:
                await asyncio.sleep(0.5)
        await server_broker.consume(EVENTS, on_event, prefetch=10)
        await client_broker.publish_event(DONE, Echo(text="after"))
        for _ in range(100):
            if len(received) == 2 and live_received:
                break
            await asyncio.sleep(0.05)
        assert received == ['{"text":"before"}', '{"text":"after"}']
        assert live_received == ['{"text":"live"}']
    finally:
        await client_broker.close()
        await server_broker.close()

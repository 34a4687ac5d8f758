"""The RPC layer against the real RabbitMQ (a vhost per test)."""

import asyncio

import pytest
from pydantic import BaseModel

from shared.errors import NotFound, Timeout
from shared.messaging import topology
from shared.messaging.connection import Broker
from shared.messaging.contracts import Rpc
from shared.messaging.rpc import RpcClient, RpcServer
from shared.messaging.topology import QueueSpec

pytestmark = pytest.mark.integration

QUEUE = QueueSpec("flowhooks.test.echo")


class Echo(BaseModel):
    text: str


ECHO: Rpc[Echo, Echo] = Rpc("test.echo", QUEUE, Echo, Echo)
# Declared by the topology, served by nobody here.
NOBODY: Rpc[Echo, Echo] = Rpc("auth.identify_token", topology.AUTH_RPC, Echo, Echo)


async def _serve(amqp_url: str) -> tuple[Broker, RpcServer]:
    broker = Broker(amqp_url, "test-server")
    await broker.connect()
    server = RpcServer(broker)

    async def echo(request: Echo) -> Echo:
        if request.text == "missing":
            raise NotFound("no such thing")
        if request.text == "slow":
            await asyncio.sleep(2)
        return Echo(text=request.text.upper())

    server.register(ECHO, echo)
    await broker.consume(QUEUE, server.on_call, prefetch=10)
    return broker, server


async def test_call_returns_result_and_remote_errors(amqp_url: str) -> None:
    server_broker, _ = await _serve(amqp_url)
    client_broker = Broker(amqp_url, "test-client")
    await client_broker.connect()
    client = RpcClient(client_broker, default_timeout_s=5)
    await client.start()
    try:
        answers = await asyncio.gather(*(client.call(ECHO, Echo(text=f"a{i}")) for i in range(50)))
        assert [a.text for a in answers] == [f"A{i}" for i in range(50)]
        with pytest.raises(NotFound, match="no such thing"):
            await client.call(ECHO, Echo(text="missing"))
        with pytest.raises(Timeout):
            await client.call(ECHO, Echo(text="slow"), timeout_s=0.3)
    finally:
        await client_broker.close()
        await server_broker.close()


async def test_call_without_server_times_out(amqp_url: str) -> None:
    broker = Broker(amqp_url, "test-client")
    await broker.connect()
    client = RpcClient(broker, default_timeout_s=0.5)
    await client.start()
    try:
        # The queue exists (declared by topology) but nobody consumes it.
        with pytest.raises(Timeout):
            await client.call(NOBODY, Echo(text="x"))
    finally:
        await broker.close()

"""The debugger's live tail on a real broker: on shutdown, `close` ends every open stream
(a stream never ends by itself, so the server would wait its whole shutdown timeout)."""

import asyncio

import pytest

from services.debugger.records import Redaction
from services.debugger.tail import LiveTail
from shared.messaging.connection import Broker

pytestmark = pytest.mark.integration


async def test_close_ends_every_open_stream(amqp_url: str) -> None:
    broker = Broker(amqp_url, "debugger")
    await broker.connect()
    try:
        tail = LiveTail(broker, Redaction())
        subscribed = asyncio.Semaphore(0)
        ended: list[str] = []

        async def stream(flow_id: str) -> None:
            """What the stream handler does: wait for events until cancelled."""
            queue = await tail.subscribe(flow_id, "workspace")
            subscribed.release()
            try:
                await queue.get()
            except asyncio.CancelledError:
                ended.append(flow_id)
            finally:
                tail.unsubscribe(flow_id, "workspace", queue)

        streams = [asyncio.create_task(stream(flow_id)) for flow_id in ("a", "b")]
        for _ in streams:
            await asyncio.wait_for(subscribed.acquire(), 10)
        assert ended == []
        await tail.close()
        await asyncio.wait_for(asyncio.gather(*streams), 5)
        assert sorted(ended) == ["a", "b"]
        await tail.close()  # nothing left to end
    finally:
        await broker.close()

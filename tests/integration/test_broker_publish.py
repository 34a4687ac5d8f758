"""`Broker.publish` against the real RabbitMQ: the message's properties as the broker
delivers them, and an unroutable confirmed message (`mandatory`) refused as 503."""

import aio_pika
import aiormq
import pytest

from shared.errors import Unavailable
from shared.messaging.connection import Broker

pytestmark = pytest.mark.integration


async def test_a_message_carries_every_property(amqp_url: str) -> None:
    broker = Broker(amqp_url, "test")
    await broker.connect()
    observer = await aio_pika.connect(amqp_url)
    try:
        channel = await observer.channel()
        queue = await channel.declare_queue(f"test-properties-{broker.instance}", exclusive=True)
        await broker.publish(
            b'{"n": 1}',
            routing_key=queue.name,
            expiration_s=2.5,
            correlation_id="c1",
            reply_to="replies",
            message_type="Thing",
            headers={"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"},
        )
        await broker.publish(b"{}", routing_key=queue.name, persistent=False, confirm=False)
        first = await queue.get(no_ack=True, timeout=5)
        assert (
            first.body,
            first.content_type,
            first.delivery_mode,
            first.expiration,
            first.correlation_id,
            first.reply_to,
            first.type,
            first.headers,
            first.app_id,
            first.user_id,
            first.priority,
        ) == (
            b'{"n": 1}',
            "application/json",
            aio_pika.DeliveryMode.PERSISTENT,
            2.5,
            "c1",
            "replies",
            "Thing",
            {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"},
            "test",
            broker.user,
            0,
        )
        assert first.message_id is not None and len(first.message_id) == 32
        second = await queue.get(no_ack=True, timeout=5)
        assert (second.body, second.delivery_mode, second.expiration, second.headers) == (
            b"{}",
            aio_pika.DeliveryMode.NOT_PERSISTENT,
            None,
            {},
        )
    finally:
        await observer.close()
        await broker.close()


async def test_an_unroutable_confirmed_message_is_refused(amqp_url: str) -> None:
    broker = Broker(amqp_url, "test")
    await broker.connect()
    try:
        with pytest.raises(Unavailable) as refused:
            await broker.publish(b"{}", routing_key=f"no-such-queue-{broker.instance}")
        assert isinstance(refused.value.__cause__, aiormq.exceptions.PublishError)
        assert broker.publish_failures == 1
        # The channel still publishes.
        await broker.publish(b"{}", routing_key="", to_events=True, mandatory=False)
    finally:
        await broker.close()

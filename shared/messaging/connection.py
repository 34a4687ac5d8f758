"""`Broker`: the process's one robust AMQP connection, its publishing channels and the
consumers it started.

Several broker addresses (a cluster, `FLOWHOOKS_AMQP_URLS`): the connection is to one
node at a time; when it is lost, each reconnect attempt goes to the next address
(`FailoverConnection`), and the robust channels declare again and consume again there.
Until then every confirmed publish fails (503), never a false success.

Publishing rules (aio-pika's defaults are unsafe for us): messages are persistent,
`mandatory` is set and a return raises, every confirmed publish has a timeout, and any
failure to get the broker's confirm becomes `Unavailable` (503) for the caller.
Consumers each get their own channel (their own prefetch) and are declared through the
robust channel, which re-declares the queue and re-consumes after a reconnect; the
`Broker` keeps references to them so they live as long as the process.
"""

import asyncio
import collections
import random
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import aio_pika
import aiormq
import structlog
from aio_pika.abc import (
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
)
from aiormq import spec
from yarl import URL

from shared.errors import Unavailable
from shared.messaging import naming
from shared.messaging.contracts import Body, Event
from shared.messaging.encoding import DEFAULT_MIN_BYTES
from shared.messaging.topology import (
    QueueSpec,
    declare_topology,
    may_declare_topology,
    replicated,
    verify_topology,
)
from shared.messaging.trust import url_user

log = structlog.get_logger(__name__)

# AMQP delivery modes (aio-pika's `DeliveryMode`).
NOT_PERSISTENT, PERSISTENT = 1, 2

Handler = Callable[[AbstractIncomingMessage], Awaitable[None]]

_PUBLISH_FAILURES = (
    aio_pika.exceptions.DeliveryError,
    aio_pika.exceptions.PublishError,
    aio_pika.exceptions.AMQPError,
    aiormq.exceptions.AMQPError,
    ConnectionError,
    asyncio.TimeoutError,
    RuntimeError,  # aiormq raises it for a channel that closed under us
)


@dataclass
class Consumer:
    channel: AbstractRobustChannel
    queue: AbstractQueue
    tag: str


class FailoverConnection(aio_pika.RobustConnection):
    """A robust connection over several broker nodes: every attempt after the first goes
    to the next address, so a dead node is left within one reconnect interval.

    aio-pika's `RobustConnection` reconnects to its one `url`, from a private method run
    before each attempt; overriding that method (by its mangled name; aio-pika is
    pinned, and tests/integration/test_broker_failover.py kills real cluster nodes) is
    the one place every attempt passes through."""

    def __init__(self, urls: Sequence[URL], first: int, **kwargs: Any) -> None:
        super().__init__(urls[first], **kwargs)
        self._urls = list(urls)
        self._attempt = first

    async def _RobustConnection__connect_transport(self) -> None:
        self.url = self._urls[self._attempt % len(self._urls)]
        self._attempt += 1
        await super()._RobustConnection__connect_transport()  # type: ignore[misc]


class UndeclaredEvent(Exception):
    """Not in the service's declared `publishes`: its broker user may not publish it."""


class Broker:
    def __init__(
        self,
        urls: str | Sequence[str],
        service: str,
        publish_timeout_s: float = 5.0,
        replicas: int = 1,
        compress_min_bytes: int = DEFAULT_MIN_BYTES,
    ) -> None:
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        if not self.urls:
            raise ValueError("no broker address")
        self.service = service
        # The login, sent as every message's `user_id`: RabbitMQ refuses any other, so
        # consumers can tell which service published a message (`trust.py`). Every node
        # of a cluster has the same users.
        self.user = url_user(self.urls[0])
        # Identifies this process in queue names (reply and per-replica queues).
        self.instance = uuid.uuid4().hex[:12]
        self.publish_timeout_s = publish_timeout_s
        # Quorum members of every durable queue (`topology.replicated`).
        self.replicas = replicas
        # Batched messages to quorum queues at least this long are sent deflated
        # (`encoding.py`, `BatchPublisher`); 0: none.
        self.compress_min_bytes = compress_min_bytes
        self._connection: FailoverConnection | None = None
        self._confirm_channel: AbstractRobustChannel | None = None
        self._topology_channel: AbstractRobustChannel | None = None
        self._renewing: asyncio.Task[None] | None = None
        self._fast_channel: AbstractRobustChannel | None = None
        self._events: AbstractExchange | None = None  # on the confirm channel
        self._fast_events: AbstractExchange | None = None  # on the channel without confirms
        self._consumers: list[Consumer] = []
        self.reconnected: list[Callable[[], None]] = []
        # Publishes the broker did not confirm (exported as a metric, shared/metrics.py).
        self.publish_failures = 0
        # Batched messages sent and the items they held, by hop (`publish`'s `batch`: a
        # routing key, or `rpc.REPLY_HOP` for the grouped RPC replies): items per message
        # under load is what shares a message's cost among requests
        # (docs/performance.md). Exported as metrics; the hot path only adds.
        self.batch_messages: collections.Counter[str] = collections.Counter()
        self.batch_items: collections.Counter[str] = collections.Counter()
        # The routing keys this service declares it publishes on the events exchange (the
        # kernel sets it from its `ServiceSpec`); None: any.
        self.may_publish_event: Callable[[str], object] | None = None
        # For `queue_depths`: a passive declare of a missing queue closes its channel.
        self._depth_channel: AbstractRobustChannel | None = None

    async def connect(self) -> None:
        self._connection = await self._first_connection()
        self._connection.reconnect_callbacks.add(self._on_reconnect)
        assert self._connection.transport is not None
        raw = self._connection.transport.connection
        if await may_declare_topology(raw):
            # On a robust channel of its own, which declares it again after a reconnect
            # (not on the publishing channel, which `_renew_confirm_channel` replaces).
            self._topology_channel = await self._channel(confirms=False)
            await declare_topology(self._topology_channel, self.replicas)
        else:
            await verify_topology(raw)
        self._confirm_channel = await self._channel(confirms=True)
        # Replies go on a channel without confirms: the caller waits for the reply itself.
        self._fast_channel = await self._channel(confirms=False)
        self._events = await self._confirm_channel.get_exchange(naming.EVENTS_EXCHANGE)
        self._fast_events = await self._fast_channel.get_exchange(naming.EVENTS_EXCHANGE)

    async def _first_connection(self) -> FailoverConnection:
        """Connected to the first node that answers, starting at a random one so that
        replicas spread over the cluster; fails (the process exits, to be restarted) only
        when none does."""
        addresses = [URL(url) for url in self.urls]
        first = random.randrange(len(addresses))
        failure: Exception | None = None
        for offset in range(len(addresses)):
            connection = FailoverConnection(
                addresses,
                (first + offset) % len(addresses),
                client_properties={"connection_name": f"flowhooks-{self.service}-{self.instance}"},
                reconnect_interval=1,
            )
            try:
                await connection.connect()
                return connection
            except (ConnectionError, aiormq.exceptions.AMQPError, OSError) as exc:
                failure = exc
                log.warning("broker_node_unreachable", node=_node(connection.url), error=repr(exc))
                await connection.close()
        assert failure is not None
        raise failure

    @property
    def connected_url(self) -> str | None:
        """The node this process is connected to now (None while reconnecting)."""
        if not self.is_connected:
            return None
        assert self._connection is not None
        return str(self._connection.url)

    async def _channel(self, confirms: bool) -> AbstractRobustChannel:
        assert self._connection is not None
        channel = await self._connection.channel(
            publisher_confirms=confirms, on_return_raises=confirms
        )
        return channel

    def _on_reconnect(self, *_: Any) -> None:
        assert self._connection is not None
        log.info("broker_reconnected", node=_node(self._connection.url))
        for callback in self.reconnected:
            callback()

    @property
    def is_connected(self) -> bool:
        return (
            self._connection is not None
            and not self._connection.is_closed
            and (self._connection.connected.is_set())
        )

    async def publish(
        self,
        body: bytes,
        *,
        routing_key: str,
        to_events: bool = False,
        persistent: bool = True,
        mandatory: bool = True,
        confirm: bool = True,
        expiration_s: float | None = None,
        correlation_id: str | None = None,
        reply_to: str | None = None,
        message_type: str | None = None,
        headers: dict[str, Any] | None = None,
        batch: tuple[str, int] | None = None,
        content_encoding: str | None = None,
    ) -> None:
        """Publish and, with `confirm`, wait for the broker's ack (bounded by the publish
        timeout). Raises `Unavailable` when the broker did not take the message, and
        `UndeclaredEvent` for an event this service does not declare it publishes.
        `batch`: a batched message's hop and item count, for the batch counters.
        `content_encoding`: how `body` was compressed (`encoding.compress`)."""
        if to_events and self.may_publish_event and not self.may_publish_event(routing_key):
            raise UndeclaredEvent(f"{self.service} does not declare publishing {routing_key}")
        # The properties aio-pika's `Message` would give (its defaults included), built
        # directly and published on the robust channel's current aiormq channel: aio-pika's
        # message object and exchange call cost 18 µs a message where this costs 3, and
        # the confirm, a return (`mandatory`, the channel's `on_return_raises`) and a nack
        # come back from aiormq the same way.
        properties = spec.Basic.Properties(
            app_id=self.service,
            content_type="application/json",
            content_encoding=content_encoding,
            correlation_id=correlation_id,
            delivery_mode=PERSISTENT if persistent else NOT_PERSISTENT,
            # Milliseconds, as aio-pika encodes a timedelta.
            expiration=(
                str(int(timedelta(seconds=expiration_s).total_seconds() * 1000))
                if expiration_s
                else None
            ),
            headers=headers or {},
            message_type=message_type,
            priority=0,
            reply_to=reply_to,
            user_id=self.user,
        )
        channel = self._confirm_channel if confirm else self._fast_channel
        if channel is None:
            raise Unavailable("not connected to the message broker")
        exchange = channel.default_exchange
        if to_events:
            events = self._events if confirm else self._fast_events
            assert events is not None
            exchange = events
        try:
            if channel.is_closed:
                raise aiormq.exceptions.ChannelInvalidStateError(f"{channel!r} closed")
            underlay = await channel.get_underlay_channel()
            # The timeout bounds the write and the confirm inside aiormq, which takes a
            # publish it had not sent yet back (no task of its own, as `wait_for` makes).
            await underlay.basic_publish(
                body,
                exchange=exchange.name,
                routing_key=routing_key,
                properties=properties,
                mandatory=mandatory if confirm else False,
                timeout=self.publish_timeout_s,
            )
        except _PUBLISH_FAILURES as exc:
            self.publish_failures += 1
            log.warning("publish_failed", routing_key=routing_key, error=repr(exc))
            if _is_nack(exc) and channel is self._confirm_channel and self._renewing is None:
                self._renewing = asyncio.create_task(self._renew_confirm_channel(channel))
            raise Unavailable("the message broker did not accept the request") from exc
        if batch is not None:
            hop, items = batch
            self.batch_messages[hop] += 1
            self.batch_items[hop] += items

    async def _renew_confirm_channel(self, nacked: AbstractRobustChannel) -> None:
        """Publish on a new channel from now on. On RabbitMQ 3.10, once the node that
        led a quorum queue dies, a channel that published to it has every later publish
        nacked, even after a new leader is elected, until the old node is back (seen
        for over 15 s); a new channel's publishes are confirmed at once. A nack for any
        other reason costs one channel, which is cheap."""
        try:
            channel = await self._channel(confirms=True)
            self._events = await channel.get_exchange(naming.EVENTS_EXCHANGE, ensure=False)
            self._confirm_channel = channel
            log.info("publish_channel_renewed")
        except Exception as exc:  # the connection is away: the robust channels come back
            log.warning("publish_channel_not_renewed", error=repr(exc))
            return
        finally:
            self._renewing = None
        # Publishes still awaiting their confirm on the old channel get it (or time out)
        # before it closes: closing at once would fail ones the broker may have taken.
        await asyncio.sleep(self.publish_timeout_s)
        with suppress(Exception):  # gone already with its connection
            await nacked.close()

    async def publish_event(
        self, event: Event[Body], body: Body, mandatory: bool = True, confirm: bool = True
    ) -> None:
        """A persistent event on the topic exchange; confirmed unless `confirm=False`
        (best-effort events whose loss only hides an intermediate state)."""
        await self.publish(
            body.model_dump_json().encode(),
            routing_key=event.routing_key,
            to_events=True,
            mandatory=mandatory and confirm,
            confirm=confirm,
            message_type=event.body.__name__,
        )

    async def consume(
        self,
        spec: QueueSpec | str,
        handler: Handler,
        *,
        prefetch: int,
        no_ack: bool = False,
        exclusive: bool = False,
        bindings: tuple[str, ...] = (),
    ) -> Consumer:
        """Consume a queue on a channel of its own. A `QueueSpec` is a durable shared
        queue; a plain name is a per-process queue (exclusive, deleted with the
        connection; the robust channel re-declares it after a reconnect)."""
        channel = await self._channel(confirms=False)
        await channel.set_qos(prefetch_count=prefetch)
        if isinstance(spec, QueueSpec):
            spec = replicated(spec, self.replicas)
            queue = await channel.declare_queue(spec.name, durable=True, arguments=spec.arguments)
        else:
            queue = await channel.declare_queue(spec, exclusive=True, auto_delete=True)
            if bindings:
                exchange = await channel.get_exchange(naming.EVENTS_EXCHANGE)
                for key in bindings:
                    await queue.bind(exchange, key)
        tag = await queue.consume(handler, no_ack=no_ack, exclusive=exclusive)
        consumer = Consumer(channel, queue, tag)
        self._consumers.append(consumer)
        return consumer

    async def queue_depths(self, names: Iterable[str]) -> dict[str, int]:
        """The messages ready in each queue, by passive declares on a channel of their
        own (a missing queue closes that channel; it is opened again next time)."""
        if self._connection is None:
            raise Unavailable("not connected to the message broker")
        if self._depth_channel is None or self._depth_channel.is_closed:
            self._depth_channel = await self._connection.channel(publisher_confirms=False)
        depths: dict[str, int] = {}
        for name in names:
            # Not robust: nothing to declare again after a reconnect.
            queue = await self._depth_channel.declare_queue(name, passive=True, robust=False)
            depths[name] = queue.declaration_result.message_count or 0
        return depths

    async def stop_consuming(self) -> None:
        """First step of a graceful shutdown: no new deliveries; in-flight ones finish."""
        for consumer in self._consumers:
            try:
                await consumer.queue.cancel(consumer.tag)
            except Exception as exc:
                log.warning("cancel_consumer_failed", queue=consumer.queue.name, error=repr(exc))

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()


def _is_nack(exc: BaseException) -> bool:
    """The broker refused a message (`Basic.Nack`), as opposed to returning it unroutable
    (`PublishError`) or the channel or connection failing."""
    return isinstance(exc, aiormq.exceptions.DeliveryError) and not isinstance(
        exc, aiormq.exceptions.PublishError
    )


def _node(url: URL) -> str:
    """A node's address for logs, without the login."""
    return f"{url.host}:{url.port}"

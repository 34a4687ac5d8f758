"""`BatchPublisher`: many events in one persistent, confirmed message.

One AMQP message per event costs a frame encode, a confirm and, at the consumer, a
delivery and an ack, which on this machine is most of a request's CPU
(../shared/perf-findings.md). A `BatchPublisher` collects events for up to `linger_s`
(or `max_items`), publishes them as one message, and every caller of `publish` returns
only when the broker confirmed that message, or raises `Unavailable` if it did not.
So each caller keeps exactly the guarantee of its own confirmed publish."""

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

from pydantic import BaseModel

from shared.messaging.connection import Broker

Item = TypeVar("Item", bound=BaseModel)


class BatchPublisher(Generic[Item]):
    def __init__(
        self,
        broker: Broker,
        routing_key: str,
        wrap: Callable[[list[Item]], BaseModel],
        *,
        linger_s: float = 0.005,
        max_items: int = 200,
    ) -> None:
        self.broker = broker
        self.routing_key = routing_key
        self.wrap = wrap
        self.linger_s = linger_s
        self.max_items = max_items
        self._items: list[Item] = []
        self._sent: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._sending: set[asyncio.Task[None]] = set()

    async def publish(self, item: Item) -> None:
        if self._sent is None:
            self._sent = asyncio.get_running_loop().create_future()
            self._timer = asyncio.get_running_loop().call_later(self.linger_s, self._flush)
        self._items.append(item)
        sent = self._sent
        if len(self._items) >= self.max_items:
            self._flush()
        await asyncio.shield(sent)

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        items, sent = self._items, self._sent
        self._items, self._sent = [], None
        if sent is not None and items:
            task = asyncio.get_running_loop().create_task(self._send(items, sent))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def drain(self) -> None:
        """Shutdown: send what is collected and wait for every send in flight."""
        self._flush()
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)

    async def _send(self, items: list[Item], sent: "asyncio.Future[None]") -> None:
        try:
            await self.broker.publish_event(self.routing_key, self.wrap(items))
        except Exception as exc:  # Unavailable, or a bug: every waiter must hear of it
            if not sent.done():
                sent.set_exception(exc)
            return
        if not sent.done():
            sent.set_result(None)

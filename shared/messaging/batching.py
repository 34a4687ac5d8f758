"""`BatchPublisher`: many events in one persistent, confirmed message, by group commit.

One AMQP message per event costs a frame encode, a confirm and, at the consumer, a
delivery and an ack, which on this machine is most of a request's CPU
(../shared/perf-findings.md). A `BatchPublisher` sends at once when nothing is in
flight (no added latency at low load); while a message waits for its confirm, new
events collect and go together in the next message (up to `max_items` each). Every
caller of `publish` returns only when the broker confirmed the message holding its
event, or raises `Unavailable` if it did not: each caller keeps exactly the guarantee of
its own confirmed publish."""

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
        max_items: int = 200,
    ) -> None:
        self.broker = broker
        self.routing_key = routing_key
        self.wrap = wrap
        self.max_items = max_items
        self._waiting: list[tuple[Item, asyncio.Future[None]]] = []
        self._sender: asyncio.Task[None] | None = None
        self.messages_sent = 0

    async def publish(self, item: Item) -> None:
        confirmed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, confirmed))
        if self._sender is None:
            self._sender = asyncio.get_running_loop().create_task(self._send_all())
        await asyncio.shield(confirmed)

    def publish_soon(self, item: Item) -> None:
        """Best effort: batched like `publish`, but nobody waits, and a failure is only
        logged by the broker layer."""
        confirmed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Mark a failure as seen: nobody awaits this future.
        confirmed.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._waiting.append((item, confirmed))
        if self._sender is None:
            self._sender = asyncio.get_running_loop().create_task(self._send_all())

    async def _send_all(self) -> None:
        """Send what waits, in messages of up to `max_items`, until nothing waits."""
        try:
            while self._waiting:
                batch = self._waiting[: self.max_items]
                del self._waiting[: self.max_items]
                try:
                    await self.broker.publish_event(
                        self.routing_key, self.wrap([item for item, _ in batch])
                    )
                except Exception as exc:  # Unavailable, or a bug: every waiter must hear
                    for _, confirmed in batch:
                        if not confirmed.done():
                            confirmed.set_exception(exc)
                    continue
                self.messages_sent += 1
                for _, confirmed in batch:
                    if not confirmed.done():
                        confirmed.set_result(None)
        finally:
            self._sender = None

    async def drain(self) -> None:
        """Shutdown: wait until everything handed to `publish` was sent."""
        if self._sender is not None:
            await asyncio.gather(self._sender, return_exceptions=True)

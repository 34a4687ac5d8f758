"""`BatchPublisher`: many events in one persistent, confirmed message, by group commit.

One AMQP message per event costs a frame encode, a confirm and, at the consumer, a
delivery and an ack, which on this machine is most of a request's CPU (three quarters
of it Python; docs/performance.md, "The messaging patterns on this machine"). A
`BatchPublisher` sends at once when nothing is in flight (no added latency at low
load); while a message waits for its confirm, new
events collect and go together in the next message (up to `max_items` and `max_bytes`
each). Every caller of `publish` returns only when the broker confirmed the message
holding its event, or raises `Unavailable` if it did not: each caller keeps exactly the
guarantee of its own confirmed publish.

Batches never couple fates: each event is encoded on its own when it is handed over (an
event that cannot be encoded fails its own caller, `Unencodable`, and never joins a
batch), and a batch the broker refuses is split in halves until the refused event
stands alone, so only its own caller hears of it.
"""

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from shared.errors import Unavailable
from shared.messaging.connection import Broker
from shared.messaging.contracts import Command, Event

Item = TypeVar("Item", bound=BaseModel)


class Unencodable(ValueError):
    """An event that cannot be encoded as JSON (it fails alone)."""


@dataclass
class _Waiting:
    encoded: bytes
    confirmed: asyncio.Future[None]
    expires_at: float | None  # monotonic: when its sender stops waiting


class BatchPublisher(Generic[Item]):
    def __init__(
        self,
        broker: Broker,
        target: Event[Any] | Command[Any],
        *,
        max_items: int = 200,
        max_bytes: int = 8 * 1024 * 1024,
        reply_to: str | None = None,
    ) -> None:
        """`target`: an event (to the topic exchange) or a command (to its queue) whose
        body has one field, `items`, the list of what is published one by one here.
        `reply_to` is set on every message."""
        if list(target.body.model_fields) != ["items"]:
            raise TypeError(f"{target.body.__name__} must have exactly one field, `items`")
        self.broker = broker
        self.to_queue = isinstance(target, Command)
        self.routing_key = target.queue.name if isinstance(target, Command) else target.routing_key
        self.message_type = target.body.__name__
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.reply_to = reply_to
        self._waiting: list[_Waiting] = []
        self._sender: asyncio.Task[None] | None = None
        self.messages_sent = 0

    async def publish(self, item: Item, *, expires_in_s: float | None = None) -> None:
        """Returns once the message holding `item` is confirmed. `expires_in_s`: nobody
        waits for the item after that; a message whose every item has such a time
        expires in the queue at the latest of them (dead-lettered, not run late)."""
        confirmed = self._enqueue(item, expires_in_s)
        await asyncio.shield(confirmed)

    def publish_soon(self, item: Item) -> None:
        """Best effort: batched like `publish`, but nobody waits, and a failure is only
        logged by the broker layer."""
        confirmed = self._enqueue(item)
        # Mark a failure as seen: nobody awaits this future.
        confirmed.add_done_callback(lambda f: f.cancelled() or f.exception())

    def _enqueue(self, item: Item, expires_in_s: float | None = None) -> asyncio.Future[None]:
        try:
            encoded = item.model_dump_json().encode()
        except ValueError as exc:  # pydantic's serialisation error is one
            raise Unencodable(f"the event cannot be encoded: {str(exc)[:300]}") from None
        confirmed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        expires_at = time.monotonic() + expires_in_s if expires_in_s is not None else None
        self._waiting.append(_Waiting(encoded, confirmed, expires_at))
        if self._sender is None:
            self._sender = asyncio.get_running_loop().create_task(self._send_all())
        return confirmed

    def _next_batch(self) -> list[_Waiting]:
        count, size = 0, 0
        for waiting in self._waiting[: self.max_items]:
            if count and size + len(waiting.encoded) > self.max_bytes:
                break
            count, size = count + 1, size + len(waiting.encoded) + 1
        batch = self._waiting[:count]
        del self._waiting[:count]
        return batch

    async def _send_all(self) -> None:
        """Send what waits, in messages of up to `max_items`, until nothing waits."""
        try:
            while self._waiting:
                await self._send(self._next_batch())
        finally:
            self._sender = None

    async def _send(self, batch: list[_Waiting]) -> None:
        body = b'{"items":[' + b",".join(waiting.encoded for waiting in batch) + b"]}"
        deadlines = [waiting.expires_at for waiting in batch if waiting.expires_at is not None]
        expiration_s = (
            max(0.001, max(deadlines) - time.monotonic()) if len(deadlines) == len(batch) else None
        )
        try:
            await self.broker.publish(
                body,
                routing_key=self.routing_key,
                to_events=not self.to_queue,
                message_type=self.message_type,
                reply_to=self.reply_to,
                expiration_s=expiration_s,
            )
        except Exception as exc:  # Unavailable, or a bug: every waiter must hear
            if len(batch) > 1 and _refused(exc):
                # Perhaps one event the broker will not take (too large, ...): split, so
                # that it fails alone.
                half = len(batch) // 2
                await self._send(batch[:half])
                await self._send(batch[half:])
                return
            for waiting in batch:
                if not waiting.confirmed.done():
                    waiting.confirmed.set_exception(exc)
            return
        self.messages_sent += 1
        for waiting in batch:
            if not waiting.confirmed.done():
                waiting.confirmed.set_result(None)

    async def drain(self) -> None:
        """Shutdown: wait until everything handed to `publish` was sent."""
        if self._sender is not None:
            await asyncio.gather(self._sender, return_exceptions=True)


def _refused(exc: BaseException) -> bool:
    """The broker answered and said no (a nack, a return, a closed channel), as opposed
    to not answering at all (down, or no confirm in time): only then can a smaller
    message fare better."""
    if not isinstance(exc, Unavailable):
        return False
    cause = exc.__cause__
    return cause is not None and not isinstance(cause, (TimeoutError, ConnectionError))

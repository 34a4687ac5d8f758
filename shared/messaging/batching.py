"""`BatchPublisher`: many events in one persistent, confirmed message, by group commit
(shared/group_commit.py).

One AMQP message per event costs a frame encode, a confirm and, at the consumer, a
delivery and an ack, which on this machine is most of a request's CPU (three quarters
of it Python; docs/performance.md, "The messaging patterns on this machine"). A
`BatchPublisher` sends at once when nothing is in flight (no added latency at low
load); while a message waits for its confirm, new
events collect and go together in the next message (up to `max_items` and `max_bytes`
each). Every caller of `publish` returns only when the broker confirmed the message
holding its event, or raises `Unavailable` if it did not: each caller keeps exactly the
guarantee of its own confirmed publish.

A caller that stops waiting (cancelled: its own timeout) leaves its event in the batch:
`GroupCommit` gives each item a future of its own, and a flush skips the futures
already done, so no shield is needed around it (one less future a request).

Batches never couple fates: each event is encoded on its own when it is handed over (an
event that cannot be encoded fails its own caller, `Unencodable`, and never joins a
batch), and a batch the broker refuses is split in halves until the refused event
stands alone, so only its own caller hears of it.

A message to a quorum queue (or the events exchange) at least the broker's
`compress_min_bytes` long is sent deflated (shared/messaging/encoding.py).
"""

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from shared import tracing
from shared.errors import Unavailable
from shared.group_commit import FlushResult, GroupCommit
from shared.messaging.connection import Broker
from shared.messaging.contracts import Command, Event
from shared.messaging.encoding import compress

Item = TypeVar("Item", bound=BaseModel)


class Unencodable(ValueError):
    """An event that cannot be encoded as JSON (it fails alone)."""


@dataclass(frozen=True)
class _Encoded:
    encoded: bytes
    expires_at: float | None  # monotonic: when its sender stops waiting
    trace: tracing.Carrier  # its publisher's span, which the message's send span links to


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
        # Deflate big messages (`encoding.py`) on the hops whose queues are quorum, whose
        # write-ahead log costs the broker work a byte: the events exchange (its durable
        # queues are quorum) and quorum work queues; not the sync runs (classic). A test's
        # stand-in broker without the setting: never.
        quorum = not self.to_queue or (
            isinstance(target, Command) and target.queue.arguments.get("x-queue-type") == "quorum"
        )
        self.compress_min_bytes: int = getattr(broker, "compress_min_bytes", 0) if quorum else 0
        # Each event takes its bytes and a comma in the message's list.
        self._messages: GroupCommit[_Encoded] = GroupCommit(
            self._send,
            max_items,
            max_size=max_bytes + 1,
            size=lambda event: len(event.encoded) + 1,
        )
        self.messages_sent = 0

    @property
    def pending(self) -> int:
        """Items handed over and not yet in a message on its way."""
        return self._messages.pending

    async def publish(self, item: Item, *, expires_in_s: float | None = None) -> None:
        """Returns once the message holding `item` is confirmed. `expires_in_s`: nobody
        waits for the item after that; a message whose every item has such a time
        expires in the queue at the latest of them (dead-lettered, not run late)."""
        await self._messages.submit(_encode(item, expires_in_s))

    async def publish_encoded(self, encoded: bytes, *, expires_in_s: float | None = None) -> None:
        """`publish` of an item its caller encoded as JSON itself (the ingress's hot
        messages, services/ingress/run_messages.py: no model per request; results
        spliced from a worker's bytes, services/runner/runs.py)."""
        await self._messages.submit(_wrap(encoded, expires_in_s))

    def submit_encoded(self, encoded: bytes) -> "asyncio.Future[None]":
        """`publish_encoded` without a task to await it: the future is done once the
        message holding the item is confirmed, or failed with what `publish` raises
        (for a caller that goes on from a callback: services/runner/runs.py)."""
        return self._messages.submit(_wrap(encoded, None))

    def publish_encoded_soon(self, encoded: bytes) -> None:
        """`publish_soon` of an item its caller encoded as JSON itself."""
        confirmed = self._messages.submit(_wrap(encoded, None))
        confirmed.add_done_callback(lambda f: f.cancelled() or f.exception())

    async def publish_together(self, items: Sequence[Item]) -> None:
        """Every item in the same message, or none (a source's runs: services/ingress/
        sources.py): they join a batch as one unit, which a refused batch is never split
        through, and their caller hears the fate of that one message."""
        parts = [_encode(item, None).encoded for item in items]
        trace = tracing.carrier() if tracing.enabled() else {}
        await self._messages.submit(_Encoded(b",".join(parts), None, trace))

    def publish_soon(self, item: Item) -> None:
        """Best effort: batched like `publish`, but nobody waits, and a failure is only
        logged by the broker layer."""
        confirmed = self._messages.submit(_encode(item, None))
        # Mark a failure as seen: nobody awaits this future.
        confirmed.add_done_callback(lambda f: f.cancelled() or f.exception())

    async def _send(self, batch: list[_Encoded]) -> FlushResult:
        """One message of `batch`; what each event's caller hears."""
        body, content_encoding = compress(
            b'{"items":[' + b",".join(event.encoded for event in batch) + b"]}",
            self.compress_min_bytes,
        )
        deadlines = [event.expires_at for event in batch if event.expires_at is not None]
        expiration_s = (
            max(0.001, max(deadlines) - time.monotonic()) if len(deadlines) == len(batch) else None
        )
        try:
            with _send_span(self.routing_key, batch):
                await self.broker.publish(
                    body,
                    routing_key=self.routing_key,
                    to_events=not self.to_queue,
                    message_type=self.message_type,
                    reply_to=self.reply_to,
                    expiration_s=expiration_s,
                    headers=_trace_headers(),
                    batch=(self.routing_key, len(batch)),
                    content_encoding=content_encoding,
                )
        except Exception as exc:  # Unavailable, or a bug: every waiter must hear
            if len(batch) > 1 and _refused(exc):
                # Perhaps one event the broker will not take (too large, ...): split, so
                # that it fails alone.
                half = len(batch) // 2
                return [
                    *(await self._send(batch[:half]) or [None] * half),
                    *(await self._send(batch[half:]) or [None] * (len(batch) - half)),
                ]
            return [exc] * len(batch)
        self.messages_sent += 1
        return None

    async def drain(self) -> None:
        """Shutdown: wait until everything handed to `publish` was sent."""
        await self._messages.drain()


def _encode(item: BaseModel, expires_in_s: float | None) -> _Encoded:
    try:
        encoded = item.model_dump_json().encode()
    except ValueError as exc:  # pydantic's serialisation error is one
        raise Unencodable(f"the event cannot be encoded: {str(exc)[:300]}") from None
    return _wrap(encoded, expires_in_s)


def _wrap(encoded: bytes, expires_in_s: float | None) -> _Encoded:
    expires_at = time.monotonic() + expires_in_s if expires_in_s is not None else None
    return _Encoded(encoded, expires_at, tracing.carrier() if tracing.enabled() else {})


def _send_span(
    routing_key: str, batch: list[_Encoded]
) -> "contextlib.AbstractContextManager[object]":
    """The message's send span: a child of its one item's span, or (many items of many
    traces) a trace of its own linked to each item's (messaging semantic conventions)."""
    if not tracing.enabled():
        return contextlib.nullcontext()
    alone = len(batch) == 1
    return tracing.span(
        f"{routing_key} publish",
        kind=tracing.PRODUCER,
        parent=batch[0].trace if alone else {},
        links=() if alone else [tracing.link_to(event.trace) for event in batch],
        attributes={
            "messaging.system": "rabbitmq",
            "messaging.operation.type": "send",
            "messaging.destination.name": routing_key,
            "messaging.batch.message_count": len(batch),
        },
    )


def _trace_headers() -> dict[str, object] | None:
    """The send span's context in the AMQP headers (None when traces are off: no span)."""
    return (dict(tracing.carrier()) or None) if tracing.enabled() else None


def _refused(exc: BaseException) -> bool:
    """The broker answered and said no (a nack, a return, a closed channel), as opposed
    to not answering at all (down, or no confirm in time): only then can a smaller
    message fare better."""
    if not isinstance(exc, Unavailable):
        return False
    cause = exc.__cause__
    return cause is not None and not isinstance(cause, (TimeoutError, ConnectionError))

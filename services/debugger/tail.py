"""The live tail: `GET /v1/flows/{id}/requests/stream` as server-sent events.

Each debugger process, once it has a first subscriber, consumes the same events as the
durable intake on an exclusive queue of its own (so a tail sees every request whichever
replica stores it) and passes summaries to the subscribers of that flow and workspace.
A subscriber that does not keep up loses events rather than holding memory."""

import asyncio
from typing import Any

import orjson
import structlog
from aio_pika.abc import AbstractIncomingMessage

from services.debugger.records import ROWS_BY_EVENT, Redaction, rows_from_event
from services.debugger.store import RequestRow
from shared.messaging import encoding, naming
from shared.messaging.connection import Broker

log = structlog.get_logger(__name__)

TAILED = tuple(ROWS_BY_EVENT)


def summary(row: RequestRow) -> dict[str, Any]:
    received, finished = row.received_at, row.finished_at
    return {
        "id": row.id,
        "flow_id": str(row.flow_id),
        "received_at": received,
        "method": row.method,
        "mode": row.mode,
        "outcome": row.outcome,
        "status_code": row.status_code,
        "duration_ms": round((finished - received).total_seconds() * 1000, 3) if finished else None,
        # As the listing's items: only while the run waits in a `delay` step.
        **({"resume_at": row.resume_at} if row.resume_at is not None else {}),
    }


class LiveTail:
    def __init__(self, broker: Broker, redaction: Redaction, queue_size: int = 1000) -> None:
        self.broker = broker
        self.redaction = redaction
        self.queue_size = queue_size
        self._subscribers: dict[tuple[str, str], set[asyncio.Queue[dict[str, Any]]]] = {}
        self._consuming = asyncio.Lock()
        self._started = False
        # The request handlers streaming to subscribers, ended by `close` on shutdown.
        self._streams: set[asyncio.Task[Any]] = set()

    async def subscribe(self, flow_id: str, workspace_id: str) -> asyncio.Queue[dict[str, Any]]:
        async with self._consuming:
            if not self._started:
                await self.broker.consume(
                    naming.tail_queue_name(self.broker.instance),
                    self._on_event,
                    prefetch=1000,
                    no_ack=True,
                    bindings=TAILED,
                )
                self._started = True
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(self.queue_size)
        self._subscribers.setdefault((flow_id, workspace_id), set()).add(queue)
        stream = asyncio.current_task()
        if stream is not None:
            self._streams.add(stream)
        return queue

    def unsubscribe(
        self, flow_id: str, workspace_id: str, queue: asyncio.Queue[dict[str, Any]]
    ) -> None:
        subscribers = self._subscribers.get((flow_id, workspace_id), set())
        subscribers.discard(queue)
        if not subscribers:
            self._subscribers.pop((flow_id, workspace_id), None)
        stream = asyncio.current_task()
        if stream is not None:
            self._streams.discard(stream)

    async def close(self) -> None:
        """Ends every open stream (its handler returns; the client sees the end and may
        reconnect elsewhere): a stream never ends by itself, so on shutdown the server
        would otherwise wait its whole shutdown timeout for each."""
        for stream in list(self._streams):
            stream.cancel()

    async def _on_event(self, message: AbstractIncomingMessage) -> None:
        if not self._subscribers:
            return
        try:
            rows = rows_from_event(
                message.routing_key or "", encoding.body(message), self.redaction, message.headers
            )
        except Exception:  # unreadable: the durable intake logs it
            return
        for row in rows:
            key = (str(row.flow_id), str(row.workspace_id))
            for queue in self._subscribers.get(key, ()):
                try:
                    queue.put_nowait(summary(row))
                except asyncio.QueueFull:
                    log.warning("tail_subscriber_too_slow", flow_id=key[0])


def sse(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

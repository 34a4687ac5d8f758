"""The debugger's intake: events from its quorum queue, written in batches (one
transaction per batch, idempotent on the request id) and acked only after commit. A
failed write (PostgreSQL restarting) leaves the batch unacked and retried, so nothing
is lost; a crash before commit means the broker delivers the batch again."""

import asyncio
from typing import Any

import structlog
from aio_pika.abc import AbstractIncomingMessage
from pydantic import ValidationError

from services.debugger.records import Redaction, flow_from_event, rows_from_event
from services.debugger.store import COLUMNS, RequestStore
from shared.messaging import naming

log = structlog.get_logger(__name__)

RETRY_DELAY_S = 1.0
RANK = COLUMNS.index("source_rank")


class BatchIngest:
    def __init__(
        self, store: RequestStore, redaction: Redaction, batch_size: int, linger_s: float
    ) -> None:
        self.store = store
        self.redaction = redaction
        self.batch_size = batch_size
        self.linger_s = linger_s
        # (message, its rows are flows (not requests), its rows)
        self._pending: list[tuple[AbstractIncomingMessage, bool, list[tuple[Any, ...]]]] = []
        self._pending_rows = 0
        self._flush_lock = asyncio.Lock()
        self._timer: asyncio.Task[None] | None = None
        self.stored = 0

    async def on_event(self, message: AbstractIncomingMessage) -> None:
        is_flow = message.routing_key == naming.FLOW_CHANGED
        try:
            rows = (
                [flow_from_event(message.body)]
                if is_flow
                else rows_from_event(message.routing_key or "", message.body, self.redaction)
            )
        except ValidationError:
            log.error(
                "bad_debugger_event", routing_key=message.routing_key, body=message.body[:200]
            )
            await message.reject(requeue=False)
            return
        self._pending.append((message, is_flow, rows))
        self._pending_rows += len(rows)
        if self._pending_rows >= self.batch_size:
            await self.flush()
        elif self._timer is None:
            self._timer = asyncio.create_task(self._linger())

    async def _linger(self) -> None:
        await asyncio.sleep(self.linger_s)
        self._timer = None
        await self.flush()

    async def flush(self) -> None:
        async with self._flush_lock:
            while self._pending:
                batch, self._pending, self._pending_rows = self._pending, [], 0
                await self._write(batch)

    async def _write(
        self, batch: list[tuple[AbstractIncomingMessage, bool, list[tuple[Any, ...]]]]
    ) -> None:
        # The same request twice in one batch: keep its last event only (ON CONFLICT
        # cannot touch one row twice in a statement); the rank rule sorts out the rest.
        rows: dict[str, tuple[Any, ...]] = {}
        flows: dict[Any, tuple[Any, ...]] = {}
        for _, is_flow, message_rows in batch:
            for row in message_rows:
                if is_flow:
                    if row[0] not in flows or flows[row[0]][2] < row[2]:
                        flows[row[0]] = row
                elif row[0] not in rows or rows[row[0]][RANK] <= row[RANK]:
                    rows[row[0]] = row
        while True:
            try:
                await self.store.write(list(rows.values()), list(flows.values()))
                break
            except Exception as exc:
                log.warning("batch_write_failed", size=len(batch), error=repr(exc))
                await asyncio.sleep(RETRY_DELAY_S)
        for message, _, _ in batch:
            try:
                await message.ack()
            except Exception as exc:
                # The channel went away: the broker redelivers, the upsert absorbs it.
                log.warning("ack_failed", error=repr(exc))
        self.stored += len(rows)

    async def close(self) -> None:
        """Shutdown, after consuming stopped: write and ack what is pending."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        await self.flush()

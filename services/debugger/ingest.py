"""The debugger's intake: events from its quorum queue, written in batches (one
transaction per batch, idempotent on the request id) and acked only after commit. A
failed write (PostgreSQL restarting) leaves the batch unacked and retried, so nothing
is lost; a crash before commit means the broker delivers the batch again."""

import asyncio
from typing import Any

import structlog
from aio_pika.abc import AbstractIncomingMessage
from pydantic import ValidationError

from services.debugger.records import Redaction, row_from_event
from services.debugger.store import RequestStore

log = structlog.get_logger(__name__)

RETRY_DELAY_S = 1.0


class BatchIngest:
    def __init__(
        self, store: RequestStore, redaction: Redaction, batch_size: int, linger_s: float
    ) -> None:
        self.store = store
        self.redaction = redaction
        self.batch_size = batch_size
        self.linger_s = linger_s
        self._pending: list[tuple[AbstractIncomingMessage, tuple[Any, ...]]] = []
        self._flush_lock = asyncio.Lock()
        self._timer: asyncio.Task[None] | None = None
        self.stored = 0

    async def on_event(self, message: AbstractIncomingMessage) -> None:
        try:
            row = row_from_event(message.routing_key or "", message.body, self.redaction)
        except ValidationError:
            log.error(
                "bad_debugger_event", routing_key=message.routing_key, body=message.body[:200]
            )
            await message.reject(requeue=False)
            return
        self._pending.append((message, row))
        if len(self._pending) >= self.batch_size:
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
                batch, self._pending = (
                    self._pending[: self.batch_size],
                    self._pending[self.batch_size :],
                )
                await self._write(batch)

    async def _write(self, batch: list[tuple[AbstractIncomingMessage, tuple[Any, ...]]]) -> None:
        # The same request twice in one batch: keep its last event only (ON CONFLICT
        # cannot touch one row twice in a statement); the rank rule sorts out the rest.
        rows: dict[str, tuple[Any, ...]] = {}
        for _, row in batch:
            if row[0] not in rows or rows[row[0]][-1] <= row[-1]:
                rows[row[0]] = row
        while True:
            try:
                await self.store.write(list(rows.values()))
                break
            except Exception as exc:
                log.warning("batch_write_failed", size=len(batch), error=repr(exc))
                await asyncio.sleep(RETRY_DELAY_S)
        for message, _ in batch:
            try:
                await message.ack()
            except Exception as exc:
                # The channel went away: the broker redelivers, the upsert absorbs it.
                log.warning("ack_failed", error=repr(exc))
        self.stored += len(batch)

    async def close(self) -> None:
        """Shutdown, after consuming stopped: write and ack what is pending."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        await self.flush()

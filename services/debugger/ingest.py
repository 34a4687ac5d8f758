"""The debugger's intake: events from its quorum queue, written in batches (one
upsert statement per batch, idempotent on the request id, store.py) and acked only
after commit, with one `multiple` ack per batch. A message of progress only may wait
for a later batch, no longer than a batch lingers (`_held_back`).

Failures, and why they are handled this way (no event of one workspace can stop the
intake of everyone):
- A body that cannot be read at all (not JSON, wrong schema) is logged and rejected
  without requeue (with the batch it arrived in): it would fail the same way every
  time. In a batched message, an
  unreadable item is left out and the others are stored (records.py).
- PostgreSQL away (connection refused or lost, starting up, shutting down, read-only
  or no writable host yet during a failover, out of connections or disk, schema not
  migrated): the write is
  retried in place, with backoff, the batch still unacked, for as long as it takes:
  nothing is lost. Not nack-and-requeue: the quorum queue counts every requeue
  against its delivery limit and drops the message past it.
- PostgreSQL refusing the values themselves (class 22 data exceptions, constraint
  violations, class 54 limits, a value asyncpg cannot encode): retrying cannot help,
  so the batch is split in halves (by messages, then by the rows of one message) until
  the refused rows stand alone (a few writes, not one per row). Each refused row is
  stored in its reduced form (ids, times, outcome and "not storable: <why>", no bodies
  or trace; records.reduced_row); a row whose reduced form is refused too is dropped
  with an error log. Everything else in the batch is stored and acked.
- Any other failure (statement timeout, out of memory, deadlock, an unknown error) is
  retried `unknown_retries` times, then handled as refused data.
- A crash before commit leaves the batch unacked: the broker delivers it again and the
  upsert absorbs the repeat.
"""

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Sequence

import asyncpg
import structlog
from aio_pika.abc import AbstractIncomingMessage

from services.debugger.metrics import DebuggerMetrics, dead_letter_reason
from services.debugger.records import (
    Deferred,
    Redaction,
    deferred_rows,
    flow_from_event,
    reduced_row,
)
from services.debugger.store import FlowRow, RequestRow, RequestStore
from shared import tracing
from shared.messaging import encoding, naming
from shared.messaging.trust import check_publisher
from shared.retry import RetryPolicy

log = structlog.get_logger(__name__)

RETRY_DELAY_S = 1.0
MAX_RETRY_DELAY_S = 30.0
UNKNOWN_RETRIES = 3
# Runs the broker dead-lettered (counted on arrival: a redelivered message counts again).
_DEAD_LETTERED = frozenset((naming.RUN_EXPIRED, naming.RUN_DEAD_LETTERED))

# The values themselves: retrying cannot help.
REFUSED_DATA: tuple[type[BaseException], ...] = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
    asyncpg.exceptions.ProgramLimitExceededError,
    UnicodeError,
    OverflowError,
    ValueError,
    TypeError,
)
# PostgreSQL (or the way to it) is away or not ready: retry for as long as it takes.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,  # ConnectionRefusedError, ConnectionResetError, ...
    TimeoutError,
    asyncpg.InterfaceError,  # connection closed, pool closing
    asyncpg.PostgresConnectionError,  # class 08
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.ReadOnlySQLTransactionError,  # a standby after a failover
    # Mid-failover: every host of a multi-host URL up but none writable
    # (TargetServerAttributeNotMatched), or a pooled connection whose server died while
    # it was idle ("cannot switch to state ...", once). Not "unknown": that ends in the
    # rows dropped and their messages acked.
    asyncpg.exceptions.InternalClientError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.DiskFullError,
    asyncpg.exceptions.SyntaxOrAccessError,  # class 42: not migrated, no permission
)


def classify(exc: BaseException) -> str:
    """One of "data", "unavailable" or "unknown"."""
    if isinstance(exc, REFUSED_DATA):
        return "data"
    if isinstance(exc, UNAVAILABLE):
        return "unavailable"
    return "unknown"


def _trace_stored(rows: Sequence[RequestRow], started_ns: int) -> None:
    """Each request's share of the batch's write, as a span of its own trace (one
    transaction wrote them all: the same times)."""
    if not tracing.enabled():
        return
    for row in rows:
        tracing.recorded_span(
            "store debugger.requests",
            row.trace_parent,
            started_ns,
            kind=tracing.CONSUMER,
            attributes={
                "db.system.name": "postgresql",
                "db.operation.name": "INSERT",
                "db.collection.name": "debugger.requests",
                "db.operation.batch.size": len(rows),
                "flowhooks.request_id": row.id,
                "flowhooks.outcome": row.outcome,
            },
        )


class _Abandoned(Exception):
    """Shutdown gave up on a write that keeps failing; its messages stay unacked."""


class _Refused(Exception):
    """A write PostgreSQL refused for its values (or kept failing for no known reason)."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(repr(cause))
        self.cause = cause


# (message, its rows are flows (not requests), its rows: progress rows deferred, built
# only if nothing newer about the same request is in the batch; records.Deferred)
Pending = tuple[AbstractIncomingMessage, bool, Sequence[RequestRow | Deferred | FlowRow]]
# (the loop time until which the message may be held back for a later batch, 0.0:
# never; the message)
_Entry = tuple[float, Pending]
# A hold that ends within this much is over: uvloop's timers count whole milliseconds,
# so the flush at a hold's end may come a little before it (and would hold again).
_TIMER_SLACK_S = 0.002


def _held_back(entries: list[_Entry], now: float) -> tuple[list[Pending], list[_Entry]]:
    """The entries to write now, and those held for a later batch: a message of progress
    rows only (`queued`, `running`, `waiting`) still within its hold, keeping only the
    rows that nothing of a higher rank about the same request has come to replace (those
    are decided by this batch: their newer row is in it). An async request's
    `request.queued` usually comes one batch before its `run.finished`; held, the two
    are one row version instead of an insert and an update."""
    best: dict[str, int] = {}
    for _, (_, _, rows) in entries:
        for row in rows:
            if not isinstance(row, FlowRow) and best.get(row.id, -1) < row.source_rank:
                best[row.id] = row.source_rank
    due: list[Pending] = []
    held: list[_Entry] = []
    for hold_until, item in entries:
        if hold_until > now:
            message, _, rows = item
            still_open = [
                row
                for row in rows
                if not isinstance(row, FlowRow) and best[row.id] <= row.source_rank
            ]
            if still_open:
                held.append((hold_until, (message, False, still_open)))
                continue
        due.append(item)
    return due, held


class BatchIngest:
    def __init__(
        self,
        store: RequestStore,
        redaction: Redaction,
        batch_size: int,
        linger_s: float,
        *,
        retry_delay_s: float = RETRY_DELAY_S,
        max_retry_delay_s: float = MAX_RETRY_DELAY_S,
        unknown_retries: int = UNKNOWN_RETRIES,
        runner_user: str | None = None,
        after_write: Callable[[Sequence[RequestRow]], None] | None = None,
        metrics: DebuggerMetrics | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics if metrics is not None else DebuggerMetrics()
        # Told the rows of each committed write (alerts.py); must neither block nor raise.
        self.after_write = after_write
        # The only broker user whose `flow.changed` is believed (shared/messaging/trust.py);
        # None: not checked (tests that feed messages without a broker).
        self.runner_user = runner_user
        self.redaction = redaction
        self.batch_size = batch_size
        self.linger_s = linger_s
        # PostgreSQL away: a batch write is retried for as long as it takes.
        self.write_retry = RetryPolicy.doubling(retry_delay_s, max_retry_delay_s)
        self.unknown_retries = unknown_retries
        self._pending: list[_Entry] = []
        self._pending_rows = 0
        # Progress messages held back from the batches written so far (`_held_back`),
        # and the written messages whose ack waits for an older held one (`_settle`).
        self._held: list[_Entry] = []
        self._written: list[AbstractIncomingMessage] = []
        # Unreadable messages, rejected with the batch they arrived in (before its ack).
        self._unreadable: list[AbstractIncomingMessage] = []
        self._flush_lock = asyncio.Lock()
        # The next flush by time (a batch's linger, or a held message's end of hold),
        # and when; the flushes it started (kept referenced until done).
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._timed_flushes: set[asyncio.Task[None]] = set()
        self._abandoned = asyncio.Event()
        # Counters for logs, metrics and tests.
        self.stored = 0  # request rows written (whole or reduced)
        self.writes = 0  # batches written (rows per write: stored / writes)
        self.reduced = 0  # request rows stored in their reduced form
        self.dropped = 0  # rows not stored at all (not even reduced)
        self.rejected = 0  # messages refused as unreadable
        self.write_failures = 0

    @property
    def pending(self) -> int:
        """Messages received and not yet written (nor acked, nor rejected)."""
        return len(self._pending) + len(self._held) + len(self._unreadable)

    async def on_event(self, message: AbstractIncomingMessage) -> None:
        is_flow = message.routing_key == naming.FLOW_CHANGED
        try:
            if is_flow and self.runner_user is not None:
                check_publisher(message, self.runner_user)  # a forged owner is dropped
            # Inflated if sent deflated (a dead-lettered run keeps its encoding too).
            raw = encoding.body(message)
            rows = (
                [flow_from_event(raw)]
                if is_flow
                else deferred_rows(message.routing_key or "", raw, self.redaction, message.headers)
            )
        except Exception as exc:  # unreadable (ValidationError is a ValueError), or a bug
            log.error(
                "bad_debugger_event",
                routing_key=message.routing_key,
                error=repr(exc)[:500],
                body=message.body[:200],  # as received: perhaps what did not inflate
            )
            self._unreadable.append(message)
        else:
            if message.routing_key in _DEAD_LETTERED:
                self.metrics.dead_letters.labels(dead_letter_reason(message.headers)).inc(len(rows))
            loop = asyncio.get_running_loop()
            # Progress alone may wait for its outcome, as long as a batch lingers: a
            # request shows as `queued` no later than it would have without the hold.
            progress_only = not is_flow and all(isinstance(row, Deferred) for row in rows)
            hold_until = loop.time() + self.linger_s if progress_only else 0.0
            self._pending.append((hold_until, (message, is_flow, rows)))
            self._pending_rows += len(rows)
            if self._pending_rows >= self.batch_size:
                await self.flush(hold=True)
                return
        self._flush_by(asyncio.get_running_loop().time() + self.linger_s)

    def _flush_by(self, at: float) -> None:
        """A flush at loop time `at` at the latest (an earlier one already set stays)."""
        if self._timer is not None:
            if self._timer_at <= at:
                return
            self._timer.cancel()
        self._timer_at = at
        self._timer = asyncio.get_running_loop().call_at(at, self._timed_flush)

    def _timed_flush(self) -> None:
        self._timer = None
        task = asyncio.create_task(self.flush(hold=True))
        self._timed_flushes.add(task)
        task.add_done_callback(self._timed_flushes.discard)

    async def flush(self, *, hold: bool = False) -> None:
        """Write what has come in and ack it. `hold`: progress messages still within
        their hold wait for a later batch (`_held_back`); else everything is written."""
        async with self._flush_lock:
            first = True
            while first or self._pending or self._unreadable:
                first = False
                entries = self._held + self._pending
                self._pending, self._pending_rows = [], 0
                unreadable, self._unreadable = self._unreadable, []
                if not entries and not unreadable:
                    return
                if hold:
                    now = asyncio.get_running_loop().time()
                    batch, held = _held_back(entries, now + _TIMER_SLACK_S)
                else:
                    batch, held = [item for _, item in entries], []
                self._held = held
                try:
                    if batch:
                        await self._store_apart(batch)
                except _Abandoned:
                    return
                await self._settle(batch, unreadable, held)
            if self._held:
                self._flush_by(min(hold_until for hold_until, _ in self._held))

    async def _settle(
        self,
        batch: list[Pending],
        unreadable: list[AbstractIncomingMessage],
        held: Sequence[_Entry] = (),
    ) -> None:
        """After the batch's commit: reject its unreadable messages, then ack the rest
        with one `multiple` ack per channel (for its newest delivery) instead of one
        frame per message. A multiple ack settles every outstanding delivery of the
        channel up to that one: all of those are in this batch or settled already
        (events join the batch in delivery order, batches are written one at a time,
        and this batch's rejects were sent, each awaited, before the ack), except the
        messages held back for a later batch. So on a channel with a held message the
        ack goes up to the newest written delivery before the oldest held one; the
        written ones after it wait, unacked, for a later batch's ack (a frame each
        would cost more than the wait: a held message is written within a linger). A
        message without a delivery tag (a test double) is acked alone."""
        for message in unreadable:
            await self._reject(message)
        oldest_held: dict[int, int] = {}
        for _, (message, _, _) in held:
            tag = getattr(message, "delivery_tag", None)
            if isinstance(tag, int):
                channel = id(message.channel)
                oldest_held[channel] = min(tag, oldest_held.get(channel, tag))
        newest: dict[int, AbstractIncomingMessage] = {}
        written, self._written = [*self._written, *(message for message, _, _ in batch)], []
        for message in written:
            tag = getattr(message, "delivery_tag", None)
            if not isinstance(tag, int):
                await self._ack_one(message, multiple=False)
                continue
            channel = id(message.channel)
            if tag > oldest_held.get(channel, tag):
                self._written.append(message)
                continue
            current = newest.get(channel)
            if current is None or (current.delivery_tag or 0) < tag:
                newest[channel] = message
        for message in newest.values():
            await self._ack_one(message, multiple=True)

    async def _ack_one(self, message: AbstractIncomingMessage, multiple: bool) -> None:
        try:
            await message.ack(multiple=multiple)
        except Exception as exc:
            # The channel went away: the broker redelivers, the upsert absorbs it.
            log.warning("ack_failed", error=repr(exc))

    async def _store_apart(self, batch: list[Pending], top: bool = True) -> None:
        """Store the batch in one transaction; if PostgreSQL refuses it for its values,
        halve it (by messages, then by the rows of one message) until each refused row
        stands alone, and store that one reduced (or drop it). Unknown failures are
        retried for the whole batch only, not again for each part."""
        try:
            await self._store(batch, self.unknown_retries if top else 0)
            return
        except _Refused as refused:
            if len(batch) == 1 and len(batch[0][2]) <= 1:
                await self._store_reduced(batch[0], refused.cause)
                return
        if len(batch) > 1:
            half = len(batch) // 2
            parts = [batch[:half], batch[half:]]
        else:
            message, is_flow, rows = batch[0]
            half = len(rows) // 2
            parts = [[(message, is_flow, rows[:half])], [(message, is_flow, rows[half:])]]
        for part in parts:
            await self._store_apart(part, top=False)

    async def _store_reduced(self, item: Pending, cause: BaseException) -> None:
        message, is_flow, rows = item
        if not rows:
            return
        row = rows[0].build() if isinstance(rows[0], Deferred) else rows[0]
        reason = f"{type(cause).__name__}: {str(cause).strip()[:500]}"
        if isinstance(row, RequestRow):
            try:
                await self._store([(message, False, [reduced_row(row, reason)])], 0)
                self.reduced += 1
                log.error(
                    "debugger_row_stored_reduced",
                    request_id=row.id,
                    routing_key=message.routing_key,
                    error=reason,
                )
                return
            except _Refused as again:
                reason += f"; reduced form: {again.cause!r}"[:500]
        self.dropped += 1
        log.error(
            "debugger_row_dropped",
            kind="flow" if is_flow else "request",
            id=str(row.id if isinstance(row, RequestRow) else row.flow_id)[:200],
            routing_key=message.routing_key,
            error=reason,
        )

    async def _store(self, batch: list[Pending], unknown_retries: int) -> None:
        """Write the batch in one transaction, retrying while PostgreSQL is away. Raises
        `_Refused` (the values, or an unknown failure that outlasted `unknown_retries`),
        or `_Abandoned` (shutdown gave up)."""
        # The same request twice in one batch: keep its last event only (ON CONFLICT
        # cannot touch one row twice in a statement); the rank rule sorts out the rest.
        rows: dict[str, RequestRow | Deferred] = {}
        flows: dict[uuid.UUID, FlowRow] = {}
        for _, _, message_rows in batch:
            for row in message_rows:
                if isinstance(row, FlowRow):
                    known = flows.get(row.flow_id)
                    if known is None or known.version < row.version:
                        flows[row.flow_id] = row
                elif row.id not in rows or rows[row.id].source_rank <= row.source_rank:
                    rows[row.id] = row
        written = [row.build() if isinstance(row, Deferred) else row for row in rows.values()]
        unknown = 0
        failures = 0
        started_ns = time.time_ns()
        while True:
            try:
                await self.store.write(written, list(flows.values()))
                _trace_stored(written, started_ns)
                self.stored += len(rows)
                self.writes += 1
                self.metrics.committed(written)
                if self.after_write is not None and written:
                    try:
                        self.after_write(written)
                    except Exception:  # an alert bug must never stop the intake
                        log.exception("after_write_failed")
                return
            except Exception as exc:
                kind = classify(exc)
                if kind == "data":
                    raise _Refused(exc) from exc
                if kind == "unknown":
                    unknown += 1
                    if unknown > unknown_retries:
                        raise _Refused(exc) from exc
                self.write_failures += 1
                log.warning(
                    "batch_write_failed", messages=len(batch), kind=kind, error=repr(exc)[:500]
                )
                if self._abandoned.is_set():
                    raise _Abandoned from exc
                failures += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._abandoned.wait(), self.write_retry.delay_s(failures)
                    )

    async def _reject(self, message: AbstractIncomingMessage) -> None:
        self.rejected += 1
        try:
            await message.reject(requeue=False)
        except Exception as exc:
            log.warning("reject_failed", error=repr(exc))

    async def close(self, timeout_s: float = 10.0) -> None:
        """Shutdown, after consuming stopped: write and ack what is pending. A write
        still failing after `timeout_s` is given up: its messages stay unacked and the
        broker delivers them again once this process's connection is closed."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        try:
            await asyncio.wait_for(self.flush(hold=False), timeout_s)
        except TimeoutError:
            log.warning("shutdown_flush_gave_up", pending=self.pending)
            self._abandoned.set()

"""Failure alerts: per flow, a signed POST (Standard Webhooks, shared/standard_webhooks.py)
to the flow's alert URL when its failure rate over a window crosses a threshold, and when
runs of it are dead-lettered; each kind at most once per window.

How it stays off the ingest path and correct across replicas:
- The ingest, after each committed batch, hands this module the rows it wrote
  (`AlertEvaluator.note_written`: no I/O, never raises). Flows with finished or
  dead-lettered rows join a bounded set; beyond `queue_size` flows they are dropped (and
  counted) and the periodic sweep catches up.
- Every `eval_interval_s` the set is drained: one query finds which of those flows have
  an alert whose gate is open, then one count per such flow over its window (the
  `(flow_id, outcome, received_at)` index) and one look at its dead-lettered rows (a
  partial index). So a flow is evaluated at most once per interval per replica, and a
  flow without an alert costs a share of one indexed lookup.
- Every `sweep_interval_s` one replica (an advisory lock) evaluates every alert: a
  trigger lost to a restart or to a full set is found there.
- The gate is in PostgreSQL: firing is `UPDATE alerts ... WHERE fired_at is older than
  the window` and the notice's INSERT in the same transaction (the outbox). Two
  replicas evaluating the same flow cannot both pass it; a crash either leaves both or
  neither.

Delivery (`AlertSender`, through the delivery engine shared with the runner's callbacks,
shared/delivery.py): any replica claims due notices for a lease (`claimed_until`,
`FOR UPDATE SKIP LOCKED`), POSTs them outside any transaction and records the answer:
2xx delivered; anything else (3xx included: redirects are not followed) is retried after
`retry_delay_s`, doubling up to `max_retry_delay_s`, at most `max_attempts` in all (a 410
Gone ends it at once). A sender that dies mid-request leaves the claim to expire and
another sender tries again. So the guarantee is: at most one notice of each kind per
flow per window is created, and each is delivered at least once (a retry, or a sender
dying after the receiver answered, can repeat it) under the same `webhook-id`, which is
the receiver's idempotency key. The URL is checked against the address policy when it
is saved and again at each attempt (shared/outbound.py).

Fairness (contract, "Isolation": a slow or dead destination delays only its owner):
notices are claimed round robin across workspaces (the first due notice of each
workspace, then the second of each, ...), never the oldest N of one, and delivered
concurrently, each on its own task, up to `concurrency` at once: a slow attempt holds
its own task, not a batch. Before each attempt the `DeliveryGuard`
(shared/delivery_guard.py) is asked, without waiting: at most `per_destination` attempts
to one scheme+host+port, none while its circuit is open, each workspace within its fair
share of `slots` (fewer than `concurrency`: the rest is room for another workspace's
notice at once). A notice refused is put back: its claim released, its attempt given
back, due again when the guard says (a busy destination: 2 s; an open circuit: the
rest of the cool-down, spread). Short connect and first-byte timeouts bound what a
tarpit can hold."""

import asyncio
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import structlog

from services.debugger.records import RANK_DEAD_LETTER
from services.debugger.store import RequestRow
from shared import tracing
from shared.delivery import DeliveryEngine, DeliveryKind
from shared.delivery_guard import Deferred, DeliveryGuard
from shared.redaction import safe_url
from shared.retry import RetryPolicy
from shared.schemas.vocabulary import FAILED_OUTCOMES, FINISHED_OUTCOMES

log = structlog.get_logger(__name__)

# What counts: `FINISHED_OUTCOMES` and `FAILED_OUTCOMES` (shared/schemas/vocabulary.py).
FAILURE_RATE = "flow.failure_rate"
DEAD_LETTERED = "flow.dead_lettered"
# Request ids quoted in a dead-letter notice (the count is always whole).
MAX_QUOTED_IDS = 20
SWEEP_LOCK = "flowhooks:debugger:alerts-sweep"
# A notice put back because its destination or workspace is busy is due again 2 s after
# (plus up to a second of jitter): about two polls of the outbox. Its receiver's answer
# is read up to 64 KiB (and dropped).
ALERT_DELIVERY = DeliveryKind("flowhooks-alerts", max_response_bytes=65_536, busy_retry_s=2.0)


@dataclass(frozen=True)
class RateReading:
    finished: int
    failed: int
    rate: float
    crossed: bool


def read_rate(by_outcome: Mapping[str, int], threshold: float, min_requests: int) -> RateReading:
    """The window's failure rate and whether it crosses the threshold: at least
    `min_requests` finished runs and failed / finished >= threshold."""
    finished = sum(by_outcome.get(outcome, 0) for outcome in FINISHED_OUTCOMES)
    failed = sum(by_outcome.get(outcome, 0) for outcome in FAILED_OUTCOMES)
    rate = failed / finished if finished else 0.0
    return RateReading(finished, failed, rate, finished >= min_requests and rate >= threshold)


def retry_policy(first_s: float, longest_s: float, max_attempts: int) -> RetryPolicy:
    """The pause after the `n`-th failed attempt: first_s, doubling, at most longest_s
    (no jitter: a notice is one delivery, not one of a crowd); at most `max_attempts`."""
    return RetryPolicy.doubling(first_s, longest_s, max_attempts=max_attempts)


def notice_body(kind: str, data: dict[str, Any], at: datetime | None = None) -> bytes:
    """The payload in the Standard Webhooks shape: type, timestamp, data."""
    moment = (at or datetime.now(UTC)).isoformat().replace("+00:00", "Z")
    return orjson.dumps({"type": kind, "timestamp": moment, "data": data})


def new_notice_id() -> str:
    return "msg_" + uuid.uuid4().hex


@dataclass(frozen=True)
class Alert:
    flow_id: uuid.UUID
    workspace_id: uuid.UUID
    url: str
    failure_rate: float
    window_s: int
    min_requests: int
    rate_open: bool
    dead_letter_open: bool


_ALERT = (
    "SELECT flow_id, workspace_id, url, failure_rate, window_s, min_requests,"
    " (rate_fired_at IS NULL OR rate_fired_at <= now() - make_interval(secs => window_s))"
    " AS rate_open,"
    " (dead_letter_fired_at IS NULL"
    " OR dead_letter_fired_at <= now() - make_interval(secs => window_s)) AS dead_letter_open"
    " FROM debugger.alerts"
)


class AlertStore:
    """The alerts' SQL: configuration (the API), gates and outbox (evaluator, sender)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    # Configuration.

    async def put(
        self,
        flow_id: uuid.UUID,
        workspace_id: str,
        config: Mapping[str, Any],
        secret: str,
        replace_secret: bool,
    ) -> tuple[asyncpg.Record, bool]:
        """Create or replace the flow's alert; the secret is kept on update unless
        `replace_secret`. Returns the row and whether it was created."""
        record = await self.pool.fetchrow(
            "INSERT INTO debugger.alerts"
            " (flow_id, workspace_id, url, failure_rate, window_s, min_requests, secret)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7)"
            " ON CONFLICT (flow_id) DO UPDATE SET url = EXCLUDED.url,"
            " failure_rate = EXCLUDED.failure_rate, window_s = EXCLUDED.window_s,"
            " min_requests = EXCLUDED.min_requests, updated_at = now(),"
            " secret = CASE WHEN $8 THEN EXCLUDED.secret ELSE debugger.alerts.secret END"
            " WHERE debugger.alerts.workspace_id = EXCLUDED.workspace_id"
            " RETURNING *, (xmax = 0) AS created",
            flow_id,
            uuid.UUID(workspace_id),
            config["url"],
            config["failure_rate"],
            config["window_s"],
            config["min_requests"],
            secret,
            replace_secret,
        )
        assert record is not None, "the flow's owner was checked"
        return record, bool(record["created"])

    async def get(self, flow_id: uuid.UUID, workspace_id: str) -> asyncpg.Record | None:
        record: asyncpg.Record | None = await self.pool.fetchrow(
            "SELECT * FROM debugger.alerts WHERE flow_id = $1 AND workspace_id = $2",
            flow_id,
            uuid.UUID(workspace_id),
        )
        return record

    async def delete(self, flow_id: uuid.UUID, workspace_id: str) -> bool:
        status = await self.pool.execute(
            "DELETE FROM debugger.alerts WHERE flow_id = $1 AND workspace_id = $2",
            flow_id,
            uuid.UUID(workspace_id),
        )
        return bool(status == "DELETE 1")

    async def recent_notices(self, flow_id: uuid.UUID, limit: int = 10) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await self.pool.fetch(
            "SELECT id, type, created_at, attempts, next_attempt_at, delivered_at, given_up_at,"
            " last_status, last_error FROM debugger.alert_notices WHERE flow_id = $1"
            " ORDER BY created_at DESC LIMIT $2",
            flow_id,
            limit,
        )
        return rows

    # Evaluation.

    async def alerts_for(self, flow_ids: Sequence[str]) -> list[Alert]:
        rows = await self.pool.fetch(
            f"{_ALERT} WHERE flow_id = ANY($1::text[]::uuid[])", list(flow_ids)
        )
        return [Alert(**dict(row)) for row in rows]

    async def all_alerts(self) -> list[Alert]:
        return [Alert(**dict(row)) for row in await self.pool.fetch(_ALERT)]

    async def window_counts(self, flow_id: uuid.UUID, window_s: int) -> dict[str, int]:
        rows = await self.pool.fetch(
            "SELECT outcome, count(*) AS n FROM debugger.requests WHERE flow_id = $1"
            " AND outcome = ANY($2::text[])"
            " AND received_at >= now() - make_interval(secs => $3) GROUP BY outcome",
            flow_id,
            list(FINISHED_OUTCOMES),
            float(window_s),
        )
        return {row["outcome"]: row["n"] for row in rows}

    async def fire_rate(self, alert: Alert, reading: RateReading) -> str | None:
        """Queue a failure-rate notice if the gate is open; its id, or None."""
        async with self.pool.acquire() as conn, conn.transaction():
            passed = await conn.fetchval(
                "UPDATE debugger.alerts SET rate_fired_at = now() WHERE flow_id = $1"
                " AND (rate_fired_at IS NULL"
                " OR rate_fired_at <= now() - make_interval(secs => window_s))"
                " RETURNING flow_id",
                alert.flow_id,
            )
            if passed is None:
                return None
            data = {
                "flow_id": str(alert.flow_id),
                "failure_rate": round(reading.rate, 4),
                "threshold": alert.failure_rate,
                "window_s": alert.window_s,
                "min_requests": alert.min_requests,
                "finished": reading.finished,
                "failed": reading.failed,
            }
            return await self._queue(conn, alert.flow_id, FAILURE_RATE, data)

    async def fire_dead_letters(self, alert: Alert) -> str | None:
        """Queue a notice of the runs dead-lettered since the last one, if there are any
        and the gate is open; its id, or None."""
        async with self.pool.acquire() as conn, conn.transaction():
            # Locks the alert: replicas evaluating the flow at once take turns here.
            seen = await conn.fetchval(
                "SELECT dead_letter_seen_until FROM debugger.alerts WHERE flow_id = $1"
                " AND (dead_letter_fired_at IS NULL"
                " OR dead_letter_fired_at <= now() - make_interval(secs => window_s))"
                " FOR UPDATE",
                alert.flow_id,
            )
            if seen is None:
                return None
            found = await conn.fetchrow(
                "SELECT count(*) AS n, max(stored_at) AS last,"
                " (array_agg(id ORDER BY stored_at DESC, id))[1:$3] AS ids"
                " FROM debugger.requests WHERE flow_id = $1 AND source_rank = 2"
                " AND outcome = 'failed' AND stored_at > $2",
                alert.flow_id,
                seen,
                MAX_QUOTED_IDS,
            )
            if found is None or not found["n"]:
                return None
            await conn.execute(
                "UPDATE debugger.alerts SET dead_letter_fired_at = now(),"
                " dead_letter_seen_until = $2 WHERE flow_id = $1",
                alert.flow_id,
                found["last"],
            )
            data = {
                "flow_id": str(alert.flow_id),
                "window_s": alert.window_s,
                "dead_lettered": found["n"],
                "request_ids": list(found["ids"]),
            }
            return await self._queue(conn, alert.flow_id, DEAD_LETTERED, data)

    @staticmethod
    async def _queue(
        conn: asyncpg.Connection, flow_id: uuid.UUID, kind: str, data: dict[str, Any]
    ) -> str:
        notice_id = new_notice_id()
        await conn.execute(
            "INSERT INTO debugger.alert_notices (id, flow_id, type, body) VALUES ($1, $2, $3, $4)",
            notice_id,
            flow_id,
            kind,
            notice_body(kind, data).decode(),
        )
        return notice_id

    async def try_sweep_lock(self, conn: asyncpg.Connection) -> bool:
        return bool(await conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", SWEEP_LOCK))

    # Delivery.

    async def claim(self, limit: int, lease_s: float) -> list[asyncpg.Record]:
        """Up to `limit` due notices, round robin across workspaces: each workspace's
        first due notice (by due time), then each one's second, and so on; so one
        workspace with many due notices never fills a claim (the due notices are few:
        at most one of each kind per flow per window, and the partial index
        `alert_notices_due` holds only the undelivered)."""
        rows: list[asyncpg.Record] = await self.pool.fetch(
            "WITH due AS (SELECT n.id, n.next_attempt_at, row_number() OVER"
            " (PARTITION BY a.workspace_id ORDER BY n.next_attempt_at, n.id) AS turn"
            " FROM debugger.alert_notices AS n JOIN debugger.alerts AS a USING (flow_id)"
            " WHERE n.delivered_at IS NULL AND n.given_up_at IS NULL"
            " AND n.next_attempt_at <= now()"
            " AND (n.claimed_until IS NULL OR n.claimed_until < now())),"
            # Checked again on the row locked (another replica may have claimed it).
            " picked AS (SELECT n.id FROM debugger.alert_notices AS n JOIN due USING (id)"
            " WHERE n.delivered_at IS NULL AND n.given_up_at IS NULL"
            " AND (n.claimed_until IS NULL OR n.claimed_until < now())"
            " ORDER BY due.turn, due.next_attempt_at, n.id LIMIT $1"
            " FOR UPDATE OF n SKIP LOCKED)"
            " UPDATE debugger.alert_notices AS n"
            " SET claimed_until = now() + make_interval(secs => $2), attempts = n.attempts + 1"
            " FROM debugger.alerts AS a, picked WHERE n.id = picked.id AND a.flow_id = n.flow_id"
            " RETURNING n.id, n.flow_id, n.body, n.attempts, a.url, a.secret,"
            " a.workspace_id::text AS workspace_id",
            limit,
            lease_s,
        )
        return rows

    async def put_back(self, notice_id: str, retry_in_s: float) -> None:
        """Not attempted (its destination busy or open-circuited): the claim released and
        its attempt given back, due again in `retry_in_s`."""
        await self.pool.execute(
            "UPDATE debugger.alert_notices SET claimed_until = NULL,"
            " attempts = GREATEST(attempts - 1, 0),"
            " next_attempt_at = now() + make_interval(secs => $2::float8) WHERE id = $1",
            notice_id,
            retry_in_s,
        )

    async def delivered(self, notice_id: str, status: int) -> None:
        await self.pool.execute(
            "UPDATE debugger.alert_notices SET delivered_at = now(), claimed_until = NULL,"
            " last_status = $2, last_error = NULL WHERE id = $1",
            notice_id,
            status,
        )

    async def attempt_failed(
        self, notice_id: str, status: int | None, error: str, retry_in_s: float | None
    ) -> None:
        """Record a failed attempt: retried after `retry_in_s`, or given up (None)."""
        await self.pool.execute(
            "UPDATE debugger.alert_notices SET claimed_until = NULL, last_status = $2,"
            " last_error = $3,"
            " next_attempt_at = CASE WHEN $4::float8 IS NULL THEN next_attempt_at"
            " ELSE now() + make_interval(secs => $4::float8) END,"
            " given_up_at = CASE WHEN $4::float8 IS NULL THEN now() END WHERE id = $1",
            notice_id,
            status,
            error[:1000],
            retry_in_s,
        )


class AlertEvaluator:
    def __init__(
        self,
        store: AlertStore,
        *,
        eval_interval_s: float,
        sweep_interval_s: float,
        queue_size: int,
        on_fired: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.eval_interval_s = eval_interval_s
        self.sweep_interval_s = sweep_interval_s
        self.queue_size = queue_size
        # Called after a notice was queued (wakes the local sender at once).
        self.on_fired = on_fired
        self._dirty: set[str] = set()
        self.dropped = 0  # flows not queued because the set was full
        self.fired = 0

    def note_written(self, rows: Sequence[RequestRow]) -> None:
        """After the ingest committed `rows`: remember their flows, if anything about
        their failure rate or dead letters may have changed. No I/O; never raises."""
        dirty = self._dirty
        for row in rows:
            if row.source_rank < RANK_DEAD_LETTER or row.flow_id in dirty:
                continue  # queued / running: nothing finished
            if len(dirty) >= self.queue_size:
                self.dropped += 1
                continue
            dirty.add(row.flow_id)

    async def run_forever(self) -> None:
        last_sweep = time.monotonic()
        while True:
            await asyncio.sleep(self.eval_interval_s)
            flows, self._dirty = self._dirty, set()
            try:
                if flows:
                    await self.evaluate(await self.store.alerts_for(sorted(flows)))
                if time.monotonic() - last_sweep >= self.sweep_interval_s:
                    last_sweep = time.monotonic()
                    await self.sweep()
            except Exception as exc:
                # The database away, or a bug: these flows wait for the next sweep.
                log.warning("alert_evaluation_failed", flows=len(flows), error=repr(exc)[:500])

    async def sweep(self) -> None:
        async with self.store.pool.acquire() as conn:
            if not await self.store.try_sweep_lock(conn):
                return
            try:
                await self.evaluate(await self.store.all_alerts())
            finally:
                await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", SWEEP_LOCK)

    async def evaluate(self, alerts: Sequence[Alert]) -> None:
        for alert in alerts:
            fired: list[str] = []
            if alert.rate_open:
                counts = await self.store.window_counts(alert.flow_id, alert.window_s)
                reading = read_rate(counts, alert.failure_rate, alert.min_requests)
                if reading.crossed:
                    notice = await self.store.fire_rate(alert, reading)
                    fired += [notice] if notice else []
            if alert.dead_letter_open:
                notice = await self.store.fire_dead_letters(alert)
                fired += [notice] if notice else []
            if fired:
                self.fired += len(fired)
                log.info("alert_fired", flow_id=str(alert.flow_id), notices=fired)
                if self.on_fired is not None:
                    self.on_fired()


class AlertSender:
    def __init__(
        self,
        store: AlertStore,
        engine: DeliveryEngine,
        *,
        poll_interval_s: float,
        concurrency: int = 32,
    ) -> None:
        self.store = store
        # Signs, sends and judges each attempt (shared/delivery.py); its guard (None: no
        # per-destination limit or breaker) decides whether an attempt is made now.
        self.engine = engine
        self.poll_interval_s = poll_interval_s
        # Notices claimed and in flight at once in this process.
        self.concurrency = concurrency
        # Longer than an attempt can take, so a live sender never loses its claim.
        self.lease_s = 2 * engine.timeout_s + 5
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        # Exported as a metric (services/debugger/metrics.py).
        self.attempts_failed = 0
        # Notices put back without an attempt (destination busy or open, workspace busy).
        self.deferred = 0

    @property
    def guard(self) -> DeliveryGuard | None:
        """The guard in front of the notices' attempts (its counters are metrics)."""
        return self.engine.guard

    def wake(self) -> None:
        self._wake.set()

    async def run_forever(self) -> None:
        """Claims as many due notices as there are free places, each attempted on its
        own task; looks again when a notice fires here, an attempt ends, or every poll
        interval. Cancelled (shutdown): the attempts in flight are cancelled with it,
        their claims lapse and another sender (or this one, restarted) sends them."""
        try:
            while True:
                self._wake.clear()
                free = self.concurrency - len(self._tasks)
                if free > 0:
                    try:
                        self._start(await self.store.claim(free, self.lease_s))
                    except Exception as exc:
                        log.warning("alert_delivery_failed", error=repr(exc)[:500])
                try:
                    await asyncio.wait_for(self._wake.wait(), self.poll_interval_s)
                except TimeoutError:
                    pass
        finally:
            for task in list(self._tasks):
                task.cancel()

    def _start(self, claimed: Sequence[asyncpg.Record]) -> None:
        for notice in claimed:
            task = asyncio.create_task(self._attempt(notice))
            self._tasks.add(task)
            task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # The database away while recording: the claim lapses, the notice is sent again.
            log.warning("alert_attempt_not_recorded", error=repr(task.exception())[:500])
        self._wake.set()  # a place is free: claim again

    async def _attempt(self, notice: asyncpg.Record) -> None:
        permit = self.engine.admit(notice["url"], notice["workspace_id"])
        if isinstance(permit, Deferred):
            back_in = self.engine.deferral_s(permit)
            await self.store.put_back(notice["id"], back_in)
            self.deferred += 1
            log.debug("alert_deferred", notice=notice["id"], why=permit.why, retry_in_s=back_in)
            return
        secret: str = notice["secret"]
        # A trace of its own (it is about many requests), sent as its `traceparent`.
        with tracing.span(
            "alert notice",
            parent={},
            attributes={"flowhooks.flow_id": str(notice["flow_id"])},
        ):
            attempted = await self.engine.attempt(
                permit, notice["url"], notice["id"], notice["body"].encode(), lambda: secret
            )
        if attempted.status is not None and attempted.delivered:
            await self.store.delivered(notice["id"], attempted.status)
            log.info("alert_delivered", notice=notice["id"], attempts=notice["attempts"])
            return
        self.attempts_failed += 1
        attempts = int(notice["attempts"])
        # The attempt's own error is recorded (the row's given_up_at says it ended).
        retry_in = self.engine.judge(attempted, attempts).retry_in_s
        error = attempted.error or ""
        await self.store.attempt_failed(notice["id"], attempted.status, error, retry_in)
        log.warning(
            "alert_attempt_failed",
            notice=notice["id"],
            url=safe_url(notice["url"]),
            attempts=attempts,
            error=error,
            retry_in_s=retry_in,
        )

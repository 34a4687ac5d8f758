"""The debugger's metrics, on its app's registry (created in `app.wire`)."""

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from services.debugger.store import RequestRow
from shared.metrics import Counters

if TYPE_CHECKING:  # they import this module
    from services.debugger.alerts import AlertSender
    from services.debugger.ingest import BatchIngest
    from services.debugger.partitions import Partitions
    from services.debugger.workspace_limiter import WorkspaceLimiter

# Seconds from a request's end (or arrival) to the commit of its row: the batch linger
# (tens of ms) when well; minutes when PostgreSQL is away or the intake falls behind.
LAG_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)
# `x-death` reasons RabbitMQ gives (anything else is `other`): a closed label set.
DEAD_LETTER_REASONS = ("delivery_limit", "expired", "rejected", "maxlen")


def dead_letter_reason(headers: Mapping[str, Any] | None) -> str:
    """RabbitMQ's reason for the newest death, as a label of the closed set (in words,
    for the stored request: `records.describe_dead_letter`)."""
    deaths = (headers or {}).get("x-death")
    death = deaths[0] if isinstance(deaths, list) and deaths else None
    reason = death.get("reason") if isinstance(death, Mapping) else None
    if isinstance(reason, bytes):
        reason = reason.decode(errors="replace")
    return reason if reason in DEAD_LETTER_REASONS else "other"


class DebuggerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # No registry (tests building components directly): observed, never exported.
        self.registry = registry if registry is not None else CollectorRegistry()
        self.ingest_lag = Histogram(
            "flowhooks_debugger_ingest_lag_seconds",
            "From a request's finish (else its arrival) to the commit of its record",
            registry=self.registry,
            buckets=LAG_BUCKETS,
        )
        self.dead_letters = Counter(
            "flowhooks_dead_lettered_runs",
            "Runs the broker dead-lettered (never got an outcome), by x-death reason",
            ["reason"],
            registry=self.registry,
        )
        for reason in (*DEAD_LETTER_REASONS, "other"):
            self.dead_letters.labels(reason)  # exported at 0: alert rules see a series

    def committed(self, rows: Sequence[RequestRow]) -> None:
        now = datetime.now(UTC)
        for row in rows:
            self.ingest_lag.observe((now - (row.finished_at or row.received_at)).total_seconds())

    def watch(
        self,
        ingest: "BatchIngest",
        alerts: "AlertSender",
        limiter: "WorkspaceLimiter",
        partitions: "Partitions | None" = None,
    ) -> None:
        """The counters the ingest (`BatchIngest`), the alert sender and the API's
        per-workspace limiter keep."""
        guard = alerts.guard
        self.registry.register(
            Counters(
                counters=[
                    (
                        "flowhooks_debugger_rows_stored",
                        "Request records written",
                        lambda: ingest.stored,
                    ),
                    (
                        # Rows per write (stored / writes): a write costs about as much
                        # as a few dozen rows (bench/debugger.py), so under load the
                        # intake's cost per request depends on it.
                        "flowhooks_debugger_writes",
                        "Batches of records written, each in one statement or transaction",
                        lambda: ingest.writes,
                    ),
                    (
                        "flowhooks_debugger_rows_dropped",
                        "Request records PostgreSQL refused even in their reduced form",
                        lambda: ingest.dropped,
                    ),
                    (
                        "flowhooks_debugger_events_rejected",
                        "Unreadable events rejected (dead-lettered) by the intake",
                        lambda: ingest.rejected,
                    ),
                    (
                        "flowhooks_debugger_write_failures",
                        "Batch writes that failed and were retried (PostgreSQL away)",
                        lambda: ingest.write_failures,
                    ),
                    (
                        "flowhooks_alert_attempts_failed",
                        "Alert notice deliveries that did not get a 2xx",
                        lambda: alerts.attempts_failed,
                    ),
                    (
                        "flowhooks_alert_notices_deferred",
                        "Alert notices put back without an attempt (destination busy or its"
                        " circuit open, workspace over its share)",
                        lambda: alerts.deferred,
                    ),
                    (
                        "flowhooks_alert_circuits_opened",
                        "Alert destinations whose circuit breaker opened",
                        lambda: guard.opened if guard is not None else 0,
                    ),
                    (
                        "flowhooks_debugger_list_requests_refused",
                        "Listings, searches and stats refused 429 by the per-workspace limiter"
                        " (concurrency, waiters, statement-time share)",
                        lambda: limiter.refused,
                    ),
                ],
                gauges=[
                    (
                        "flowhooks_debugger_ingest_pending",
                        "Events received and not yet written",
                        lambda: ingest.pending,
                    ),
                    (
                        "flowhooks_debugger_default_partition_rows",
                        "Request records in the default partition at the last look (up to"
                        " 100000): expected 0, a partition was missing for their time",
                        lambda: partitions.default_rows if partitions is not None else 0,
                    ),
                ],
            )
        )

"""The ingress's metrics, on its app's registry (created in `app.wire`).

`flowhooks_webhook_requests_total{outcome,mode}`: every webhook answer, once. `mode` is
the flow's (`sync`, `async`), or `unknown` when the answer came before the flow was
known (no or a bad bearer). `outcome` is one of `OUTCOMES`.
`flowhooks_webhook_rate_limited_total{reason}`: the `rate_limited` answers by the bound
that refused them (`RATE_LIMIT_REASONS`), counted by the components that keep them."""

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter

from shared.metrics import Counters

if TYPE_CHECKING:  # it imports this module
    from services.ingress.webhook import WebhookHandler

# The run's own outcome for a sync run answered with its result (shared/schemas/runs.py);
# `queued`: an async run on the durable queue; `accepted`: a sync run with
# `on_timeout: "accept"` answered 202; `paused`; the rest are refusals and failures by
# their HTTP status (`error_outcome`).
OUTCOMES = (
    "succeeded",
    "failed",
    "timeout",
    "expired",
    "duplicate",
    "queued",
    "accepted",
    "paused",
    "rejected",
    "unauthorized",
    "forbidden",
    "not_found",
    "rate_limited",
    "unavailable",
    "error",
)
MODES = ("sync", "async", "unknown")
# The bounds a webhook is answered 429 past: the flow's request rate and its budget of
# failed signature checks (rate_limit.py), the workspace's queued async runs and bytes
# and its waiting sync requests (backlog.py), a key's waiting duplicates (dedup.py).
RATE_LIMIT_REASONS = (
    "flow_rate",
    "bad_signatures",
    "queued_runs",
    "queued_bytes",
    "sync_requests",
    "dedup_waiting",
)
_BY_STATUS = {401: "unauthorized", 403: "forbidden", 404: "not_found", 429: "rate_limited"}


def error_outcome(status: int) -> str:
    """The outcome of a webhook answered with an error envelope of this status."""
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    if status == 503:
        return "unavailable"
    if status == 504:
        return "timeout"
    return "rejected" if status < 500 else "error"


class IngressMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # No registry (tests building components directly): counted, never exported.
        self.registry = registry if registry is not None else CollectorRegistry()
        self.webhook_requests = Counter(
            "flowhooks_webhook_requests",
            "Webhook requests answered, by outcome and the flow's mode",
            ["outcome", "mode"],
            registry=self.registry,
        )
        self.access_cache = Counter(
            "flowhooks_access_cache",
            "Access checks answered from the cache (hit) or by auth over RPC (miss)",
            ["result"],
            registry=self.registry,
        )
        # Bound once: the hot path only increments.
        self.cache_hit = self.access_cache.labels("hit")
        self.cache_miss = self.access_cache.labels("miss")

    def webhook(self, outcome: str, mode: str) -> None:
        self.webhook_requests.labels(outcome, mode).inc()

    def watch(self, webhook: "WebhookHandler") -> None:
        """The refusals the webhook's limiters and bounds count, read at scrape time."""
        backlog = webhook.backlog
        self.registry.register(
            Counters(
                labelled=[
                    (
                        "flowhooks_webhook_rate_limited",
                        "Webhook requests answered 429 rate_limited, by the bound that"
                        " refused them",
                        "reason",
                        RATE_LIMIT_REASONS,
                        lambda: {
                            "flow_rate": webhook.rate_limiter.refused,
                            "bad_signatures": webhook.bad_signatures.refused,
                            "queued_runs": backlog.refused_runs,
                            "queued_bytes": backlog.refused_bytes,
                            "sync_requests": backlog.refused_sync,
                            "dedup_waiting": webhook.dedup.waiters_refused,
                        },
                    )
                ]
            )
        )

"""The ingress's metrics, on its app's registry (created in `app.wire`).

`flowhooks_webhook_requests_total{outcome,mode}`: every webhook answer, once. `mode` is
the flow's (`sync`, `async`), or `unknown` when the answer came before the flow was
known (no or a bad bearer). `outcome` is one of `OUTCOMES`."""

from prometheus_client import CollectorRegistry, Counter

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
        registry = registry if registry is not None else CollectorRegistry()
        self.webhook_requests = Counter(
            "flowhooks_webhook_requests",
            "Webhook requests answered, by outcome and the flow's mode",
            ["outcome", "mode"],
            registry=registry,
        )
        self.access_cache = Counter(
            "flowhooks_access_cache",
            "Access checks answered from the cache (hit) or by auth over RPC (miss)",
            ["result"],
            registry=registry,
        )
        # Bound once: the hot path only increments.
        self.cache_hit = self.access_cache.labels("hit")
        self.cache_miss = self.access_cache.labels("miss")

    def webhook(self, outcome: str, mode: str) -> None:
        self.webhook_requests.labels(outcome, mode).inc()

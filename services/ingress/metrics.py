"""The ingress's metrics, on its app's registry (created in `app.wire`).

`flowhooks_webhook_requests_total{outcome,mode}`: every webhook answer, once. `mode` is
the flow's (`sync`, `async`), or `unknown` when the answer came before the flow was
known (no or a bad bearer). `outcome` is one of `OUTCOMES`.
`flowhooks_webhook_rate_limited_total{reason}`: the `rate_limited` answers by the bound
that refused them (`RATE_LIMIT_REASONS`), counted by the components that keep them.
`flowhooks_webhook_refusal_records_total{result}`: requests refused 401 by their
signature, `recorded` in the debugger or `skipped` (past the flow's budget of records,
refusals.py)."""

from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter

from shared.errors import Forbidden, NotFound, RateLimited, Timeout, Unauthorized, Unavailable
from shared.metrics import Counters
from shared.schemas.vocabulary import Outcome, Progress, RunMode

if TYPE_CHECKING:  # it imports this module
    from services.ingress.webhook import WebhookHandler

# The refusals and failures counted by their HTTP status (`error_outcome`) as the
# error's kind; any other 4xx is `rejected`, any other 5xx `error`.
_BY_STATUS = {
    error.status: error.kind
    for error in (Unauthorized, Forbidden, NotFound, RateLimited, Unavailable, Timeout)
}
# The run's own outcome (shared/schemas/vocabulary.py) for a sync run answered with its
# result (`rejected`: also any other 4xx); `queued`: an async run on the durable queue;
# `accepted`: a sync run with `on_timeout: "accept"` answered 202; `paused`; the
# refusals by their error's kind.
OUTCOMES = tuple(
    dict.fromkeys((*Outcome, Progress.QUEUED, "accepted", "paused", *_BY_STATUS.values(), "error"))
)
# The flow's mode, or `unknown` before the flow is known.
UNKNOWN_MODE = "unknown"
MODES = (*RunMode, UNKNOWN_MODE)
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
# What became of a request refused by its signature: recorded, or past the flow's budget.
REFUSAL_RECORD_RESULTS = ("recorded", "skipped")


def error_outcome(status: int) -> str:
    """The outcome of a webhook answered with an error envelope of this status."""
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return Outcome.REJECTED if status < 500 else "error"


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
        self._webhook: dict[tuple[str, str], Any] = {}
        # Bound once: the hot path only increments.
        self.cache_hit = self.access_cache.labels("hit")
        self.cache_miss = self.access_cache.labels("miss")

    def webhook(self, outcome: str, mode: str) -> None:
        counted = self._webhook.get((outcome, mode))
        if counted is None:  # bound once per (outcome, mode): both closed sets
            counted = self._webhook[outcome, mode] = self.webhook_requests.labels(outcome, mode)
        counted.inc()

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
                    ),
                    (
                        "flowhooks_webhook_refusal_records",
                        "Webhook requests refused 401 by their signature, recorded in the"
                        " debugger or skipped past the flow's budget of records",
                        "result",
                        REFUSAL_RECORD_RESULTS,
                        lambda: {
                            "recorded": webhook.refusals.budget.taken,
                            "skipped": webhook.refusals.budget.refused,
                        },
                    ),
                ]
            )
        )

"""The words every service uses about a request, defined once and imported everywhere:
its outcome and the sets of outcomes that mean something together, its mode, the
signing modes, a completion callback's state, the contract's JSON envelope and how an
error becomes the answer a sender gets. A string equal to an outcome written anywhere
else in services/ or shared/ fails tests/unit/test_vocabulary.py: name it from here."""

from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal, get_args

import orjson
from pydantic import BaseModel

if TYPE_CHECKING:  # shared/errors.py builds its envelope with `envelope` below
    from shared.errors import ApiError


class Outcome(StrEnum):
    """How a request ended, as its sender was answered and the debugger records it.
    `duplicate`: not run, answered with the first request's result (`webhook.dedup`);
    `rejected`: a body the ingress could not parse; `expired`: no runner started the run
    before its sync caller gave up; `handshake`: a provider's handshake (a challenge, a
    URL check) the ingress answered itself, the flow not run; `debounced`: not run, a
    later request of its burst ran in its place (`webhook.debounce`); `filtered`: matched no
    filter (`webhook.filter`, or no route of a source), answered 200, never run;
    `routed`: a source's request, fanned out to its flows (each run recorded apart)."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMEOUT = "timeout"
    EXPIRED = "expired"
    REJECTED = "rejected"
    DUPLICATE = "duplicate"
    HANDSHAKE = "handshake"
    DEBOUNCED = "debounced"
    FILTERED = "filtered"
    ROUTED = "routed"


class Progress(StrEnum):
    """Where a request is on its way to an outcome (async runs, `on_timeout: accept`,
    a run in a `delay` step)."""

    QUEUED = "queued"
    RUNNING = "running"
    # Accepted and held back until its turn: its key's order or limits, a throttle, a
    # delay or a debounce (webhook.ordering, ...; services/runner/paced_runs.py); or
    # stored by a `delay` step until its resume time (services/runner/delays.py).
    WAITING = "waiting"


# What the debugger shows as a request's outcome: one of either.
RECORDED_OUTCOMES: frozenset[str] = frozenset({*Outcome, *Progress})
PENDING: frozenset[str] = frozenset(Progress)
# A run that did not do its work: it counts against a flow's failure rate (alerts), and
# is never replayed to the duplicates of its dedup key (the runner lets go of the key).
# `rejected` is the sender's fault, not the flow's; `duplicate`, `handshake` and
# `debounced` were not run.
FAILED_OUTCOMES: tuple[Outcome, ...] = (Outcome.FAILED, Outcome.TIMEOUT, Outcome.EXPIRED)
# A run that finished, well or not: what a failure rate is a share of.
FINISHED_OUTCOMES: tuple[Outcome, ...] = (Outcome.SUCCEEDED, *FAILED_OUTCOMES)
# What a bulk replay's `filter.outcome` may name (the debugger API): a final outcome,
# `duplicate` excepted, as the API has always accepted.
ReplayFilterOutcome = Literal[
    Outcome.SUCCEEDED, Outcome.FAILED, Outcome.TIMEOUT, Outcome.EXPIRED, Outcome.REJECTED
]
REPLAY_FILTER_OUTCOMES: frozenset[str] = frozenset(get_args(ReplayFilterOutcome))


class RunMode(StrEnum):
    """A flow's webhook mode: answered with the run's result, or queued durably."""

    SYNC = "sync"
    ASYNC = "async"

    @classmethod
    def of(cls, is_async: bool) -> "RunMode":
        return cls.ASYNC if is_async else cls.SYNC


# A flow's signature check (`webhook.auth.mode`, every mode but `bearer`).
SigningMode = Literal[
    "stripe",
    "github",
    "shopify",
    "slack",
    "standard-webhooks",
    "hmac",
    # Providers that must be answered before they send (services/ingress/handshake.py).
    "zoom",
    "microsoft-graph",
    "meta",
    "twitter",
    "dropbox",
    "okta",
    "twitch",
    "discord",
    # Signed over the public URL (FLOWHOOKS_INGRESS_PUBLIC_URL), or HMAC (paddle).
    "twilio",
    "square",
    "hubspot",
    "paddle",
    # Public-key modes: no secrets (services/ingress/public_keys.py, pubsub.py).
    "sendgrid",
    "google-pubsub",
    # Its secret learned from its first handshake (services/ingress/learned_secrets.py).
    "asana",
    # AWS SNS: signed by AWS's certificate inside the body, no secrets (services/ingress/sns.py).
    "sns",
]
# `webhook.auth.mode` as a flow is saved: a bearer token (the default) or a signature.
WebhookAuthMode = Literal["bearer", SigningMode]


class CallbackState(StrEnum):
    """A completion callback after one attempt: retried, done, or stopped for good."""

    DELIVERING = "delivering"
    DELIVERED = "delivered"
    FAILED = "failed"


JSON = "application/json"


class ErrorEnvelope(BaseModel):
    """Every error answer of every flowhooks API (contract: "Errors")."""

    status: int
    error: str
    message: str
    data: Any = None


def envelope(status: int, error: str | None, message: str, data: Any = None) -> dict[str, Any]:
    """The contract's JSON answer: `error` is None on a success (`"message": "ok"`,
    `"accepted"`, ...), else the error's kind (`ErrorEnvelope`)."""
    return {"status": status, "error": error, "message": message, "data": data}


def error_answer(error: "ApiError") -> tuple[int, str, str]:
    """An error as the HTTP answer its sender gets: status, content type and body (the
    envelope). What a run that failed is answered and stored with, at every service."""
    return error.status_code, JSON, orjson.dumps(error.envelope()).decode()

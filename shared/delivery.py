"""The one outbound delivery engine: signed POSTs of the platform's own webhooks (the
runner's completion callbacks, services/runner/callbacks.py; the debugger's alert
notices, services/debugger/alerts.py), with the one retry policy (shared/retry.py).

What an attempt is, the same for every sender (`DeliveryEngine`):
- asked of the `DeliveryGuard` first (shared/delivery_guard.py), without waiting: a
  refusal (`Deferred`) is parked by the sender for `deferral_s`, no attempt counted;
- signed the Standard Webhooks way (shared/standard_webhooks.py: a fresh timestamp per
  attempt, the same `webhook-id`), POSTed through `OutboundHttp` (the private-address
  guard, shared/outbound.py, at each attempt; redirects not followed: a 3xx is a failed
  attempt), with short connect and first-byte timeouts besides the total, so a tarpit
  holds a slot for seconds and opens its circuit after a few attempts;
- judged (`DeliveryEngine.judge`): a 2xx is `delivered`; 410 Gone stops it (`failed`);
  anything else (another status, a refused address, a network error, a secret that
  cannot be opened) is retried after the policy's wait, unless the policy gives up
  (attempts spent, or the next attempt would start past its give-up time): `failed`.

How a wait happens and how an attempt is recorded is the sender's (the callbacks' wait
ladder and `callback.attempted` events; the alert outbox's rows), and so are their
settings: `DeliverySettings` is the part both share, one model, read from each
service's own flat variables (`shared.settings.flat_fields`).
"""

import random
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from pydantic import BaseModel, Field

from shared import standard_webhooks
from shared.delivery_guard import Deferred, DeliveryGuard, Health, Permit, health_of
from shared.outbound import OutboundHttp, OutboundRefused
from shared.redaction import scrub_urls
from shared.retry import RetryPolicy
from shared.schemas.vocabulary import CallbackState


@dataclass(frozen=True)
class Attempted:
    """What one attempt got: the receiver's status (None: no answer, or nothing sent),
    what went wrong if anything, and what it showed of the destination's health."""

    status: int | None
    error: str | None
    health: Health

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclass(frozen=True)
class Verdict:
    """What follows an attempt: its state, why it was not delivered (with the reason it
    ends, for `failed`), and the wait before the next attempt (None: there is none)."""

    state: CallbackState  # where a delivery stands after an attempt (alerts too)
    error: str | None
    retry_in_s: float | None


class SecretUnavailable(Exception):
    """The secret to sign with cannot be had (e.g. a sealed one whose key is gone):
    nothing is sent, the attempt fails and is retried; the message says why."""


@dataclass(frozen=True)
class DeliveryKind:
    """What sets one kind of delivery apart (callbacks, alert notices), fixed in code."""

    user_agent: str
    # The receiver's answer is not used; a larger one is still read (and dropped) up to
    # this.
    max_response_bytes: int
    # How long a delivery refused for a busy destination or workspace waits (plus up to
    # a second of jitter) before it asks again.
    busy_retry_s: float


class DeliverySettings(BaseModel):
    """What the senders of signed deliveries share, per service (each service's
    variables are `FLOWHOOKS_<PREFIX><FIELD>`, e.g. FLOWHOOKS_RUNNER_CALLBACK_SLOTS and
    FLOWHOOKS_DEBUGGER_ALERT_SLOTS)."""

    # Networks the URLs may reach although they are private, loopback or link-local
    # (JSON list of CIDRs); checked on save and at each attempt. Empty: only public ones.
    allow_networks: list[str] = Field(default_factory=list)
    # One attempt's whole request, answer included.
    timeout_s: float = Field(default=10.0, gt=0)
    # Short connect and first-byte (status and headers) timeouts, so a receiver that
    # accepts and stalls holds a slot for seconds, not the whole timeout (receivers
    # should answer at once and work after).
    connect_timeout_s: float = Field(default=3.0, gt=0)
    first_byte_timeout_s: float = Field(default=5.0, gt=0)
    # Attempts in flight to one destination (scheme+host+port) per process; deliveries
    # beyond it are deferred (no attempt counted).
    per_destination: int = Field(default=4, ge=1)
    # Attempts in flight per process that the workspaces share fairly (each active one
    # at most slots / active ones). Keep it under the sender's window (prefetch,
    # concurrency): the rest is room for another workspace's delivery at once.
    slots: int = Field(default=16, ge=1)
    # Circuit breaker per destination: this many failed attempts in a row (no answer,
    # a timeout, 5xx or 429) open it; after the cool-down one probe is let through.
    breaker_failures: int = Field(default=5, ge=1)
    breaker_cool_down_s: float = Field(default=30.0, gt=0)

    def guard(self, busy_retry_s: float) -> DeliveryGuard:
        return DeliveryGuard(
            per_destination=self.per_destination,
            slots=self.slots,
            failures_to_open=self.breaker_failures,
            cool_down_s=self.breaker_cool_down_s,
            busy_retry_s=busy_retry_s,
        )


class DeliveryEngine:
    """Signs, sends and judges one attempt at a time; holds no delivery's state (each
    sender keeps its own: a message, an outbox row)."""

    def __init__(
        self,
        http: OutboundHttp,
        *,
        user_agent: str,
        retry: RetryPolicy,
        max_response_bytes: int,
        timeout_s: float = 10.0,
        connect_timeout_s: float | None = None,
        first_byte_timeout_s: float | None = None,
        guard: DeliveryGuard | None = None,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.http = http
        self.user_agent = user_agent
        self.retry = retry
        # The receiver's answer is not used; a larger one is still read (and dropped) up
        # to this.
        self.max_response_bytes = max_response_bytes
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.first_byte_timeout_s = first_byte_timeout_s
        # None (tests of the attempt alone): every delivery is attempted when due.
        self.guard = guard
        self.rng = rng

    @classmethod
    def of(
        cls,
        http: OutboundHttp,
        kind: DeliveryKind,
        settings: DeliverySettings,
        retry: RetryPolicy,
    ) -> "DeliveryEngine":
        """The engine of one kind of delivery, with a service's settings and policy."""
        return cls(
            http,
            user_agent=kind.user_agent,
            retry=retry,
            max_response_bytes=kind.max_response_bytes,
            timeout_s=settings.timeout_s,
            connect_timeout_s=settings.connect_timeout_s,
            first_byte_timeout_s=settings.first_byte_timeout_s,
            guard=settings.guard(kind.busy_retry_s),
        )

    def admit(self, url: str, owner: str) -> Permit | Deferred | None:
        """Asks the guard, without waiting; None: no guard, go ahead."""
        return self.guard.admit(url, owner) if self.guard is not None else None

    def deferral_s(self, deferred: Deferred) -> float:
        """How long a refused delivery waits before it asks again, spread so that
        deliveries deferred together do not come back together."""
        busy_s = self.guard.busy_retry_s if self.guard is not None else 0.0
        return deferred.spread_s(self.rng, busy_s)

    async def attempt(
        self,
        permit: Permit | None,
        url: str,
        webhook_id: str,
        body: bytes,
        secret: Callable[[], str],
    ) -> Attempted:
        """One signed POST; the permit is given back (with what the attempt showed)
        before this returns. `secret` gives the signing secret, or raises
        `SecretUnavailable` (nothing is sent)."""
        health: Health = "unknown"
        try:
            attempted = await self._post(url, webhook_id, body, secret)
            health = attempted.health
            return attempted
        finally:
            if permit is not None:
                permit.done(health)  # the slot is free before the attempt is recorded

    async def _post(
        self, url: str, webhook_id: str, body: bytes, secret: Callable[[], str]
    ) -> Attempted:
        try:
            key = secret()
        except SecretUnavailable as exc:
            return Attempted(None, str(exc), "unknown")
        headers = {
            "Content-Type": "application/json",
            "User-Agent": self.user_agent,
            # A fresh timestamp (and so signature) per attempt, the same webhook-id.
            **standard_webhooks.signed_headers(key, webhook_id, body),
        }
        try:
            status, _, _ = await self.http.request(
                "POST",
                url,
                headers=headers,
                data=body,
                timeout_s=self.timeout_s,
                connect_timeout_s=self.connect_timeout_s,
                first_byte_timeout_s=self.first_byte_timeout_s,
                max_response_bytes=self.max_response_bytes,
                follow_redirects=False,  # Standard Webhooks: a 3xx is a failed attempt
            )
        except (OutboundRefused, aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            text = scrub_urls(str(exc)[:2000])[:300]
            what = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
            # A refused address or URL says nothing of the destination's health.
            return Attempted(
                None, what, "unknown" if isinstance(exc, OutboundRefused) else "failing"
            )
        error = None if 200 <= status < 300 else f"the receiver answered {status}"
        return Attempted(status, error, health_of(status))

    def judge(self, attempted: Attempted, attempts: int, age_s: float = 0.0) -> Verdict:
        """What follows the `attempts`-th attempt of a delivery first attempted `age_s`
        ago."""
        return judge(attempted, attempts, self.retry, age_s, self.rng)


def judge(
    attempted: Attempted,
    attempts: int,
    retry: RetryPolicy,
    age_s: float = 0.0,
    rng: Callable[[], float] = random.random,
) -> Verdict:
    """See `DeliveryEngine.judge`: 2xx delivered, 410 stops, else retried by `retry`."""
    if attempted.delivered:
        return Verdict(CallbackState.DELIVERED, None, None)
    if attempted.status == 410:
        return Verdict(
            CallbackState.FAILED, "the receiver answered 410 Gone: delivery stopped", None
        )
    reason = attempted.error or f"the receiver answered {attempted.status}"
    if not retry.retries_after(attempts):
        return Verdict(CallbackState.FAILED, f"{reason}; gave up after {attempts} attempts", None)
    wait_s = retry.delay_s(attempts, rng)
    if retry.give_up_s is not None and age_s + wait_s > retry.give_up_s:
        return Verdict(
            CallbackState.FAILED, f"{reason}; gave up: no attempt after {retry.give_up_s:g} s", None
        )
    return Verdict(CallbackState.DELIVERING, reason, wait_s)

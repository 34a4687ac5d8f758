"""Completion callbacks of async runs (`webhook.callback`): the run's result POSTed to the
flow's URL, signed the Standard Webhooks way, retried through the broker for up to a day.

Who sends: the runner's supervisor (platform code, never a worker). It holds
FLOWHOOKS_WEBHOOK_SECRETS_KEY, which opens the flow's sealed callback secret.

The path of one callback:
1. `RunService` enqueues a `CallbackRequested` (confirmed) on `flowhooks.runner.callbacks`
   once the run's `run.finished` is confirmed and before the run is marked finished and
   its StartRuns acked; a runner dying in between runs the request again and enqueues
   it again under the same `webhook-id` (`msg_<request id>`), which the receiver
   deduplicates on. Nothing is lost, a repeat is possible (at least once).
2. `on_callback` (a `kernel.on_command` consumer) attempts it through the delivery
   engine (shared/delivery.py, shared with the debugger's alert notices): opens the
   secret, signs with a fresh timestamp, POSTs through `OutboundHttp` (the address policy is checked
   again at each attempt; redirects are not followed). A 2xx ends it (`delivered`), 410
   Gone stops it (`failed`); anything else (another status, a refused address, a
   network error) is retried after a wait drawn with full jitter: uniform in
   [0, cap), the cap growing per attempt (`FLOWHOOKS_RUNNER_CALLBACK_RETRY_DELAYS_S`,
   the last repeated). A retry that would start more than
   `FLOWHOOKS_RUNNER_CALLBACK_GIVE_UP_S` (24 h) after the enqueue is not made: `failed`.
3. Each attempt is published as `callback.attempted` (confirmed) for the debugger,
   before the next attempt is parked: a failure between the two repeats the attempt
   (one more record), never forks a second chain of retries.

The ladder, or how a wait happens without sleeping in memory: a retry is the same
message, with `attempt` + 1 and `due_at`, parked in a wait queue of the ladder
(topology.CALLBACK_WAITS: 1 s, 5 s, 30 s, 2 min, 10 min, 1 h, each queue one fixed TTL,
dead-lettering back into the callbacks queue). The consumer parks it in the longest
step that does not overshoot what is left of the wait; when it comes back early it is
parked again, so a jittered wait of 437 s takes 2 min + 2 min + 2 min + 30 s + 5 s + 1 s
+ 1 s, and is honoured within a second (less than the shortest step left: attempted at
once). Why a ladder of fixed-TTL queues, not per-message `expiration` on one wait
queue: RabbitMQ expires messages only at a queue's head, so a 1 h wait queued first
would hold back every shorter wait behind it; in one queue of fixed TTL the order of
arrival is the order of expiry. And why several hops rather than one step per attempt
(the step just below the jittered delay): that would round full jitter down to six
possible waits, and retries of many callbacks that failed together would again arrive
together. A hop costs one publish and one delivery; a wait of an hour takes at most
about twenty.

Fairness (contract, "Isolation": a slow or dead destination delays only its owner):
the consumer's prefetch window is shared by every workspace, and an attempt holds its
message until the receiver answers. So before an attempt the `DeliveryGuard`
(shared/delivery_guard.py) is asked, without waiting: at most `per_destination`
attempts to one scheme+host+port at once, none while that destination's circuit is
open (consecutive failures or timeouts), and each workspace within its fair share of
`slots` attempts (fewer than the window, so that another workspace's callback always
finds room in it). A callback refused is **deferred**: parked again in the ladder for
the time the guard names (a busy destination: one 5 s hop; an open circuit: the rest
of its cool-down, spread), its `attempt` unchanged and nothing recorded (no
`callback.attempted`: no attempt was made; the `deferred` counter and a debug log
show it). Its message is republished (confirmed) before it is acked, like any park, so
"never lost" and the one `webhook-id` hold as above. A callback whose deferral would
end past its give-up time is recorded `failed` ("gave up") without an attempt. Each
attempt also has short connect and first-byte timeouts (settings) besides the total,
so a tarpit holds a slot for seconds and opens its circuit after a few attempts.
"""

import random
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import structlog

from services.runner.definition import SealedSecret, WebhookCallback
from shared.delivery import (
    Attempted,
    DeliveryEngine,
    DeliveryKind,
    SecretUnavailable,
    Verdict,
)
from shared.delivery import judge as judge_attempt
from shared.delivery_guard import Deferred, DeliveryGuard
from shared.errors import Unavailable
from shared.messaging import naming, topology
from shared.messaging.connection import Broker
from shared.messaging.contracts import CALLBACK_ATTEMPTED, CALLBACKS
from shared.redaction import safe_url
from shared.retry import RetryPolicy
from shared.schemas.callbacks import CallbackAttempted, CallbackRequested
from shared.schemas.runs import RunResult, WebhookRequest
from shared.schemas.vocabulary import CallbackState
from shared.secret_box import SealError, SecretBox
from shared.service import Delivery, Retry

log = structlog.get_logger(__name__)

PAYLOAD_TYPE = "run.finished"
# The default caps of the jittered waits after the 1st, 2nd, ... failed attempt
# (exponential: doubling from 5 s, at most an hour; the last one repeats).
DEFAULT_RETRY_DELAYS_S = RetryPolicy.doubling(5.0, 3600.0).delays_s
DAY_S = 86_400.0
# A callback deferred because its destination or workspace is busy waits 5 s plus up to
# a second of jitter: one hop of the ladder's 5 s step (a shorter wait would hop through
# the 1 s step every second, a publish each time). Its receiver's answer is read up to
# 1 MiB (and dropped).
CALLBACK_DELIVERY = DeliveryKind(
    "flowhooks-callbacks", max_response_bytes=1_048_576, busy_retry_s=5.0
)


def webhook_id(request_id: str) -> str:
    """The `webhook-id` of a request's callback: derived, not drawn, so that a callback
    enqueued twice (a runner crash) is one message to the receiver."""
    return "msg_" + request_id.replace(".", "_")  # the signed content is '.'-separated


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def callback_payload(request: WebhookRequest, result: RunResult) -> str:
    """The JSON POSTed, in the Standard Webhooks shape (type, timestamp, data); the
    same bytes at every attempt (README, "Completion callbacks")."""
    return orjson.dumps(
        {
            "type": PAYLOAD_TYPE,
            "timestamp": _iso(result.finished_at),
            "data": {
                "request_id": request.request_id,
                "flow_id": request.flow_id,
                "outcome": result.outcome,
                "status_code": result.status_code,
                "content_type": result.content_type,
                "headers": result.headers,
                "body": result.body,
                "error": result.error,
                "received_at": _iso(request.received_at),
                "started_at": _iso(result.started_at),
                "finished_at": _iso(result.finished_at),
            },
        }
    ).decode()


def retry_policy(delays_s: Sequence[float], give_up_s: float) -> RetryPolicy:
    """Full jitter: each wait uniform in [0, cap), the caps `delays_s` (the last
    repeated); no attempt starts more than `give_up_s` after the enqueue."""
    return RetryPolicy(tuple(delays_s), jitter=True, give_up_s=give_up_s)


def ladder_step(wait_s: float, ladder_s: Sequence[int] = topology.CALLBACK_LADDER_S) -> int | None:
    """The longest step of the ladder that does not overshoot `wait_s`; None when less
    than the shortest step is left (attempt now)."""
    fitting = [step for step in ladder_s if step <= wait_s]
    return max(fitting) if fitting else None


def judge(
    attempted: Attempted,
    message: CallbackRequested,
    now: datetime,
    retry: RetryPolicy,
    rng: Callable[[], float] = random.random,
) -> Verdict:
    """What follows the attempt of `message` that got `attempted`, judged at `now`."""
    age_s = (now - message.first_at).total_seconds()
    return judge_attempt(attempted, message.attempt, retry, age_s, rng)


class CallbackSender:
    def __init__(self, broker: Broker, engine: DeliveryEngine, box: SecretBox | None) -> None:
        self.broker = broker
        # Signs, sends and judges each attempt (shared/delivery.py); its guard (None in
        # tests of the attempt alone) decides whether an attempt is made now.
        self.engine = engine
        self.box = box
        # Exported as metrics (services/runner/metrics.py): failed attempts, and
        # callbacks given up on (state `failed`).
        self.attempts_failed = 0
        self.given_up = 0
        # Callbacks parked again without an attempt (destination busy or open, or the
        # workspace over its share).
        self.deferred = 0

    @property
    def guard(self) -> DeliveryGuard | None:
        """The guard in front of the callbacks' attempts (its counters are metrics)."""
        return self.engine.guard

    async def enqueue(
        self, request: WebhookRequest, result: RunResult, callback: WebhookCallback
    ) -> None:
        """Raises `Unavailable` unless the broker confirmed it."""
        if not isinstance(callback.secret, SealedSecret):  # stored flows hold it sealed
            log.error("callback_secret_not_sealed", flow_id=request.flow_id)
            return
        now = datetime.now(UTC)
        message = CallbackRequested(
            webhook_id=webhook_id(request.request_id),
            request_id=request.request_id,
            flow_id=request.flow_id,
            workspace_id=request.workspace_id,
            url=callback.url,
            sealed_secret=callback.secret.sealed,
            payload=callback_payload(request, result),
            first_at=now,
            due_at=now,
        )
        await self._publish(message, CALLBACKS.queue.name)

    async def _publish(self, message: CallbackRequested, queue: str) -> None:
        await self.broker.publish(
            message.model_dump_json().encode(),
            routing_key=queue,
            message_type=CallbackRequested.__name__,
        )

    async def _park(self, message: CallbackRequested, now: datetime) -> None:
        """Into the longest ladder step that fits what is left of its wait, or back into
        the work queue when less than the shortest step is left."""
        step = ladder_step((message.due_at - now).total_seconds())
        queue = CALLBACKS.queue.name if step is None else naming.callback_wait_queue_name(step)
        await self._publish(message, queue)

    async def on_callback(self, message: CallbackRequested, delivery: Delivery) -> None:
        structlog.contextvars.bind_contextvars(request_id=message.request_id)
        now = datetime.now(UTC)
        try:
            if ladder_step((message.due_at - now).total_seconds()) is not None:
                await self._park(message, now)  # back early from a step: not due yet
                return
            permit = self.engine.admit(message.url, message.workspace_id)
            if isinstance(permit, Deferred):
                await self._defer(message, permit, now)
                return
            attempted = await self.engine.attempt(
                permit,
                message.url,
                message.webhook_id,
                message.payload.encode(),
                lambda: self._open_secret(message),
            )
            judged_at = datetime.now(UTC)
            verdict = judge(attempted, message, judged_at, self.engine.retry, self.engine.rng)
            next_attempt_at = (
                None
                if verdict.retry_in_s is None
                else judged_at + timedelta(seconds=verdict.retry_in_s)
            )
            await self._record(
                message,
                now,
                status_code=attempted.status,
                error=verdict.error,
                next_attempt_at=next_attempt_at,
                state=verdict.state,
            )
            if next_attempt_at is not None:
                following = message.model_copy(
                    update={"attempt": message.attempt + 1, "due_at": next_attempt_at}
                )
                await self._park(following, datetime.now(UTC))
        except Unavailable as exc:
            raise Retry(f"callback not recorded or not parked: {exc}") from exc
        if verdict.state != "delivered":
            self.attempts_failed += 1
            if verdict.state == CallbackState.FAILED:
                self.given_up += 1
        log.info(
            "callback_attempted",
            url=safe_url(message.url),
            attempt=message.attempt,
            status_code=attempted.status,
            state=verdict.state,
            error=verdict.error,
        )

    async def _record(self, message: CallbackRequested, at: datetime, **outcome: Any) -> None:
        """One `callback.attempted` (confirmed): the attempt's outcome, or the end of a
        callback that is given up on without one."""
        await self.broker.publish_event(
            CALLBACK_ATTEMPTED,
            CallbackAttempted(
                id=uuid.uuid4().hex,
                webhook_id=message.webhook_id,
                request_id=message.request_id,
                flow_id=message.flow_id,
                workspace_id=message.workspace_id,
                attempt=message.attempt,
                at=at,
                **outcome,
            ),
        )

    async def _defer(self, message: CallbackRequested, deferred: Deferred, now: datetime) -> None:
        """Parked again for what the guard said (spread, so that callbacks deferred
        together do not come back together), without an attempt or a record."""
        wait_s = self.engine.deferral_s(deferred)
        due = now + timedelta(seconds=wait_s)
        give_up_s = self.engine.retry.give_up_s
        if give_up_s is not None and due > message.first_at + timedelta(seconds=give_up_s):
            # It would never be attempted again: the end is recorded, as for a last attempt.
            error = (
                f"not attempted: {deferred.why.replace('_', ' ')} (shared/delivery_guard.py);"
                f" gave up: no attempt after {give_up_s:g} s"
            )
            await self._record(message, now, error=error, state=CallbackState.FAILED)
            self.given_up += 1
            log.info("callback_given_up_deferred", url=safe_url(message.url), why=deferred.why)
            return
        await self._park(message.model_copy(update={"due_at": due}), now)
        self.deferred += 1
        log.debug("callback_deferred", url=safe_url(message.url), why=deferred.why, wait_s=wait_s)

    def _open_secret(self, message: CallbackRequested) -> str:
        """The flow's callback secret, opened for this attempt only."""
        try:
            if self.box is None:
                raise SealError("no key")
            return self.box.open(message.sealed_secret, message.workspace_id)
        except SealError:
            # An operator's mistake (key ring changed or missing): retried, so that the
            # callback still goes out once the key is back. Nothing was sent.
            raise SecretUnavailable(
                "the callback secret cannot be opened (FLOWHOOKS_WEBHOOK_SECRETS_KEY)"
            ) from None

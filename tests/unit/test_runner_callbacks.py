"""Completion callbacks (services/runner/callbacks.py): the payload, full-jitter backoff,
the wait ladder, what follows each answer, the sender's handling of one message (with
a fake broker and receiver), and `webhook.callback` on save (validation, sealing, hint)."""

import base64
import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from harness.factories import webhook_request
from services.runner.callbacks import (
    DEFAULT_RETRY_DELAYS_S,
    CallbackSender,
    callback_payload,
    judge,
    ladder_step,
    retry_policy,
    webhook_id,
)
from services.runner.definition import SealedSecret, WebhookCallback, parse_definition
from services.runner.flow_cache import without_auth
from services.runner.templates import TemplateEngine
from services.runner.webhook_secrets import (
    held_callback_secret,
    public_webhook,
    seal_callback_secret,
)
from shared import standard_webhooks
from shared.delivery import Attempted, DeliveryEngine, Verdict
from shared.delivery_guard import DeliveryGuard, Permit
from shared.errors import BadRequest, Unavailable
from shared.messaging import naming
from shared.schemas.callbacks import CallbackAttempted, CallbackRequested
from shared.schemas.runs import RunResult
from shared.secret_box import SecretBox
from shared.service import Delivery, Retry

BOX = SecretBox("unit-test-webhook-secrets-key-0123456789")
WORKSPACE = "00000000-0000-0000-0000-000000000009"
SECRET = "whsec_" + base64.b64encode(b"callback-secret-0123456789abcdef").decode()
T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
DELIVERY = Delivery(False, None, naming.CALLBACKS_QUEUE, "CallbackRequested")


def result(**fields: Any) -> RunResult:
    values: dict[str, Any] = {
        "request_id": "r1",
        "outcome": "succeeded",
        "status_code": 201,
        "content_type": "application/json",
        "body": '{"ok":true}',
        "headers": {"X-Flow": "1"},
        "started_at": T0 + timedelta(seconds=1),
        "finished_at": T0 + timedelta(seconds=2),
    }
    return RunResult(**{**values, **fields})


def message(**fields: Any) -> CallbackRequested:
    values: dict[str, Any] = {
        "webhook_id": "msg_r1",
        "request_id": "r1",
        "flow_id": "00000000-0000-0000-0000-000000000001",
        "workspace_id": WORKSPACE,
        "url": "https://example.com/hook",
        "sealed_secret": BOX.seal(SECRET, WORKSPACE),
        "payload": '{"type":"run.finished"}',
        "first_at": T0,
        "due_at": T0,
    }
    return CallbackRequested(**{**values, **fields})


# The payload.


def test_the_payload_is_the_result_in_the_standard_webhooks_shape() -> None:
    request = webhook_request({"a": 1}, request_id="r1", received_at=T0)
    payload = orjson.loads(callback_payload(request, result()))
    assert payload == {
        "type": "run.finished",
        "timestamp": "2026-01-02T03:04:07Z",
        "data": {
            "request_id": "r1",
            "flow_id": request.flow_id,
            "outcome": "succeeded",
            "status_code": 201,
            "content_type": "application/json",
            "headers": {"X-Flow": "1"},
            "body": '{"ok":true}',
            "error": None,
            "received_at": "2026-01-02T03:04:05Z",
            "started_at": "2026-01-02T03:04:06Z",
            "finished_at": "2026-01-02T03:04:07Z",
        },
    }


def test_a_failed_run_carries_its_error() -> None:
    failed = result(outcome="failed", status_code=500, body="", error="step boom failed")
    data = orjson.loads(callback_payload(webhook_request(), failed))["data"]
    assert (data["outcome"], data["status_code"], data["error"]) == (
        "failed",
        500,
        "step boom failed",
    )


def test_the_webhook_id_is_derived_from_the_request_and_signable() -> None:
    assert webhook_id("3f2a9c01b7de") == "msg_3f2a9c01b7de"
    assert webhook_id("a.b") == "msg_a_b"  # the signed content is '.'-separated
    standard_webhooks.sign(SECRET, webhook_id("a.b"), 1, b"{}")


# Backoff, jitter and the ladder.


def test_the_caps_grow_exponentially_then_repeat_the_last() -> None:
    policy = retry_policy(DEFAULT_RETRY_DELAYS_S, 86_400)
    assert [policy.cap_s(n) for n in (1, 2, 3, 11, 12, 50)] == [
        5.0,
        10.0,
        20.0,
        3600.0,
        3600.0,
        3600.0,
    ]
    doubling = list(itertools.pairwise(DEFAULT_RETRY_DELAYS_S))[:-1]
    assert all(b == 2 * a for a, b in doubling)


def test_full_jitter_is_uniform_between_zero_and_the_cap() -> None:
    policy = retry_policy(DEFAULT_RETRY_DELAYS_S, 86_400)
    assert policy.delay_s(3, rng=lambda: 0.0) == 0.0
    assert policy.delay_s(3, rng=lambda: 0.5) == 10.0
    assert policy.delay_s(3, rng=lambda: 0.999) == pytest.approx(19.98)
    drawn = [retry_policy([10.0], 86_400).delay_s(2) for _ in range(2000)]
    assert 0 <= min(drawn) < 0.5 and 9.5 < max(drawn) < 10
    assert 4.5 < sum(drawn) / len(drawn) < 5.5


@pytest.mark.parametrize(
    ("wait_s", "step"),
    [(0.0, None), (0.99, None), (1.0, 1), (4.9, 1), (5.0, 5), (29.0, 5), (119.9, 30), (7200, 3600)],
)
def test_a_wait_is_parked_in_the_longest_step_that_does_not_overshoot(
    wait_s: float, step: int | None
) -> None:
    assert ladder_step(wait_s) == step


def ladder_hops(wait_s: float) -> list[int]:
    """The steps a wait of `wait_s` takes, in order (what repeated `ladder_step` does)."""
    hops: list[int] = []
    while (step := ladder_step(wait_s)) is not None:
        hops.append(step)
        wait_s -= step
    return hops


def test_a_long_wait_takes_several_hops_and_is_honoured_within_a_second() -> None:
    assert ladder_hops(437.5) == [120, 120, 120, 30, 30, 5, 5, 5, 1, 1]
    for wait_s in (0.5, 3.2, 59.0, 1234.5, 3599.9, 86_399.0):
        hops = ladder_hops(wait_s)
        assert 0 <= wait_s - sum(hops) < 1
    # The longest wait of the default schedule stays a handful of messages.
    assert len(ladder_hops(3599.9)) <= 25


# What follows an attempt.


def verdict_of(
    status: int | None,
    error: str | None,
    sent: CallbackRequested,
    now: datetime,
    *,
    delays_s: list[float],
    give_up_s: float,
    rng: float = 0.5,
) -> tuple[Verdict, datetime | None]:
    """The verdict, and when the next attempt is due (None: there is none)."""
    attempted = Attempted(status, error, "unknown")
    verdict = judge(attempted, sent, now, retry_policy(delays_s, give_up_s), lambda: rng)
    if verdict.retry_in_s is None:
        return verdict, None
    return verdict, now + timedelta(seconds=verdict.retry_in_s)


def test_a_2xx_delivers() -> None:
    verdict, next_at = verdict_of(204, None, message(), T0, delays_s=[10.0], give_up_s=86_400)
    assert (verdict.state, verdict.error, next_at) == ("delivered", None, None)


def test_410_gone_stops() -> None:
    verdict, next_at = verdict_of(
        410, "the receiver answered 410", message(), T0, delays_s=[10.0], give_up_s=9e9
    )
    assert verdict.state == "failed" and next_at is None
    assert verdict.error == "the receiver answered 410 Gone: delivery stopped"


@pytest.mark.parametrize("status", [500, 429, 404, 301, None])
def test_anything_else_is_retried_after_a_jittered_wait(status: int | None) -> None:
    verdict, next_at = verdict_of(
        status,
        None if status else "ClientConnectorError: refused",
        message(attempt=2),
        T0,
        delays_s=[10.0, 40.0],
        give_up_s=86_400,
        rng=0.25,
    )
    assert verdict.state == "delivering"
    assert next_at == T0 + timedelta(seconds=10)
    assert verdict.error == (
        f"the receiver answered {status}" if status else "ClientConnectorError: refused"
    )


def test_no_attempt_is_made_past_the_give_up_time() -> None:
    late = T0 + timedelta(hours=23, minutes=59)
    verdict, next_at = verdict_of(
        500, None, message(attempt=40), late, delays_s=[3600.0], give_up_s=86_400, rng=0.5
    )
    assert verdict.state == "failed" and next_at is None
    assert verdict.error == "the receiver answered 500; gave up: no attempt after 86400 s"


# The sender, with a fake broker and a fake receiver.


class FakeBroker:
    def __init__(self, fail: bool = False) -> None:
        self.published: list[tuple[str, CallbackRequested]] = []
        self.events: list[CallbackAttempted] = []
        self.fail = fail

    async def publish(self, body: bytes, *, routing_key: str, **_: Any) -> None:
        if self.fail:
            raise Unavailable("broker away")
        self.published.append((routing_key, CallbackRequested.model_validate_json(body)))

    async def publish_event(self, event: Any, body: CallbackAttempted) -> None:
        if self.fail:
            raise Unavailable("broker away")
        self.events.append(body)


class FakeHttp:
    def __init__(self, *statuses: int) -> None:
        self.statuses = list(statuses)
        self.calls: list[tuple[str, dict[str, str], bytes]] = []

    async def request(
        self, method: str, url: str, *, headers: dict[str, str], data: bytes, **_: Any
    ) -> tuple[int, dict[str, str], bytes]:
        self.calls.append((url, headers, data))
        return self.statuses.pop(0), {}, b""


def sender(broker: FakeBroker, http: FakeHttp, rng: float = 0.5) -> CallbackSender:
    engine = DeliveryEngine(
        http,  # type: ignore[arg-type]
        user_agent="flowhooks-callbacks",
        retry=retry_policy([20.0], 86_400),
        max_response_bytes=1024,
        rng=lambda: rng,
    )
    return CallbackSender(broker, engine, BOX)  # type: ignore[arg-type]


async def test_a_due_callback_is_signed_sent_and_recorded_as_delivered() -> None:
    broker, http = FakeBroker(), FakeHttp(200)
    now = datetime.now(UTC)
    await sender(broker, http).on_callback(message(first_at=now, due_at=now), DELIVERY)
    [(url, headers, body)] = http.calls
    assert url == "https://example.com/hook" and body == b'{"type":"run.finished"}'
    standard_webhooks.verify(SECRET, headers, body)
    assert headers["webhook-id"] == "msg_r1"
    assert headers["Content-Type"] == "application/json"
    [event] = broker.events
    assert (event.attempt, event.status_code, event.error, event.state) == (
        1,
        200,
        None,
        "delivered",
    )
    assert event.next_attempt_at is None and broker.published == []


async def test_a_failed_attempt_is_recorded_then_parked_for_the_next() -> None:
    broker, http = FakeBroker(), FakeHttp(500)
    now = datetime.now(UTC)
    await sender(broker, http, rng=0.5).on_callback(message(first_at=now, due_at=now), DELIVERY)
    [event] = broker.events
    assert (event.attempt, event.status_code, event.state) == (1, 500, "delivering")
    assert event.error == "the receiver answered 500"
    assert event.next_attempt_at is not None
    waited = (event.next_attempt_at - event.at).total_seconds()
    assert 10 <= waited < 10.5  # half the 20 s cap
    [(queue, parked)] = broker.published
    assert queue == naming.callback_wait_queue_name(5)  # the longest step under ~10 s
    assert parked.attempt == 2 and parked.due_at == event.next_attempt_at
    assert parked.webhook_id == "msg_r1" and parked.payload == message().payload


async def test_a_message_back_before_it_is_due_is_parked_again_without_an_attempt() -> None:
    broker, http = FakeBroker(), FakeHttp()
    now = datetime.now(UTC)
    due = now + timedelta(seconds=36)
    await sender(broker, http).on_callback(message(attempt=3, due_at=due), DELIVERY)
    assert http.calls == [] and broker.events == []
    [(queue, parked)] = broker.published
    assert queue == naming.callback_wait_queue_name(30) and parked.attempt == 3


async def test_an_unopenable_secret_is_a_failed_attempt_not_a_send() -> None:
    broker, http = FakeBroker(), FakeHttp()
    now = datetime.now(UTC)
    other = SecretBox("another-webhook-secrets-key-0123456789ab")
    await sender(broker, http).on_callback(
        message(sealed_secret=other.seal(SECRET, WORKSPACE), first_at=now, due_at=now), DELIVERY
    )
    assert http.calls == []
    [event] = broker.events
    assert event.state == "delivering" and event.status_code is None
    assert event.error == "the callback secret cannot be opened (FLOWHOOKS_WEBHOOK_SECRETS_KEY)"


async def test_the_broker_away_retries_the_message() -> None:
    now = datetime.now(UTC)
    with pytest.raises(Retry):
        await sender(FakeBroker(fail=True), FakeHttp(200)).on_callback(
            message(first_at=now, due_at=now), DELIVERY
        )


async def test_enqueue_publishes_the_first_attempt_on_the_callbacks_queue() -> None:
    broker = FakeBroker()
    request = webhook_request(request_id="abc")
    sealed = SealedSecret(sealed=BOX.seal(SECRET, request.workspace_id), hint="…abcd")
    callback = WebhookCallback(url="https://example.com/cb", secret=sealed)
    await sender(broker, FakeHttp()).enqueue(request, result(request_id="abc"), callback)
    [(queue, queued)] = broker.published
    assert queue == naming.CALLBACKS_QUEUE
    assert queued.webhook_id == "msg_abc" and queued.attempt == 1
    assert queued.sealed_secret == sealed.sealed and queued.url == "https://example.com/cb"
    assert queued.due_at == queued.first_at
    assert orjson.loads(queued.payload)["data"]["request_id"] == "abc"


# `webhook.callback` on save.


def flow(**webhook: Any) -> dict[str, Any]:
    return {"name": "f", "webhook": {"async": True, **webhook}, "steps": []}


def refusal(raw: Any) -> tuple[str, Any]:
    with pytest.raises(BadRequest) as caught:
        parse_definition(raw, TemplateEngine(), max_timeout_s=300)
    return caught.value.message, caught.value.data


@pytest.mark.parametrize(
    ("webhook", "field", "message_start"),
    [
        (
            {"async": False, "callback": {"url": "https://e.com/", "secret": SECRET}},
            "webhook.callback",
            "webhook.callback: callbacks are sent for async flows only",
        ),
        (
            {"callback": {"url": "ftp://e.com/", "secret": SECRET}},
            "webhook.callback.url",
            "webhook.callback.url: only http and https URLs are allowed",
        ),
        (
            {"callback": {"url": "https://e.com/", "secret": "whsec_short"}},
            "webhook.callback.secret",
            "webhook.callback.secret: the secret must",
        ),
        (
            {"callback": {"url": "https://e.com/", "secret": SECRET.removeprefix("whsec_")}},
            "webhook.callback.secret",
            "webhook.callback.secret: the secret must be whsec_ followed by base64",
        ),
        (
            {"callback": {"url": "https://e.com/"}},
            "webhook.callback.secret",
            "webhook.callback.secret: Field required",
        ),
    ],
)
def test_invalid_callbacks_are_refused(
    webhook: dict[str, Any], field: str, message_start: str
) -> None:
    text, data = refusal(flow(**webhook))
    assert data == {"field": field}
    assert text.startswith(message_start), text


def test_the_secret_is_sealed_shown_as_a_hint_and_kept_when_saved_back() -> None:
    definition = parse_definition(
        flow(callback={"url": "https://e.com/cb", "secret": SECRET}), TemplateEngine(), 300
    )
    seal_callback_secret(definition, None, BOX, WORKSPACE)
    stored = definition.public()["webhook"]
    sealed = stored["callback"]["secret"]
    assert sealed["hint"] == "…" + SECRET[-4:]
    assert BOX.open(sealed["sealed"], WORKSPACE) == SECRET
    assert SECRET not in orjson.dumps(stored).decode()
    shown = public_webhook(stored)
    assert shown["callback"] == {"url": "https://e.com/cb", "secret": "…" + SECRET[-4:]}

    held = held_callback_secret(stored)
    again = parse_definition(flow(callback=shown["callback"]), TemplateEngine(), 300)
    seal_callback_secret(again, held, BOX, WORKSPACE)
    assert again.public()["webhook"]["callback"]["secret"] == sealed
    # What a PATCH merges in: the stored form, kept if it is this flow's.
    merged = parse_definition(flow(callback=stored["callback"]), TemplateEngine(), 300)
    seal_callback_secret(merged, held, BOX, WORKSPACE)
    assert merged.public()["webhook"]["callback"]["secret"] == sealed


def test_a_foreign_sealed_secret_or_unknown_hint_is_refused() -> None:
    other = {"sealed": BOX.seal(SECRET, "someone-else"), "hint": "…zzzz"}
    for secret, text in ((other, "not the secret of this flow"), ("…zzzz", "names no secret")):
        definition = parse_definition(
            flow(callback={"url": "https://e.com/", "secret": secret}), TemplateEngine(), 300
        )
        with pytest.raises(BadRequest) as caught:
            seal_callback_secret(definition, None, BOX, WORKSPACE)
        assert text in caught.value.message
        assert caught.value.data == {"field": "webhook.callback.secret"}


def test_without_a_secrets_key_callbacks_are_refused() -> None:
    definition = parse_definition(
        flow(callback={"url": "https://e.com/", "secret": SECRET}), TemplateEngine(), 300
    )
    with pytest.raises(BadRequest) as caught:
        seal_callback_secret(definition, None, None, WORKSPACE)
    assert caught.value.data == {"field": "webhook.callback"}


def test_workers_never_see_the_callback() -> None:
    definition = {"webhook": {"async": True, "callback": {"url": "u", "secret": {}}}, "steps": []}
    assert without_auth(definition) == {"webhook": {"async": True}, "steps": []}


# Fairness: the delivery guard (shared/delivery_guard.py) in front of each attempt.


def guarded(broker: FakeBroker, http: FakeHttp, give_up_s: float = 86_400) -> CallbackSender:
    engine = DeliveryEngine(
        http,  # type: ignore[arg-type]
        user_agent="flowhooks-callbacks",
        retry=retry_policy([20.0], give_up_s),
        max_response_bytes=1024,
        rng=lambda: 0.5,
        guard=DeliveryGuard(
            per_destination=1, slots=8, failures_to_open=2, cool_down_s=40.0, busy_retry_s=5.0
        ),
    )
    return CallbackSender(broker, engine, BOX)  # type: ignore[arg-type]


async def test_a_busy_destination_defers_the_callback_without_an_attempt() -> None:
    broker, http = FakeBroker(), FakeHttp()
    callbacks = guarded(broker, http)
    assert callbacks.guard is not None
    held = callbacks.guard.admit("https://example.com/other", "another workspace")
    assert isinstance(held, Permit)  # an attempt in flight to the same destination
    now = datetime.now(UTC)
    await callbacks.on_callback(message(attempt=2, first_at=now, due_at=now), DELIVERY)
    assert http.calls == [] and broker.events == []  # nothing sent, nothing recorded
    [(queue, parked)] = broker.published
    assert queue == naming.callback_wait_queue_name(5)  # one hop of the ladder
    assert parked.attempt == 2  # no attempt counted
    assert 5.0 <= (parked.due_at - now).total_seconds() < 6.0
    assert callbacks.deferred == 1
    # Back from its hop, the destination free again: attempted as attempt 2.
    held.done("healthy")
    http.statuses.append(200)
    await callbacks.on_callback(parked.model_copy(update={"due_at": now}), DELIVERY)
    [event] = broker.events
    assert (event.attempt, event.state) == (2, "delivered")


async def test_an_open_circuit_defers_for_its_cool_down_and_other_destinations_go() -> None:
    broker, http = FakeBroker(), FakeHttp(500, 503, 200)
    callbacks = guarded(broker, http)
    now = datetime.now(UTC)
    for n in (1, 2):  # two failures in a row open the circuit
        await callbacks.on_callback(message(request_id=f"r{n}", first_at=now, due_at=now), DELIVERY)
    guard = callbacks.guard
    assert guard is not None and guard.state(message().url) == "open"
    broker.published.clear()
    await callbacks.on_callback(message(request_id="r3", first_at=now, due_at=now), DELIVERY)
    assert len(http.calls) == 2 and len(broker.events) == 2  # r3: no attempt, no record
    [(queue, parked)] = broker.published
    assert queue == naming.callback_wait_queue_name(30) and parked.attempt == 1
    # The rest of the 40 s cool-down, spread by half of it at most, plus up to a second.
    assert 40 <= (parked.due_at - now).total_seconds() < 61
    # Another destination (a healthy receiver) is attempted at once.
    other = message(request_id="b1", workspace_id=WORKSPACE, url="https://b.example.org/cb")
    await callbacks.on_callback(other.model_copy(update={"first_at": now, "due_at": now}), DELIVERY)
    assert http.calls[-1][0] == "https://b.example.org/cb"
    assert broker.events[-1].state == "delivered"


async def test_a_deferral_past_the_give_up_time_is_recorded_failed_without_an_attempt() -> None:
    broker, http = FakeBroker(), FakeHttp(500, 500)
    callbacks = guarded(broker, http, give_up_s=30)
    now = datetime.now(UTC)
    for n in (1, 2):
        await callbacks.on_callback(message(request_id=f"r{n}", first_at=now, due_at=now), DELIVERY)
    broker.published.clear()
    await callbacks.on_callback(message(attempt=4, first_at=now, due_at=now), DELIVERY)
    assert len(http.calls) == 2 and broker.published == []
    event = broker.events[-1]
    assert (event.attempt, event.status_code, event.state, event.next_attempt_at) == (
        4,
        None,
        "failed",
        None,
    )
    assert event.error == (
        "not attempted: circuit open (shared/delivery_guard.py); gave up: no attempt after 30 s"
    )
    assert callbacks.given_up == 1

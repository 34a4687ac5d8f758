"""The one outbound delivery engine and retry policy (shared/delivery.py), and the
delivery settings both services read from their own flat variables."""

from typing import Any

import aiohttp
import pytest

from services.debugger.settings import DebuggerSettings
from services.runner.settings import RunnerSettings
from shared import standard_webhooks
from shared.delivery import (
    Attempted,
    DeliveryEngine,
    DeliverySettings,
    SecretUnavailable,
    judge,
)
from shared.delivery_guard import DeliveryGuard
from shared.retry import RetryPolicy
from tests.unit.test_runner_callbacks import SECRET


def test_doubling_caps_grow_to_the_longest_then_repeat() -> None:
    assert RetryPolicy.doubling(5.0, 60.0).delays_s == (5.0, 10.0, 20.0, 40.0, 60.0)
    assert RetryPolicy.doubling(100.0, 60.0).delays_s == (60.0,)
    assert RetryPolicy.doubling(0.0, 60.0).delays_s == (0.0,)
    policy = RetryPolicy.doubling(0.2, 0.8)
    assert [policy.delay_s(n) for n in (1, 2, 3, 4, 9)] == [0.2, 0.4, 0.8, 0.8, 0.8]


def test_full_jitter_draws_below_the_cap_and_no_jitter_is_the_cap() -> None:
    jittered = RetryPolicy((10.0,), jitter=True)
    assert jittered.delay_s(1, rng=lambda: 0.25) == 2.5
    assert RetryPolicy((10.0,)).delay_s(1, rng=lambda: 0.25) == 10.0


def test_a_policy_without_delays_is_refused() -> None:
    with pytest.raises(ValueError, match="one or more delays"):
        RetryPolicy(())
    with pytest.raises(ValueError, match="none negative"):
        RetryPolicy((1.0, -1.0))


def test_the_verdict_delivers_stops_retries_or_gives_up() -> None:
    policy = RetryPolicy((10.0,), max_attempts=3, give_up_s=100.0)
    failing = Attempted(503, "the receiver answered 503", "failing")
    assert judge(Attempted(201, None, "healthy"), 1, policy).state == "delivered"
    gone = judge(Attempted(410, "the receiver answered 410", "healthy"), 1, policy)
    assert (gone.state, gone.retry_in_s) == ("failed", None)
    retried = judge(failing, 2, policy, age_s=50.0)
    assert (retried.state, retried.error, retried.retry_in_s) == (
        "delivering",
        "the receiver answered 503",
        10.0,
    )
    spent = judge(failing, 3, policy)
    assert (spent.state, spent.error) == (
        "failed",
        "the receiver answered 503; gave up after 3 attempts",
    )
    late = judge(failing, 1, policy, age_s=95.0)
    assert (late.state, late.error) == (
        "failed",
        "the receiver answered 503; gave up: no attempt after 100 s",
    )


class FakeHttp:
    def __init__(self, answer: int | Exception) -> None:
        self.answer = answer
        self.calls: list[tuple[str, dict[str, str], bytes, dict[str, Any]]] = []

    async def request(
        self, method: str, url: str, *, headers: dict[str, str], data: bytes, **options: Any
    ) -> tuple[int, dict[str, str], bytes]:
        self.calls.append((url, headers, data, options))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer, {}, b""


def engine(http: FakeHttp, guard: DeliveryGuard | None = None) -> DeliveryEngine:
    return DeliveryEngine(
        http,  # type: ignore[arg-type]
        user_agent="flowhooks-test",
        retry=RetryPolicy((1.0,)),
        max_response_bytes=100,
        timeout_s=7.0,
        connect_timeout_s=1.0,
        first_byte_timeout_s=2.0,
        guard=guard,
    )


def guard() -> DeliveryGuard:
    return DeliveryGuard(
        per_destination=1, slots=4, failures_to_open=1, cool_down_s=30.0, busy_retry_s=5.0
    )


async def test_an_attempt_is_a_signed_post_without_redirects_within_the_timeouts() -> None:
    http = FakeHttp(204)
    attempted = await engine(http).attempt(None, "https://e.com/h", "msg_1", b"{}", lambda: SECRET)
    assert attempted == Attempted(204, None, "healthy") and attempted.delivered
    [(url, headers, body, options)] = http.calls
    standard_webhooks.verify(SECRET, headers, body)
    assert (url, headers["webhook-id"], headers["User-Agent"]) == (
        "https://e.com/h",
        "msg_1",
        "flowhooks-test",
    )
    assert options == {
        "timeout_s": 7.0,
        "connect_timeout_s": 1.0,
        "first_byte_timeout_s": 2.0,
        "max_response_bytes": 100,
        "follow_redirects": False,
    }


async def test_no_answer_opens_the_circuit_and_a_missing_secret_sends_nothing() -> None:
    guarded = engine(FakeHttp(aiohttp.ClientConnectionError("refused")), guard())
    permit = guarded.admit("https://e.com/h", "w1")
    attempted = await guarded.attempt(permit, "https://e.com/h", "msg_1", b"{}", lambda: SECRET)  # type: ignore[arg-type]
    assert attempted == Attempted(None, "ClientConnectionError: refused", "failing")
    assert guarded.guard is not None and guarded.guard.state("https://e.com/h") == "open"

    def no_secret() -> str:
        raise SecretUnavailable("the key is gone")

    http = FakeHttp(200)
    other = engine(http, guard())
    permit = other.admit("https://e.com/h", "w1")
    attempted = await other.attempt(permit, "https://e.com/h", "msg_1", b"{}", no_secret)  # type: ignore[arg-type]
    assert attempted == Attempted(None, "the key is gone", "unknown") and http.calls == []
    assert other.guard is not None and other.guard.in_flight("w1") == 0


def test_each_service_reads_the_delivery_settings_from_its_own_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLOWHOOKS_RUNNER_TOKEN_KEYS", "a-key-of-the-ring")
    monkeypatch.delenv("FLOWHOOKS_RUNNER_TOKEN_KEY", raising=False)
    monkeypatch.setenv("FLOWHOOKS_RUNNER_CALLBACK_SLOTS", "7")
    monkeypatch.setenv("FLOWHOOKS_RUNNER_CALLBACK_ALLOW_NETWORKS", '["10.0.0.0/8"]')
    monkeypatch.setenv("FLOWHOOKS_DEBUGGER_ALERT_BREAKER_COOL_DOWN_S", "12.5")
    runner = RunnerSettings().callback_delivery()
    assert runner == DeliverySettings(slots=7, allow_networks=["10.0.0.0/8"])
    assert DebuggerSettings().alert_delivery() == DeliverySettings(breaker_cool_down_s=12.5)
    names = set(RunnerSettings.model_fields) | set(DebuggerSettings.model_fields)
    for field in DeliverySettings.model_fields:
        assert {f"runner_callback_{field}", f"debugger_alert_{field}"} <= names
    monkeypatch.setenv("FLOWHOOKS_DEBUGGER_ALERT_SLOTS", "0")
    with pytest.raises(ValueError, match="debugger_alert_slots"):
        DebuggerSettings()

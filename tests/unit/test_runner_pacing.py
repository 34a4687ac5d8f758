"""`webhook.ordering`, `concurrency`, `debounce`, `throttle` and `delay_s`: validated on
save (async flows only), shown only when set, and each request's lane (its keys bounded
like dedup keys)."""

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.runner.definition import WebhookTrigger, parse_definition
from services.runner.pacing import KEYLESS, Pacing
from services.runner.templates import TemplateEngine
from shared.errors import BadRequest
from shared.schemas.runs import WebhookRequest

RECEIVED = datetime(2026, 1, 1, tzinfo=UTC)


def parse(webhook: dict[str, Any]) -> Any:
    return parse_definition(
        {"name": "paced", "webhook": webhook, "steps": []}, TemplateEngine(), 300
    )


def refusal(webhook: dict[str, Any]) -> tuple[str, str]:
    with pytest.raises(BadRequest) as refused:
        parse(webhook)
    return refused.value.data["field"], refused.value.message


def request(body: Any, headers: dict[str, str] | None = None) -> WebhookRequest:
    return WebhookRequest(
        request_id="r1",
        flow_id="f1",
        workspace_id="w1",
        received_at=RECEIVED,
        method="POST",
        path="/",
        query={},
        headers=headers or {},
        content_type="application/json",
        raw_body="",
        input=body,
    )


def pacing(**webhook: Any) -> Pacing:
    paced = Pacing.of(WebhookTrigger.model_validate({"async": True, **webhook}))
    assert paced is not None
    return paced


@pytest.mark.parametrize(
    "setting",
    [
        {"ordering": {"key": "json:/k"}},
        {"concurrency": {"limit": 2}},
        {"debounce": {"key": "json:/k", "period_s": 1}},
        {"throttle": {"key": "json:/k", "limit": 1, "period_s": 1}},
        {"delay_s": 5},
    ],
)
def test_a_sync_flow_cannot_be_paced(setting: dict[str, Any]) -> None:
    (name,) = setting
    assert refusal(setting) == (
        f"webhook.{name}",
        f"webhook.{name}: ordering and pacing apply to async flows only"
        " (set webhook.async to true)",
    )
    parse({"async": True, **setting})  # an async flow can


@pytest.mark.parametrize(
    ("webhook", "field"),
    [
        ({"ordering": {"key": "body:/k"}}, "webhook.ordering.key"),
        ({"ordering": {"key": "json:/k", "concurrency": 0}}, "webhook.ordering.concurrency"),
        ({"concurrency": {"limit": 100_000}}, "webhook.concurrency.limit"),
        ({"debounce": {"key": "json:/k", "period_s": 0}}, "webhook.debounce.period_s"),
        (
            {"debounce": {"key": "json:/k", "period_s": 5, "max_wait_s": 1}},
            "webhook.debounce",
        ),
        ({"throttle": {"key": "json:/k", "limit": 1}}, "webhook.throttle.period_s"),
        ({"delay_s": -1}, "webhook.delay_s"),
        ({"delay_s": 8 * 86_400}, "webhook.delay_s"),
        ({"ordering": {"key": "json:/k", "extra": 1}}, "webhook.ordering.extra"),
    ],
)
def test_refusals_point_at_the_field(webhook: dict[str, Any], field: str) -> None:
    assert refusal({"async": True, **webhook})[0] == field


def test_shown_only_when_set() -> None:
    assert "ordering" not in parse({"async": True}).public()["webhook"]
    shown = parse({"async": True, "ordering": {"key": "json:/k"}, "delay_s": 2}).public()["webhook"]
    assert shown["ordering"] == {"key": "json:/k", "concurrency": 1}
    assert shown["delay_s"] == 2
    assert not {"concurrency", "debounce", "throttle"} & shown.keys()


def test_an_unpaced_flow_has_no_pacing() -> None:
    assert Pacing.of(WebhookTrigger.model_validate({"async": True})) is None


def test_lanes_read_keys_like_dedup_keys() -> None:
    lane = pacing(
        ordering={"key": "header:X-Customer", "concurrency": 2},
        concurrency={"limit": 4},
        throttle={"key": "json:/order/id", "limit": 3, "period_s": 60},
        delay_s=1.5,
    ).lane(request({"order": {"id": 7}}, {"x-customer": "c-9"}))
    assert (lane.order_key, lane.order_limit, lane.flow_limit) == ("c-9", 2, 4)
    assert (lane.throttle_key, lane.throttle_limit, lane.throttle_period_s) == ("7", 3, 60)
    assert lane.not_before == RECEIVED + timedelta(seconds=1.5)
    assert lane.debounce_key is None


def test_a_huge_key_is_stored_as_its_hash() -> None:
    lane = pacing(ordering={"key": "json:/big"}).lane(request({"big": "x" * 5_000_000}))
    assert lane.order_key is not None
    assert lane.order_key.startswith("sha256:") and len(lane.order_key) == 71


def test_requests_without_the_key() -> None:
    """Ordering and throttle: the flow's keyless lane (never less strict); debounce: not
    collapsed with anyone, it runs one period later."""
    lane = pacing(
        ordering={"key": "json:/k"}, throttle={"key": "json:/k", "limit": 1, "period_s": 1}
    ).lane(request({}))
    assert (lane.order_key, lane.throttle_key) == (KEYLESS, KEYLESS)
    lane = pacing(debounce={"key": "json:/k", "period_s": 2}, delay_s=1).lane(request({}))
    assert lane.debounce_key is None
    assert lane.not_before == RECEIVED + timedelta(seconds=3)


def test_debounce_waits_at_most_ten_periods_unless_told() -> None:
    lane = pacing(debounce={"key": "json:/k", "period_s": 2}).lane(request({"k": "a"}))
    assert (lane.debounce_key, lane.debounce_period_s, lane.debounce_max_s) == ("a", 2, 20)
    lane = pacing(debounce={"key": "json:/k", "period_s": 2, "max_wait_s": 5}).lane(
        request({"k": "a"})
    )
    assert lane.debounce_max_s == 5

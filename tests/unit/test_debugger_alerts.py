"""The pure parts of the debugger's alerts: the failure-rate reading, the retry
schedule, the alert body's validation, and the bounded set of flows to evaluate."""

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from services.debugger.alerts import (
    AlertEvaluator,
    AlertStore,
    RateReading,
    notice_body,
    read_rate,
    retry_policy,
)
from services.debugger.alerts_api import parse_config
from services.debugger.store import COLUMNS, RequestRow
from shared.errors import BadRequest


def test_rate_counts_failed_timeout_and_expired_against_finished_runs() -> None:
    counts = {"succeeded": 6, "failed": 2, "timeout": 1, "expired": 1, "rejected": 5, "queued": 9}
    assert read_rate(counts, 0.4, 10) == RateReading(finished=10, failed=4, rate=0.4, crossed=True)
    assert read_rate(counts, 0.41, 10).crossed is False
    # Below the minimum number of finished runs nothing crosses, whatever the rate.
    assert read_rate(counts, 0.1, 11).crossed is False


def test_rate_of_an_empty_window_is_zero() -> None:
    assert read_rate({}, 1.0, 1) == RateReading(0, 0, 0.0, False)
    assert read_rate({"rejected": 3, "running": 2}, 0.01, 1) == RateReading(0, 0, 0.0, False)
    assert read_rate({"failed": 1}, 1.0, 1) == RateReading(1, 1, 1.0, True)


def test_retry_delay_doubles_up_to_the_longest() -> None:
    policy = retry_policy(5, 60, max_attempts=10)
    assert [policy.delay_s(n) for n in range(1, 7)] == [5, 10, 20, 40, 60, 60]
    assert policy.retries_after(9) and not policy.retries_after(10)


def test_notice_body_is_the_standard_webhooks_shape() -> None:
    body = notice_body("flow.failure_rate", {"n": 1}, datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC))
    assert orjson.loads(body) == {
        "type": "flow.failure_rate",
        "timestamp": "2025-01-02T03:04:05Z",
        "data": {"n": 1},
    }


VALID = {
    "url": "https://example.com/hook",
    "failure_rate": 0.2,
    "window_s": 300,
    "min_requests": 20,
}


def test_a_valid_body() -> None:
    config = parse_config(VALID)
    assert config.model_dump() == {**VALID, "secret": None, "rotate_secret": False}
    assert parse_config({**VALID, "failure_rate": 1}).failure_rate == 1.0


@pytest.mark.parametrize(
    ("change", "message", "field"),
    [
        ({"failure_rate": 0}, "failure_rate: Input should be greater than 0", "failure_rate"),
        (
            {"failure_rate": 1.01},
            "failure_rate: Input should be less than or equal to 1",
            "failure_rate",
        ),
        ({"failure_rate": "0.2"}, "failure_rate: Input should be a valid number", "failure_rate"),
        ({"window_s": 9}, "window_s: Input should be greater than or equal to 10", "window_s"),
        (
            {"window_s": 604801},
            "window_s: Input should be less than or equal to 604800",
            "window_s",
        ),
        ({"window_s": 30.5}, "window_s: Input should be a valid integer", "window_s"),
        (
            {"min_requests": 0},
            "min_requests: Input should be greater than or equal to 1",
            "min_requests",
        ),
        ({"url": None}, "url: Input should be a valid string", "url"),
        ({"colour": "red"}, "colour: Extra inputs are not permitted", "colour"),
        ({"secret": "abc"}, "secret: must start with whsec_", "secret"),
        (
            {"secret": "whsec_AAAA"},
            "secret: the secret must encode 24 to 64 bytes, not 3",
            "secret",
        ),
        (
            {"secret": "whsec_" + "A" * 44, "rotate_secret": True},
            "secret: give a secret or rotate_secret, not both",
            "secret",
        ),
    ],
)
def test_invalid_bodies_name_the_field(change: dict[str, Any], message: str, field: str) -> None:
    with pytest.raises(BadRequest) as refused:
        parse_config({**VALID, **change})
    assert refused.value.envelope() == {
        "status": 400,
        "error": "bad_request",
        "message": message,
        "data": {"field": field},
    }


def test_missing_field_and_not_an_object() -> None:
    with pytest.raises(BadRequest, match=r"^min_requests: Field required$"):
        parse_config({k: v for k, v in VALID.items() if k != "min_requests"})
    with pytest.raises(BadRequest, match=r"^the alert must be a JSON object$"):
        parse_config([VALID])


def _row(flow_id: str, rank: int) -> RequestRow:
    values: dict[str, Any] = {name: None for name in COLUMNS}
    values.update(id=f"r-{flow_id}-{rank}", flow_id=flow_id, source_rank=rank)
    return RequestRow(**values)


def test_only_finished_or_dead_lettered_rows_mark_their_flow_and_the_set_is_bounded() -> None:
    evaluator = AlertEvaluator(
        AlertStore(None),  # type: ignore[arg-type]  # never touched: no I/O here
        eval_interval_s=1,
        sweep_interval_s=60,
        queue_size=2,
    )
    evaluator.note_written([_row("a", 0), _row("b", 1)])  # queued, running
    assert evaluator._dirty == set()
    evaluator.note_written([_row("a", 3), _row("a", 2), _row("b", 2), _row("c", 3)])
    assert evaluator._dirty == {"a", "b"}
    assert evaluator.dropped == 1  # c: the sweep finds it

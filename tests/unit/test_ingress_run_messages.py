"""services/ingress/run_messages.py: the ingress's hot messages, encoded without their
models, are byte for byte what the models give (the runner and the debugger read them
with those models)."""

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.ingress.run_messages import run_progress_json, start_run_json
from shared.schemas.runs import RunProgress, StartRun, WebhookRequest

RECEIVED = [
    datetime(2026, 12, 7, 1, 2, 3, 456789, tzinfo=UTC),
    datetime(2026, 12, 7, 1, 2, 3, tzinfo=UTC),  # no fraction: written without one
    datetime(2026, 12, 7, 1, 2, 3, 1000, tzinfo=UTC),
]
INPUTS: list[Any] = [
    {"kind": "myResult", "company_id": 123456, "user_id": 789123},
    {"floats": [1.0, 0.1, -0.0, 1e-7, 1e16, 1.5e16, 1e19, 1e22, 1e300, 5e-324, 123.456]},
    {"ints": [2**64 - 1, -(2**63), 0], "nested": [{"": []}, True, False, None]},
    ["text", "é ü 中文 \u2028", '\u0000\u001f\u007f "quoted" \\ /'],
    "a plain text body",
    None,
]


def request(input_: Any, received_at: datetime, **fields: Any) -> WebhookRequest:
    return WebhookRequest(
        request_id="01a24e2a02e67b4f844084d37883ced3",
        flow_id="f" * 32,
        workspace_id="w" * 32,
        received_at=received_at,
        method="POST",
        path="/v1/flow-webhook/" + "f" * 32,
        query={"a": ["1", "2"], "b": "é"},
        headers={"content-type": "application/json", "x-odd": '\u0001 " \\ é'},
        content_type="application/json",
        raw_body='{"kind": "myResult"}',
        input=input_,
        mode="async",
        trace={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
        **fields,
    )


@pytest.mark.parametrize("input_", INPUTS)
@pytest.mark.parametrize("received_at", RECEIVED)
def test_a_start_run_is_what_the_model_gives(input_: Any, received_at: datetime) -> None:
    normalised = request(input_, received_at)
    deadline = received_at + timedelta(seconds=30)
    cases: list[tuple[dict[str, Any], bytes]] = [
        ({"deadline": deadline}, start_run_json(normalised, 3, deadline=deadline)),
        (
            {"dedup_key": "k-1", "accept_on_timeout": True},
            start_run_json(normalised, 3, dedup_key="k-1", accept_on_timeout=True),
        ),
        ({"origin": "0a1b2c3d4e5f"}, start_run_json(normalised, 3, origin="0a1b2c3d4e5f")),
    ]
    for fields, encoded in cases:
        expected = StartRun(request=normalised, flow_version=3, **fields).model_dump_json()
        assert encoded == expected.encode()
        assert StartRun.model_validate_json(encoded) == StartRun.model_validate_json(expected)


@pytest.mark.parametrize("input_", INPUTS)
def test_a_queued_record_is_what_the_model_gives(input_: Any) -> None:
    normalised = request(input_, RECEIVED[0], raw_body_encoding="base64")
    at = datetime.now(UTC)
    expected = RunProgress(request=normalised, at=at).model_dump_json().encode()
    assert run_progress_json(normalised, at) == expected


def test_what_orjson_cannot_encode_goes_through_the_model() -> None:
    """An integer past 64 bits (not from a JSON body: refused there) is one."""
    normalised = request({"big": 2**70}, RECEIVED[0])
    expected = StartRun(request=normalised, flow_version=1).model_dump_json().encode()
    assert start_run_json(normalised, 1) == expected


def test_a_sync_runs_reply_is_read_for_its_answer() -> None:
    """`RunAnswer` reads the fields of a full `RunResult` reply the answer is made of,
    as the model has them; the step trace and times are not its concern."""
    from services.ingress.run_messages import RunAnswer
    from shared.schemas.runs import RunResult, StepTrace

    at = RECEIVED[0]
    result = RunResult(
        request_id="r-1",
        outcome="failed",
        status_code=502,
        content_type="text/plain",
        body="upstream said no",
        error="step `call` failed",
        headers={"x-flow": "1"},
        steps=[
            StepTrace(ref_id="call", type="http", output={"a": 1}, started_at=at, duration_ms=1)
        ],
        started_at=at,
        finished_at=at,
    )
    answer = RunAnswer.model_validate_json(result.model_dump_json())
    assert answer.model_dump() == result.model_dump(
        include={"outcome", "status_code", "content_type", "body", "headers"}
    )
    assert set(RunAnswer.model_fields) <= set(RunResult.model_fields)
    for name, field in RunAnswer.model_fields.items():
        assert field.annotation == RunResult.model_fields[name].annotation

"""`request_json` (shared/schemas/runs.py): the bytes the runner sends its worker and
records are exactly the model's JSON, whatever the request holds; what orjson cannot
encode goes through the model."""

from datetime import UTC, datetime, timedelta, timezone

import pytest

from harness.factories import webhook_request
from shared.schemas.runs import RunProgress, WebhookRequest, progress_json, request_json
from shared.schemas.vocabulary import RunMode


@pytest.mark.parametrize(
    "request_",
    [
        webhook_request({"kind": "a", "n": 1, "nested": [1, 2.5, None, True, {"é": "ü"}]}),
        webhook_request(
            "text",
            query={"a": "1", "b": ["2", "3"]},
            headers={"content-type": "text/plain", "x-e": "\u2603"},
            content_type=None,
            mode=RunMode.ASYNC,
            replay_of="r0",
            duplicate_of="r1",
            debounced_by="r2",
            source_request_id="s1",
            trace={"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"},
        ),
        webhook_request(raw_body="//79", raw_body_encoding="base64", input=None),
        webhook_request(received_at=datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)),
        webhook_request(
            received_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2)))
        ),
        webhook_request(received_at=datetime(2026, 1, 2, 3, 4, 5)),
        # Past orjson's integers: the model encodes it.
        webhook_request(raw_body='{"big": 1180591620717411303424}', input={"big": 2**70}),
    ],
)
def test_request_json_is_the_models_json(request_: WebhookRequest) -> None:
    assert request_json(request_) == request_.model_dump_json().encode()
    assert WebhookRequest.model_validate_json(request_json(request_)) == request_


def test_a_copied_request_is_encoded_as_its_model_would() -> None:
    request = webhook_request({"a": 1}).model_copy(update={"debounced_by": "r9"})
    assert request_json(request) == request.model_dump_json().encode()


@pytest.mark.parametrize(
    "at",
    [datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC), datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)],
)
def test_progress_json_is_the_models_json(at: datetime) -> None:
    request = webhook_request({"a": [1, "b"]}, mode=RunMode.ASYNC)
    assert (
        progress_json(request_json(request), at)
        == RunProgress(request=request, at=at).model_dump_json().encode()
    )

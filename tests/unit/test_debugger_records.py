import base64
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from services.debugger.records import (
    RANK_DEAD_LETTER,
    RANK_OUTCOME,
    Redaction,
    describe_dead_letter,
    reduced_row,
    rows_from_event,
)
from services.debugger.redact import REDACTED, clean_json, cut_body, stored_headers
from services.debugger.requests_api import decode_cursor, encode_cursor
from shared.messaging import naming
from shared.schemas.runs import (
    RunFinished,
    RunProgress,
    RunResult,
    RunsFinished,
    RunsProgressed,
    StartRun,
    StartRuns,
    StepTrace,
    WebhookRequest,
)

REDACTION = Redaction(frozenset({"cookie", "x-api-key"}), max_raw_body_bytes=8)
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def webhook_request(request_id: str = "r1") -> WebhookRequest:
    return WebhookRequest(
        request_id=request_id,
        flow_id="00000000-0000-0000-0000-000000000001",
        workspace_id="00000000-0000-0000-0000-000000000002",
        received_at=NOW,
        method="POST",
        path="/v1/flow-webhook/x",
        query={"a": "1"},
        headers={"Cookie": "s=1", "x-api-key": "k", "x-other": "v", "authorization": "Bearer t"},
        content_type="application/json",
        raw_body='{"name": "\x00long body"}',
        input={"name": "\x00"},
    )


def test_redaction() -> None:
    assert stored_headers(
        {"Authorization": "x", "Cookie": "c", "A": "b"}, frozenset({"cookie"})
    ) == {"cookie": REDACTED, "a": "b"}
    assert cut_body("héllo", 2) == ("h", True)  # never half a character
    assert cut_body("short", 10) == ("short", False)
    assert clean_json({"k\x00": ["\x00"]}) == {"k\ufffd": ["\ufffd"]}


def test_finished_event_row() -> None:
    result = RunResult(
        request_id="r1",
        outcome="succeeded",
        status_code=200,
        content_type="application/json",
        body="{}",
        started_at=NOW,
        finished_at=NOW,
    )
    finished = RunFinished(request=webhook_request(), result=result)
    body = RunsFinished(items=[finished, finished]).model_dump_json().encode()
    rows = rows_from_event(naming.RUN_FINISHED, body, REDACTION)
    assert len(rows) == 2  # one message, many runs
    row = rows[0]._asdict()
    assert orjson.loads(row["headers"]) == {
        "cookie": REDACTED,
        "x-api-key": REDACTED,
        "x-other": "v",
    }
    # A body holding NUL (which a text column cannot) is kept byte for byte, in base64.
    assert (row["raw_body"], row["raw_body_truncated"], row["raw_body_encoding"]) == (
        base64.b64encode(b'{"name":').decode(),
        True,
        "base64",
    )
    assert orjson.loads(row["input"]) == {"name": "\ufffd"}
    assert (row["outcome"], row["status_code"], row["source_rank"]) == (
        "succeeded",
        200,
        RANK_OUTCOME,
    )


def test_dead_lettered_start_run_rows() -> None:
    body = StartRun(request=webhook_request(), flow_version=1).model_dump_json().encode()
    expired = rows_from_event(naming.RUN_EXPIRED, body, REDACTION)[0]._asdict()
    assert (expired["outcome"], expired["status_code"], expired["source_rank"]) == (
        "expired",
        504,
        RANK_DEAD_LETTER,
    )
    dead = rows_from_event(naming.RUN_DEAD_LETTERED, body, REDACTION)[0]._asdict()
    assert dead["outcome"] == "failed"
    assert "dead-lettered" in dead["error"]


def test_cursor_round_trip() -> None:
    assert decode_cursor(encode_cursor(NOW, "r1")) == (NOW, "r1")


def test_progress_rows_rank_below_outcomes() -> None:
    progress = RunsProgressed(items=[RunProgress(request=webhook_request(), at=NOW)])
    body = progress.model_dump_json().encode()
    queued = rows_from_event(naming.REQUEST_QUEUED, body, REDACTION)[0]._asdict()
    running = rows_from_event(naming.RUN_STARTED, body, REDACTION)[0]._asdict()
    assert (queued["outcome"], running["outcome"]) == ("queued", "running")
    assert queued["source_rank"] < running["source_rank"] < RANK_DEAD_LETTER < RANK_OUTCOME
    assert running["started_at"] == NOW and running["finished_at"] is None


# --- secrets, size caps, reduced rows, dead-letter reasons (issue 9) -----------------


def row_of(routing_key: str, body: bytes, redaction: Redaction, **kw: Any) -> dict[str, Any]:
    return rows_from_event(routing_key, body, redaction, **kw)[0]._asdict()


def finished_body(request: WebhookRequest, result: RunResult) -> bytes:
    return (
        RunsFinished(items=[RunFinished(request=request, result=result)]).model_dump_json().encode()
    )


def result_of(**kw: Any) -> RunResult:
    fields: dict[str, Any] = {
        "request_id": "r1",
        "outcome": "succeeded",
        "status_code": 200,
        "content_type": "application/json",
        "body": "{}",
        "started_at": NOW,
        "finished_at": NOW,
    }
    return RunResult(**{**fields, **kw})


def test_the_shared_secret_list_applies_to_headers_query_and_path() -> None:
    request = webhook_request().model_copy(
        update={
            "headers": {
                name: "s3cret"
                for name in (
                    "X-Api-Key",
                    "Api-Key",
                    "X-Access-Token",
                    "Private-Token",
                    "Cookie",
                    "Set-Cookie",
                    "Proxy-Authorization",
                    "X-Auth-Token",
                    "X-Shopify-Access-Token",
                    "X-Amz-Security-Token",
                    "X-Gitlab-Token",
                    "X-Client-Secret",
                    "X-Db-Password",
                    "x-my-apikey",
                    "X-Custom",  # extra, from the settings
                )
            }
            | {"X-Hub-Signature-256": "sha256=ab", "User-Agent": "ua", "Authorization": "x"},
            "query": {"api_key": "s3cret", "access_token": ["s3cret", "s3cret"], "page": "2"},
            "path": "/v1/flow-webhook/x?token=s3cret&page=2",
        }
    )
    redaction = Redaction(headers=frozenset({"x-custom"}))
    row = row_of(naming.RUN_FINISHED, finished_body(request, result_of()), redaction)
    headers = orjson.loads(row["headers"])
    assert "authorization" not in headers
    assert headers.pop("x-hub-signature-256") == "sha256=ab"  # an HMAC, kept for audits
    assert headers.pop("user-agent") == "ua"
    assert set(headers.values()) == {REDACTED} and len(headers) == 15
    assert orjson.loads(row["query"]) == {
        "api_key": REDACTED,
        "access_token": [REDACTED, REDACTED],
        "page": "2",
    }
    assert row["path"] == f"/v1/flow-webhook/x?token={REDACTED}&page=2"
    assert "s3cret" not in orjson.dumps(row, default=str).decode()


def test_a_get_requests_input_is_its_redacted_query() -> None:
    query = {"apikey": "s3cret", "q": "x"}
    request = webhook_request().model_copy(update={"method": "GET", "query": query, "input": query})
    row = row_of(naming.RUN_FINISHED, finished_body(request, result_of()), REDACTION)
    assert orjson.loads(row["input"]) == {"apikey": REDACTED, "q": "x"}


def test_http_step_traces_are_redacted_again() -> None:
    step = StepTrace(
        ref_id="call",
        type="http",
        input={
            "url": "https://u:p@api.example.com/?api_key=s3cret&q=1",
            "headers.X-Shopify-Access-Token": "s3cret",
            "headers.Accept": "*/*",
        },
        output={"status": 200},
        started_at=NOW,
        duration_ms=1.0,
    )
    row = row_of(
        naming.RUN_FINISHED, finished_body(webhook_request(), result_of(steps=[step])), REDACTION
    )
    stored = orjson.loads(row["steps"])[0]["input"]
    assert stored == {
        "url": f"https://{REDACTED}@api.example.com/?api_key={REDACTED}&q=1",
        "headers.X-Shopify-Access-Token": REDACTED,
        "headers.Accept": "*/*",
    }


CAPS = Redaction(
    max_raw_body_bytes=100,
    max_input_bytes=1024,
    max_trace_bytes=8192,
    max_step_value_bytes=1024,
    max_response_body_bytes=1000,
    max_error_bytes=300,
)


def test_fields_over_their_caps_are_stored_cut_with_their_sizes() -> None:
    big = {"items": ["x" * 100] * 100}
    request = webhook_request().model_copy(update={"input": big, "raw_body": "é" * 5000})
    result = result_of(outcome="failed", status_code=500, body="b" * 50_000, error="e" * 5000)
    row = row_of(naming.RUN_FINISHED, finished_body(request, result), CAPS)
    big_size = len(orjson.dumps(big))
    stored_input = orjson.loads(row["input"])
    assert stored_input["truncated"] is True and stored_input["size"] == big_size
    assert orjson.dumps(big).decode().startswith(stored_input["preview"])
    assert len(row["input"].encode()) <= 1024
    assert row["raw_body"] == "é" * 50 and row["raw_body_truncated"] is True
    assert row["response_body"] == "b" * 1000
    assert row["error"].startswith("e" * 300) and "[truncated, 5000 bytes]" in row["error"]
    assert orjson.loads(row["truncated"]) == {
        "raw_body": 10_000,
        "input": big_size,
        "response_body": 50_000,
        "error": 5000,
    }


def test_nothing_over_the_caps_means_no_truncated_marker() -> None:
    row = row_of(naming.RUN_FINISHED, finished_body(webhook_request(), result_of()), CAPS)
    assert row["truncated"] is None


def step_trace(n: int, size: int) -> StepTrace:
    return StepTrace(
        ref_id=f"s{n}",
        type="template",
        input={"template": "{{ x }}"},
        output={"value": "v" * size},
        started_at=NOW,
        duration_ms=1.0,
    )


def test_a_huge_trace_is_capped_per_value_and_in_total() -> None:
    steps = [step_trace(n, 3000) for n in range(20)]  # 20 x 3 KB, each value over 1 KB
    result = result_of(steps=steps)
    row = row_of(naming.RUN_FINISHED, finished_body(webhook_request(), result), CAPS)
    stored = orjson.loads(row["steps"])
    assert len(row["steps"].encode()) <= CAPS.max_trace_bytes
    assert stored[0]["output"]["truncated"] is True
    assert stored[0]["output"]["size"] == len(orjson.dumps({"value": "v" * 3000}))
    marker = stored[-1]
    assert marker["type"] == "truncated" and marker["steps_omitted"] == 20 - (len(stored) - 1)
    assert 1 <= marker["steps_omitted"] < 20
    original = len(orjson.dumps([s.model_dump(mode="json") for s in steps]))
    assert orjson.loads(row["truncated"]) == {"steps": original}
    # A trace under the cap in all, but with one big value, is only capped per value.
    few = result_of(steps=[step_trace(0, 10), step_trace(1, 3000)])
    row = row_of(naming.RUN_FINISHED, finished_body(webhook_request(), few), CAPS)
    stored = orjson.loads(row["steps"])
    assert [s["ref_id"] for s in stored] == ["s0", "s1"]
    assert stored[0]["output"] == {"value": "v" * 10}
    assert stored[1]["output"]["truncated"] is True


def test_a_value_that_cannot_be_encoded_gives_the_reduced_row() -> None:
    request = webhook_request().model_copy(update={"input": "deep"})
    deep = b"[" * 300 + b'"x"' + b"]" * 300  # deeper than orjson encodes (255)
    body = finished_body(request, result_of()).replace(b'"input":"deep"', b'"input":' + deep)
    row = row_of(naming.RUN_FINISHED, body, REDACTION)
    assert row["id"] == "r1" and row["outcome"] == "succeeded" and row["status_code"] == 200
    assert row["error"] == "not storable: TypeError: Recursion limit reached"
    assert (row["input"], row["raw_body"], row["steps"], row["headers"]) == (None, "", "[]", "{}")
    assert orjson.loads(row["truncated"])["reduced"] is True


def test_reduced_row_keeps_ids_and_outcome_only() -> None:
    request = webhook_request()
    result = result_of(outcome="failed", status_code=500, error="boom")
    full = rows_from_event(naming.RUN_FINISHED, finished_body(request, result), REDACTION)[0]
    reduced = reduced_row(full, "DataError: bad")._asdict()
    kept = ("id", "flow_id", "workspace_id", "received_at", "mode", "outcome", "source_rank")
    assert all(reduced[name] == full._asdict()[name] for name in kept)
    assert reduced["status_code"] == 500
    assert reduced["error"] == "not storable: DataError: bad; the run's error: boom"
    assert (reduced["response_body"], reduced["input"], reduced["path"]) == (None, None, "")
    sizes = orjson.loads(reduced["truncated"])
    assert sizes["reduced"] is True and sizes["raw_body"] > 0
    # A status code PostgreSQL cannot hold is not kept.
    assert reduced_row(full._replace(status_code=2**40), "x").status_code is None


def test_an_unreadable_item_does_not_cost_the_others() -> None:
    good = RunFinished(request=webhook_request(), result=result_of()).model_dump(mode="json")
    body = orjson.dumps({"items": [good, {"request": {"request_id": "r2"}}, good]})
    assert len(rows_from_event(naming.RUN_FINISHED, body, REDACTION)) == 2
    with pytest.raises(ValueError, match="no item"):
        rows_from_event(naming.RUN_FINISHED, orjson.dumps({"items": [{}]}), REDACTION)
    with pytest.raises(ValueError):
        rows_from_event(naming.RUN_FINISHED, b"not json", REDACTION)
    # One bare item (not batched) is read too.
    assert len(rows_from_event(naming.RUN_FINISHED, orjson.dumps(good), REDACTION)) == 1


def x_death(reason: str, queue: str, count: int = 1) -> dict[str, Any]:
    return {
        "x-death": [
            {"count": count, "reason": reason, "queue": queue, "time": NOW, "exchange": ""}
        ],
        "x-first-death-reason": reason,
    }


def test_dead_lettered_rows_say_why() -> None:
    body = StartRun(request=webhook_request(), flow_version=1).model_dump_json().encode()
    async_runs = naming.ASYNC_RUNS_QUEUE
    dead = row_of(
        naming.RUN_DEAD_LETTERED,
        body,
        REDACTION,
        headers=x_death("delivery_limit", async_runs),
    )
    assert dead["outcome"] == "failed"
    assert f"dead-lettered after 6 deliveries (delivery_limit) from {async_runs}" in dead["error"]
    rejected = row_of(
        naming.RUN_DEAD_LETTERED, body, REDACTION, headers=x_death("rejected", async_runs, 2)
    )
    assert "dead-lettered (rejected)" in rejected["error"]
    assert "dead-lettered 2 times" in rejected["error"]
    expired = row_of(
        naming.RUN_EXPIRED, body, REDACTION, headers=x_death("expired", naming.SYNC_RUNS_QUEUE)
    )
    assert expired["outcome"] == "expired"
    assert "dead-lettered (expired)" in expired["error"]
    assert "dead-lettered" in orjson.loads(expired["response_body"])["message"]
    unknown = row_of(naming.RUN_DEAD_LETTERED, body, REDACTION)
    assert "dead-lettered (the broker gave no reason)" in unknown["error"]
    as_bytes = {"x-death": [{"reason": b"maxlen", "queue": b"q", "count": 1}]}
    assert "dead-lettered (maxlen): q was full" in describe_dead_letter(as_bytes)


def test_a_dead_lettered_start_run_is_one_row_with_the_reason() -> None:
    body = StartRun(request=webhook_request("single"), flow_version=1).model_dump_json()
    headers = x_death("delivery_limit", naming.ASYNC_RUNS_QUEUE)
    rows = rows_from_event(naming.RUN_DEAD_LETTERED, body.encode(), REDACTION, headers)
    assert len(rows) == 1
    row = rows[0]._asdict()
    assert (row["id"], row["outcome"], row["source_rank"]) == ("single", "failed", 2)
    assert "dead-lettered after 6 deliveries (delivery_limit)" in row["error"]


@pytest.mark.parametrize(
    ("routing_key", "reason", "outcome", "status"),
    [
        (naming.RUN_DEAD_LETTERED, "rejected", "failed", None),
        (naming.RUN_EXPIRED, "expired", "expired", 504),
    ],
)
def test_a_dead_lettered_start_runs_batch_is_one_row_per_run(
    routing_key: str, reason: str, outcome: str, status: int | None
) -> None:
    ids = ["b1", "b2", "b3"]
    body = StartRuns(
        items=[StartRun(request=webhook_request(i), flow_version=1) for i in ids]
    ).model_dump_json()
    headers = x_death(reason, naming.ASYNC_RUNS_QUEUE)
    rows = [
        row._asdict() for row in rows_from_event(routing_key, body.encode(), REDACTION, headers)
    ]
    assert [row["id"] for row in rows] == ids
    for row in rows:
        assert (row["outcome"], row["status_code"], row["source_rank"]) == (
            outcome,
            status,
            RANK_DEAD_LETTER,
        )
        assert f"dead-lettered ({reason})" in row["error"]
        assert orjson.loads(row["headers"])["cookie"] == REDACTED


def test_a_dead_lettered_batch_keeps_its_readable_runs() -> None:
    good = StartRun(request=webhook_request("good"), flow_version=1).model_dump(mode="json")
    body = orjson.dumps({"items": [good, {"request": {"request_id": "broken"}}]})
    rows = rows_from_event(naming.RUN_DEAD_LETTERED, body, REDACTION, x_death("rejected", "q"))
    assert [row[0] for row in rows] == ["good"]
    with pytest.raises(ValueError, match="no item of the message is readable"):
        rows_from_event(naming.RUN_DEAD_LETTERED, b'{"items": [{"x": 1}]}', REDACTION)
    with pytest.raises(ValueError):
        rows_from_event(naming.RUN_DEAD_LETTERED, b'{"request": {}}', REDACTION)


def test_an_event_that_is_not_about_requests_is_refused() -> None:
    with pytest.raises(ValueError, match=r"'flow\.renamed' is not an event about requests"):
        rows_from_event("flow.renamed", b'{"items": []}', REDACTION)

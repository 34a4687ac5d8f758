from datetime import UTC, datetime

import orjson

from services.debugger.records import RANK_DEAD_LETTER, RANK_OUTCOME, Redaction, rows_from_event
from services.debugger.redact import REDACTED, cut_body, json_text, redact_headers
from services.debugger.requests_api import decode_cursor, encode_cursor
from services.debugger.store import COLUMNS
from shared.messaging import naming
from shared.schemas.runs import (
    RunFinished,
    RunProgress,
    RunResult,
    RunsFinished,
    RunsProgressed,
    StartRun,
    WebhookRequest,
)

REDACTION = Redaction(frozenset({"cookie", "x-api-key"}), max_raw_body_bytes=8)
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def webhook_request() -> WebhookRequest:
    return WebhookRequest(
        request_id="r1",
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
    assert redact_headers(
        {"Authorization": "x", "Cookie": "c", "A": "b"}, frozenset({"cookie"})
    ) == {"cookie": REDACTED, "a": "b"}
    assert cut_body("héllo", 2) == ("h", True)  # never half a character
    assert cut_body("short", 10) == ("short", False)
    assert orjson.loads(json_text({"k\x00": ["\x00"]})) == {"k\ufffd": ["\ufffd"]}


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
    row = dict(zip(COLUMNS, rows[0], strict=True))
    assert orjson.loads(row["headers"]) == {
        "cookie": REDACTED,
        "x-api-key": REDACTED,
        "x-other": "v",
    }
    assert (row["raw_body"], row["raw_body_truncated"]) == ('{"name":', True)
    assert orjson.loads(row["input"]) == {"name": "\ufffd"}
    assert (row["outcome"], row["status_code"], row["source_rank"]) == (
        "succeeded",
        200,
        RANK_OUTCOME,
    )


def test_dead_lettered_start_run_rows() -> None:
    body = StartRun(request=webhook_request(), flow_version=1).model_dump_json().encode()
    expired = dict(
        zip(COLUMNS, rows_from_event(naming.RUN_EXPIRED, body, REDACTION)[0], strict=True)
    )
    assert (expired["outcome"], expired["status_code"], expired["source_rank"]) == (
        "expired",
        504,
        RANK_DEAD_LETTER,
    )
    dead = dict(
        zip(COLUMNS, rows_from_event(naming.RUN_DEAD_LETTERED, body, REDACTION)[0], strict=True)
    )
    assert dead["outcome"] == "failed"
    assert "dead-lettered" in dead["error"]


def test_cursor_round_trip() -> None:
    assert decode_cursor(encode_cursor(NOW, "r1")) == (NOW, "r1")


def test_progress_rows_rank_below_outcomes() -> None:
    progress = RunsProgressed(items=[RunProgress(request=webhook_request(), at=NOW)])
    body = progress.model_dump_json().encode()
    queued = dict(
        zip(COLUMNS, rows_from_event(naming.REQUEST_QUEUED, body, REDACTION)[0], strict=True)
    )
    running = dict(
        zip(COLUMNS, rows_from_event(naming.RUN_STARTED, body, REDACTION)[0], strict=True)
    )
    assert (queued["outcome"], running["outcome"]) == ("queued", "running")
    assert queued["source_rank"] < running["source_rank"] < RANK_DEAD_LETTER < RANK_OUTCOME
    assert running["started_at"] == NOW and running["finished_at"] is None

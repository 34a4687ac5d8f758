"""What the debugger's live tail sends for a row (services/debugger/tail.py `summary`):
the listing's item, `resume_at` included only while the run waits in a `delay` step."""

from datetime import UTC, datetime, timedelta

from harness.factories import webhook_request
from services.debugger.records import Redaction, rows_from_event
from services.debugger.tail import summary
from shared.messaging import naming
from shared.schemas.runs import RunProgress, RunsProgressed

RECEIVED = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)


def tailed(resume_at: datetime | None) -> dict[str, object]:
    request = webhook_request({"n": 1}, received_at=RECEIVED, mode="async")
    progress = RunProgress(request=request, at=RECEIVED, resume_at=resume_at)
    body = RunsProgressed(items=[progress]).model_dump_json().encode()
    (row,) = rows_from_event(naming.RUN_STARTED, body, Redaction())
    found = summary(row)
    assert (found["id"], found["flow_id"]) == (request.request_id, request.flow_id)
    return {key: value for key, value in found.items() if key not in ("id", "flow_id")}


def test_a_waiting_run_is_tailed_with_its_resume_time() -> None:
    resume_at = RECEIVED + timedelta(hours=2)
    assert tailed(resume_at) == {
        "received_at": RECEIVED,
        "method": "POST",
        "mode": "async",
        "outcome": "waiting",
        "status_code": None,
        "duration_ms": None,
        "resume_at": resume_at,
    }


def test_a_running_run_is_tailed_without_one() -> None:
    assert tailed(None) == {
        "received_at": RECEIVED,
        "method": "POST",
        "mode": "async",
        "outcome": "running",
        "status_code": None,
        "duration_ms": None,
    }

"""A run that was run again (its worker process stopped while it ran) is stored with why
(`debugger.requests.repeated`, shown by `GET /v1/requests/{id}`); a run that ran once
is stored with none, and so is every row that is not a run's outcome."""

from datetime import UTC, datetime

from harness.factories import webhook_request
from services.debugger.records import Redaction, reduced_row, rows_from_event
from shared.messaging import naming
from shared.schemas.runs import RunFinished, RunProgress, RunResult, RunsFinished, RunsProgressed

WHY = "its worker process stopped (killed by signal 9) while it ran; run again (attempt 2 of 3)"
NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def finished(repeated: str | None) -> bytes:
    result = RunResult(
        request_id="r1",
        outcome="succeeded",
        status_code=200,
        content_type="application/json",
        body="{}",
        started_at=NOW,
        finished_at=NOW,
        repeated=repeated,
    )
    request = webhook_request({}, request_id="r1")
    return (
        RunsFinished(items=[RunFinished(request=request, result=result)]).model_dump_json().encode()
    )


def test_a_repeated_run_is_stored_with_why() -> None:
    (row,) = rows_from_event(naming.RUN_FINISHED, finished(WHY), Redaction())
    assert row.repeated == WHY
    # Kept when the row must be stored reduced.
    assert reduced_row(row, "too big").repeated == WHY


def test_a_run_that_ran_once_and_progress_rows_have_none() -> None:
    (row,) = rows_from_event(naming.RUN_FINISHED, finished(None), Redaction())
    assert row.repeated is None
    progress = RunsProgressed(items=[RunProgress(request=webhook_request({}), at=NOW)])
    (running,) = rows_from_event(
        naming.RUN_STARTED, progress.model_dump_json().encode(), Redaction()
    )
    assert running.repeated is None


def test_a_long_reason_is_cut_to_the_error_bound() -> None:
    (row,) = rows_from_event(
        naming.RUN_FINISHED, finished("x" * 10_000), Redaction(max_error_bytes=100)
    )
    assert row.repeated == "x" * 100

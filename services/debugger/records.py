"""From the events the debugger receives to the rows it stores.

- `request.queued` (ingress) and `run.started` (runner), async only, batched and best
  effort: outcome `queued` (rank 0) and `running` (rank 1).
- `run.expired` and `run.dead_lettered` are dead-lettered by the broker and carry the
  original `StartRun`: the request never got an outcome of its own (rank 2).
- `run.finished` and `request.rejected` carry `RunsFinished` (requests and their
  outcomes): rank 3.
A row is only ever replaced by an event of the same or a higher rank, so the final
record is right whatever order the events arrive in.
"""

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from services.debugger.redact import clean_text, cut_body, json_text, redact_headers
from shared.messaging import naming
from shared.schemas.access import FlowChanged
from shared.schemas.runs import RunFinished, RunsFinished, RunsProgressed, StartRun, WebhookRequest

# A later stage never yields to an earlier one, whatever order events arrive in.
RANK_QUEUED, RANK_RUNNING, RANK_DEAD_LETTER, RANK_OUTCOME = 0, 1, 2, 3


@dataclass(frozen=True)
class Redaction:
    headers: frozenset[str]
    max_raw_body_bytes: int


def _envelope(status: int, kind: str, message: str) -> str:
    return orjson.dumps(
        {"status": status, "error": kind, "message": message, "data": None}
    ).decode()


def _row(
    request: WebhookRequest,
    redaction: Redaction,
    *,
    outcome: str,
    status_code: int | None,
    response_content_type: str | None,
    response_body: str | None,
    error: str | None,
    steps: list[Any],
    started_at: datetime | None,
    finished_at: datetime | None,
    rank: int,
) -> tuple[Any, ...]:
    raw_body, truncated = cut_body(request.raw_body, redaction.max_raw_body_bytes)
    return (
        request.request_id,
        request.flow_id,
        request.workspace_id,
        request.received_at,
        request.method,
        clean_text(request.path),
        json_text(request.query),
        json_text(redact_headers(request.headers, redaction.headers)),
        clean_text(request.content_type) if request.content_type else None,
        raw_body,
        truncated,
        json_text(request.input),
        request.mode,
        outcome,
        status_code,
        response_content_type,
        clean_text(response_body) if response_body is not None else None,
        clean_text(error) if error else None,
        json_text(steps),
        started_at,
        finished_at,
        rank,
        request.replay_of,
    )


def flow_from_event(body: bytes) -> tuple[Any, ...]:
    """A `flow.changed` event as a `debugger.flows` row."""
    change = FlowChanged.model_validate_json(body)
    return (
        uuid.UUID(change.flow_id),
        uuid.UUID(change.workspace_id),
        change.version,
        change.deleted,
    )


def rows_from_event(routing_key: str, body: bytes, redaction: Redaction) -> list[tuple[Any, ...]]:
    """Raises pydantic's ValidationError for a body that is not what the key says."""
    if routing_key in (naming.RUN_EXPIRED, naming.RUN_DEAD_LETTERED):
        return [_dead_letter_row(routing_key, body, redaction)]
    if routing_key == naming.REQUEST_QUEUED:
        return [
            _progress_row(item.request, redaction, "queued", None, RANK_QUEUED)
            for item in RunsProgressed.model_validate_json(body).items
        ]
    if routing_key == naming.RUN_STARTED:
        return [
            _progress_row(item.request, redaction, "running", item.at, RANK_RUNNING)
            for item in RunsProgressed.model_validate_json(body).items
        ]
    return [_finished_row(item, redaction) for item in RunsFinished.model_validate_json(body).items]


def _progress_row(
    request: WebhookRequest,
    redaction: Redaction,
    outcome: str,
    started_at: datetime | None,
    rank: int,
) -> tuple[Any, ...]:
    return _row(
        request,
        redaction,
        outcome=outcome,
        status_code=None,
        response_content_type=None,
        response_body=None,
        error=None,
        steps=[],
        started_at=started_at,
        finished_at=None,
        rank=rank,
    )


def _dead_letter_row(routing_key: str, body: bytes, redaction: Redaction) -> tuple[Any, ...]:
    start = StartRun.model_validate_json(body)
    now = datetime.now(UTC)
    if routing_key == naming.RUN_EXPIRED:
        message = "no runner started the run before its caller gave up"
        return _row(
            start.request,
            redaction,
            outcome="expired",
            status_code=504,
            response_content_type="application/json",
            response_body=_envelope(504, "timeout", message),
            error=message,
            steps=[],
            started_at=None,
            finished_at=now,
            rank=RANK_DEAD_LETTER,
        )
    message = "the run failed on every delivery and was dead-lettered"
    return _row(
        start.request,
        redaction,
        outcome="failed",
        status_code=None,
        response_content_type=None,
        response_body=None,
        error=message,
        steps=[],
        started_at=None,
        finished_at=now,
        rank=RANK_DEAD_LETTER,
    )


def _finished_row(finished: RunFinished, redaction: Redaction) -> tuple[Any, ...]:
    result = finished.result
    return _row(
        finished.request,
        redaction,
        outcome=result.outcome,
        status_code=result.status_code,
        response_content_type=result.content_type,
        response_body=result.body,
        error=result.error,
        steps=[step.model_dump(mode="json") for step in result.steps],
        started_at=result.started_at,
        finished_at=result.finished_at,
        rank=RANK_OUTCOME,
    )

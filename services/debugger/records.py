"""From the events the debugger receives to the rows it stores.

- `request.queued` (ingress) and `run.started` (runner), async only, batched and best
  effort: outcome `queued` (rank 0) and `running` (rank 1). `run.waiting` (runner, a
  paced flow's run held back): `waiting`, rank 1 too: it is confirmed before the run
  can start, so its `running` comes after it, and a late `queued` cannot hide it.
- `run.expired` and `run.dead_lettered` are dead-lettered by the broker and carry the
  original `StartRun`, or a `StartRuns` (many runs in one message, dead-lettered
  whole): each request never got an outcome of its own (rank 2); one row per item.
- `run.finished`, `request.rejected`, `request.deduplicated`, `request.handshake`,
  `request.filtered` and `request.routed` carry `RunsFinished` (requests and their
  outcomes): rank 3.
A row is only ever replaced by an event of the same or a higher rank, so the final
record is right whatever order the events arrive in.
"""

import base64
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, NamedTuple, TypeVar

import orjson
import structlog
from pydantic import BaseModel, ValidationError

from services.debugger.redact import (
    capped_json,
    capped_value,
    clean_text,
    cut_body,
    cut_text,
    is_secret_header,
    redact_query,
    stored_headers,
)
from services.debugger.store import COLUMNS, FlowRow, RequestRow
from shared import redaction as secrets
from shared import tracing
from shared.errors import Timeout
from shared.messaging import contracts, naming, topology
from shared.schemas.access import FlowChanged
from shared.schemas.runs import (
    RunFinished,
    RunProgress,
    RunsFinished,
    RunsProgressed,
    StartRun,
    StartRuns,
    WebhookRequest,
)
from shared.schemas.vocabulary import Outcome, Progress, error_answer

log = structlog.get_logger(__name__)
T = TypeVar("T", bound=BaseModel)

# A later stage never yields to an earlier one, whatever order events arrive in.
RANK_QUEUED, RANK_RUNNING, RANK_DEAD_LETTER, RANK_OUTCOME = 0, 1, 2, 3
RANK_WAITING = RANK_RUNNING
# What the reduced form of a row leaves out (see `reduced_row`).
_LEFT_OUT = ("raw_body", "input", "steps", "response_body", "headers", "query")


@dataclass(frozen=True)
class Redaction:
    """What is redacted (beyond `shared/redaction.py`'s list) and each field's cap."""

    headers: frozenset[str] = frozenset()  # extra secret header names
    max_raw_body_bytes: int = 65_536
    query: frozenset[str] = frozenset()  # extra secret query parameter names
    max_input_bytes: int = 262_144
    max_trace_bytes: int = 1_048_576
    max_step_value_bytes: int = 65_536
    max_response_body_bytes: int = 65_536
    max_error_bytes: int = 8_192


@dataclass(frozen=True)
class RunReport:
    """What one event says about a request's run (the rest of the row is the request).
    Not the runner's `RunState`, which is what a run has used while it runs."""

    outcome: str
    rank: int
    status_code: int | None = None
    response_content_type: str | None = None
    response_body: str | None = None
    response_headers: dict[str, str] | None = None
    error: str | None = None
    steps: list[Any] = field(default_factory=list)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    repeated: str | None = None  # why the run was run again
    answered_at: datetime | None = None  # a `respond` step answered the sender then
    resume_at: datetime | None = None  # `waiting` in a `delay` step until then


def _row(request: WebhookRequest, redaction: Redaction, run: RunReport) -> RequestRow:
    """The stored row; its reduced form (with the reason) if a value cannot even be
    encoded (an integer beyond 64 bits, nesting deeper than the JSON encoder goes)."""
    try:
        return _full_row(request, redaction, run)
    except Exception as exc:
        log.error("debugger_row_not_encodable", request_id=request.request_id, error=repr(exc))
        skeleton: dict[str, Any] = {name: None for name in COLUMNS}
        skeleton.update(
            id=request.request_id,
            flow_id=request.flow_id,
            workspace_id=request.workspace_id,
            received_at=request.received_at,
            method=request.method,
            mode=request.mode,
            outcome=run.outcome,
            status_code=run.status_code,
            error=run.error,
            started_at=run.started_at,
            finished_at=run.finished_at,
            source_rank=run.rank,
            replay_of=request.replay_of,
            duplicate_of=request.duplicate_of,
            debounced_by=request.debounced_by,
            repeated=run.repeated,
            answered_at=run.answered_at,
            resume_at=run.resume_at,
            source_request_id=request.source_request_id,
            trace_id=tracing.trace_id_of(request.trace),
            trace_parent=tracing.traceparent_of(request.trace),
        )
        return reduced_row(RequestRow(**skeleton), _describe(exc))


def _full_row(request: WebhookRequest, redaction: Redaction, run: RunReport) -> RequestRow:
    truncated: dict[str, int] = {}
    raw_body, raw_cut, raw_encoding, raw_size = stored_raw_body(
        request, redaction.max_raw_body_bytes
    )
    if raw_cut:
        truncated["raw_body"] = raw_size
    query = redact_query(request.query, redaction.query)
    parsed = request.input
    if request.method == "GET" and parsed == request.query:
        parsed = query  # a GET's input is its query: the same secrets
    input_text, input_size = capped_json(parsed, redaction.max_input_bytes)
    if input_size is not None:
        truncated["input"] = input_size
    steps_text, steps_size = _capped_steps(run.steps, redaction)
    if steps_size is not None:
        truncated["steps"] = steps_size
    body: str | None = None
    if run.response_body is not None:
        body, body_size = cut_text(run.response_body, redaction.max_response_body_bytes)
        if body_size is not None:
            truncated["response_body"] = body_size
    stored_error: str | None = None
    if run.error:
        stored_error, error_size = cut_text(run.error, redaction.max_error_bytes)
        if error_size is not None:
            truncated["error"] = error_size
            stored_error += f" ... [truncated, {error_size} bytes]"
    content_type = run.response_content_type
    return RequestRow(
        id=request.request_id,
        flow_id=request.flow_id,
        workspace_id=request.workspace_id,
        received_at=request.received_at,
        method=clean_text(request.method),
        path=clean_text(secrets.redact_url_text(request.path, redaction.query)),
        query=capped_json(query, redaction.max_input_bytes)[0],
        headers=capped_json(
            stored_headers(request.headers, redaction.headers), redaction.max_input_bytes
        )[0],
        content_type=clean_text(request.content_type) if request.content_type else None,
        raw_body=raw_body,
        raw_body_truncated=raw_cut,
        raw_body_encoding=raw_encoding,
        input=input_text,
        mode=request.mode,
        outcome=run.outcome,
        status_code=run.status_code,
        response_content_type=clean_text(content_type) if content_type is not None else None,
        response_body=body,
        error=stored_error,
        steps=steps_text,
        started_at=run.started_at,
        finished_at=run.finished_at,
        source_rank=run.rank,
        replay_of=request.replay_of,
        truncated=orjson.dumps(truncated).decode() if truncated else None,
        duplicate_of=request.duplicate_of,
        debounced_by=request.debounced_by,
        repeated=cut_text(run.repeated, redaction.max_error_bytes)[0] if run.repeated else None,
        trace_id=tracing.trace_id_of(request.trace),
        trace_parent=tracing.traceparent_of(request.trace),
        response_headers=capped_json(run.response_headers, redaction.max_input_bytes)[0]
        if run.response_headers
        else None,
        answered_at=run.answered_at,
        resume_at=run.resume_at,
        source_request_id=request.source_request_id,
    )


def stored_raw_body(request: WebhookRequest, max_bytes: int) -> tuple[str, bool, str, int]:
    """The body as stored, byte for byte up to `max_bytes`: UTF-8 text, or base64 of its
    bytes when it is not UTF-8 or holds NUL (a text column cannot). Returns the stored
    text, whether it was cut, its encoding and the body's size in bytes."""
    if request.raw_body_encoding == "utf-8" and "\x00" not in request.raw_body:
        text, cut = cut_body(request.raw_body, max_bytes)
        return text, cut, "utf-8", len(request.raw_body.encode()) if cut else 0
    raw = request.raw_body_bytes()
    return base64.b64encode(raw[:max_bytes]).decode(), len(raw) > max_bytes, "base64", len(raw)


def _capped_steps(steps: list[Any], redaction: Redaction) -> tuple[str, int | None]:
    """The step trace as stored: each step's secrets redacted (a second line of
    defence: the runner already redacts), each step's input and output capped at
    `max_step_value_bytes` and its error at `max_error_bytes`, and the steps beyond
    `max_trace_bytes` in all replaced by one marker step. Returns the JSON text and,
    when anything was cut, the trace's original size."""
    if not steps:
        return "[]", None
    redacted = [_redact_step(step, redaction) for step in steps]
    text = capped_json(redacted, 1 << 62)[0]
    original = len(text.encode())
    if original <= min(redaction.max_trace_bytes, redaction.max_step_value_bytes):
        return text, None  # no part of it can be over a cap
    cut = False
    kept: list[Any] = []
    used = 2  # the brackets
    for index, step in enumerate(redacted):
        if isinstance(step, dict):
            step = dict(step)
            for field in ("input", "output"):
                step[field], size = capped_value(step.get(field), redaction.max_step_value_bytes)
                cut = cut or size is not None
            if isinstance(step.get("error"), str):
                step["error"], size = cut_text(step["error"], redaction.max_error_bytes)
                cut = cut or size is not None
        step_size = len(capped_json(step, 1 << 62)[0].encode()) + 1
        if used + step_size > redaction.max_trace_bytes - 400:  # room for the marker
            omitted = len(steps) - index
            kept.append(
                {
                    "ref_id": "_truncated",
                    "type": "truncated",
                    "truncated": True,
                    "size": original,
                    "steps_omitted": omitted,
                    "input": None,
                    "output": None,
                    "error": f"the trace is {original} bytes, over the debugger's cap of"
                    f" {redaction.max_trace_bytes}: {omitted} more steps not stored",
                    "started_at": None,
                    "duration_ms": 0,
                }
            )
            cut = True
            break
        kept.append(step)
        used += step_size
    if not cut:
        return text, None
    return capped_json(kept, 1 << 62)[0], original


def _redact_step(step: Any, redaction: Redaction) -> Any:
    """An `http` step's URL and secret headers, redacted by the shared list."""
    if not isinstance(step, dict) or step.get("type") != "http":
        return step
    given = step.get("input")
    if not isinstance(given, dict):
        return step
    redacted: dict[str, Any] = {}
    for key, value in given.items():
        if key.startswith("headers.") and is_secret_header(key[8:], redaction.headers):
            value = secrets.REDACTED
        elif key == "url" and isinstance(value, str):
            value = secrets.redact_url_text(value, redaction.query)
        redacted[key] = value
    return {**step, "input": redacted}


def reduced_row(row: RequestRow, reason: str) -> RequestRow:
    """What is stored of a row that PostgreSQL refused (or that could not be encoded):
    its ids, times, mode and outcome, and the reason; no headers, query, bodies, input
    or trace. `truncated` lists the sizes of what was left out, and `reduced: true`."""
    values = row._asdict()
    left_out: dict[str, Any] = {"reduced": True}
    for name in _LEFT_OUT:
        value = values.get(name)
        if isinstance(value, str):
            left_out[name] = len(value.encode(errors="replace"))
    status = values["status_code"]
    previous = values["error"]
    error = f"not storable: {reason}"
    if isinstance(previous, str) and previous:
        error += f"; the run's error: {clean_text(previous)[:1000]}"
    return row._replace(
        method=clean_text(str(values["method"]))[:16],
        path="",
        query="{}",
        headers="{}",
        content_type=None,
        raw_body="",
        raw_body_truncated=True,
        raw_body_encoding="utf-8",
        input=None,
        status_code=status if isinstance(status, int) and 100 <= status <= 599 else None,
        response_content_type=None,
        response_body=None,
        response_headers=None,
        error=cut_text(error, 4000)[0],
        steps="[]",
        replay_of=clean_text(str(values["replay_of"]))[:200] if values["replay_of"] else None,
        truncated=orjson.dumps(left_out).decode(),
    )


def _describe(exc: BaseException) -> str:
    """An exception as the reason a row was reduced: its kind and (bounded) message."""
    text = clean_text(str(exc).replace("\n", " "))
    return f"{type(exc).__name__}: {text[:500]}" if text else type(exc).__name__


def flow_from_event(body: bytes) -> FlowRow:
    """A `flow.changed` event as a `debugger.flows` row."""
    change = FlowChanged.model_validate_json(body)
    return FlowRow(
        uuid.UUID(change.flow_id),
        uuid.UUID(change.workspace_id),
        change.version,
        change.deleted,
        change.name,
        change.settings.status,
    )


RowBuilder = Callable[[str, bytes, Redaction, Mapping[str, Any]], list[RequestRow]]


def rows_from_event(
    routing_key: str,
    body: bytes,
    redaction: Redaction,
    headers: Mapping[str, Any] | None = None,
) -> list[RequestRow]:
    """Raises ValueError (pydantic's ValidationError is one) for a body that is not what
    the key says, or a key that is not a request event. In a message of many items, an
    item that is not readable is logged and left out; the others are stored. `headers`:
    the message's (`x-death` says why a dead-lettered run was dead-lettered)."""
    build = ROWS_BY_EVENT.get(routing_key)
    if build is None:
        raise ValueError(f"{routing_key!r} is not an event about requests")
    return build(routing_key, body, redaction, headers or {})


class Deferred(NamedTuple):
    """A progress row (`queued`, `running`, `waiting`) as the intake holds it until its
    batch is written: built then only if nothing of a higher rank about the same request
    came in the same batch (an async run's `run.started` and `run.finished` mostly
    do: the runner sends them moments apart)."""

    id: str
    source_rank: int
    build: Callable[[], RequestRow]


def deferred_rows(
    routing_key: str,
    body: bytes,
    redaction: Redaction,
    headers: Mapping[str, Any] | None = None,
) -> list[RequestRow | Deferred]:
    """`rows_from_event`, with the progress rows deferred (see `Deferred`)."""
    progress = PROGRESS_BY_EVENT.get(routing_key)
    if progress is None:
        return list(rows_from_event(routing_key, body, redaction, headers))
    return list(progress(routing_key, body, redaction))


def _queued(routing_key: str, body: bytes, redaction: Redaction) -> list[Deferred]:
    return [
        Deferred(
            item.request.request_id,
            RANK_QUEUED,
            partial(_progress_row, item.request, redaction, Progress.QUEUED, None, RANK_QUEUED),
        )
        for item in _items(body, RunsProgressed, RunProgress, routing_key)
    ]


def _running(routing_key: str, body: bytes, redaction: Redaction) -> list[Deferred]:
    return [
        Deferred(
            item.request.request_id,
            RANK_RUNNING,
            partial(_progress_row, item.request, redaction, Progress.RUNNING, item.at, RANK_RUNNING)
            if item.resume_at is None
            else partial(
                _row,
                item.request,
                redaction,
                RunReport(Progress.WAITING, RANK_RUNNING, resume_at=item.resume_at),
            ),
        )
        for item in _items(body, RunsProgressed, RunProgress, routing_key)
    ]


def _waiting(routing_key: str, body: bytes, redaction: Redaction) -> list[Deferred]:
    return [
        Deferred(
            item.request.request_id,
            RANK_WAITING,
            partial(_progress_row, item.request, redaction, Progress.WAITING, None, RANK_WAITING),
        )
        for item in _items(body, RunsProgressed, RunProgress, routing_key)
    ]


def _built(
    progress: Callable[[str, bytes, Redaction], list[Deferred]],
) -> RowBuilder:
    def build(
        routing_key: str, body: bytes, redaction: Redaction, _: Mapping[str, Any]
    ) -> list[RequestRow]:
        return [row.build() for row in progress(routing_key, body, redaction)]

    return build


def _finished_rows(
    routing_key: str, body: bytes, redaction: Redaction, _: Mapping[str, Any]
) -> list[RequestRow]:
    return [
        _finished_row(item, redaction)
        for item in _items(body, RunsFinished, RunFinished, routing_key)
    ]


def _items(body: bytes, batch: type[BaseModel], model: type[T], routing_key: str) -> list[T]:
    """The `items` of a batched event (`batch`: a model whose one field is `items`, a
    list of `model`). The whole message is validated in one pass first; only when that
    fails is each item validated on its own, so that one unreadable item does not cost
    the others. A single bare item is accepted too. ValueError when the body is not
    JSON or has no items at all."""
    try:
        items: list[T] = batch.model_validate_json(body).items  # type: ignore[attr-defined]
        return items
    except ValidationError:
        pass
    document = orjson.loads(body)
    if isinstance(document, dict) and "items" not in document:
        return [model.model_validate(document)]
    if not isinstance(document, dict) or not isinstance(document["items"], list):
        raise ValueError(f"{routing_key}: expected an object with a list of items")
    items = []
    for index, raw in enumerate(document["items"]):
        try:
            items.append(model.model_validate(raw))
        except ValidationError as exc:
            log.error(
                "unreadable_debugger_event_item",
                routing_key=routing_key,
                index=index,
                error=str(exc)[:500],
            )
    if not items and document["items"]:
        raise ValueError(f"{routing_key}: no item of the message is readable")
    return items


def _progress_row(
    request: WebhookRequest,
    redaction: Redaction,
    outcome: str,
    started_at: datetime | None,
    rank: int,
) -> RequestRow:
    return _row(request, redaction, RunReport(outcome, rank, started_at=started_at))


def describe_dead_letter(headers: Mapping[str, Any]) -> str:
    """Why the broker dead-lettered a message, from its `x-death` header (the newest
    death first): "dead-lettered after 6 deliveries (delivery_limit) from ...",
    "dead-lettered (rejected) by ...", ..."""
    deaths = headers.get("x-death")
    death = deaths[0] if isinstance(deaths, list) and deaths else None
    if not isinstance(death, Mapping):
        reason = _text(headers.get("x-first-death-reason"))
        return f"dead-lettered ({reason or 'the broker gave no reason'})"
    reason = _text(death.get("reason")) or "unknown"
    queue = _text(death.get("queue")) or "its queue"
    count = death.get("count")
    if reason == "delivery_limit":
        limit = _delivery_limit(queue)
        text = (
            f"dead-lettered after {limit + 1} deliveries (delivery_limit) from {queue}:"
            " no runner recorded an outcome on any of them"
            if limit is not None
            else f"dead-lettered after too many deliveries (delivery_limit) from {queue}"
        )
    elif reason == "rejected":
        text = f"dead-lettered (rejected): a consumer of {queue} rejected it"
    elif reason == "expired":
        text = f"dead-lettered (expired): it waited in {queue} longer than its time to live"
    elif reason == "maxlen":
        text = f"dead-lettered (maxlen): {queue} was full"
    else:
        text = f"dead-lettered ({reason}) from {queue}"
    if isinstance(count, int) and count > 1:
        text += f"; dead-lettered {count} times in all"
    return text


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    return clean_text(value)[:200] if isinstance(value, str) else ""


def _delivery_limit(queue: str) -> int | None:
    for spec in topology.DURABLE_QUEUES:
        if spec.name == queue and isinstance(spec.arguments.get("x-delivery-limit"), int):
            return int(spec.arguments["x-delivery-limit"])
    return None


def _dead_letter_rows(
    routing_key: str, body: bytes, redaction: Redaction, headers: Mapping[str, Any]
) -> list[RequestRow]:
    """A dead-lettered `StartRun`, or `StartRuns` (dead-lettered whole): one row per
    run, each with the broker's reason (the message's, so the same for all)."""
    now = datetime.now(UTC)
    why = describe_dead_letter(headers)
    return [
        _dead_letter_row(routing_key, start, redaction, why, now)
        for start in _items(body, StartRuns, StartRun, routing_key)
    ]


def _dead_letter_row(
    routing_key: str, start: StartRun, redaction: Redaction, why: str, now: datetime
) -> RequestRow:
    if routing_key == naming.RUN_EXPIRED:
        message = f"no runner started the run before its caller gave up ({why})"
        status_code, content_type, body = error_answer(Timeout(message))
        expired = RunReport(
            Outcome.EXPIRED,
            RANK_DEAD_LETTER,
            status_code=status_code,
            response_content_type=content_type,
            response_body=body,
            error=message,
            finished_at=now,
        )
        return _row(start.request, redaction, expired)
    message = f"the run has no outcome: {why}"
    failed = RunReport(Outcome.FAILED, RANK_DEAD_LETTER, error=message, finished_at=now)
    return _row(start.request, redaction, failed)


def finished_row(finished: RunFinished, redaction: Redaction) -> RequestRow:
    """The row of a request with its outcome (what the debugger itself records: a
    source request it replayed)."""
    return _finished_row(finished, redaction)


def _finished_row(finished: RunFinished, redaction: Redaction) -> RequestRow:
    result = finished.result
    run = RunReport(
        result.outcome,
        RANK_OUTCOME,
        status_code=result.status_code,
        response_content_type=result.content_type,
        response_body=result.body,
        response_headers=result.headers or None,
        error=result.error,
        steps=[step.model_dump(mode="json") for step in result.steps],
        started_at=result.started_at,
        finished_at=result.finished_at,
        repeated=result.repeated,
        answered_at=result.answered_at,
    )
    return _row(finished.request, redaction, run)


# Every event about requests, and how its rows are built (the debugger's queue and the
# live tail are bound to exactly these).
ROWS_BY_EVENT: dict[str, RowBuilder] = {
    contracts.REQUEST_QUEUED.routing_key: _built(_queued),
    contracts.RUN_STARTED.routing_key: _built(_running),
    contracts.RUN_WAITING.routing_key: _built(_waiting),
    contracts.RUN_FINISHED.routing_key: _finished_rows,
    contracts.REQUEST_REJECTED.routing_key: _finished_rows,
    contracts.REQUEST_DEDUPLICATED.routing_key: _finished_rows,
    contracts.REQUEST_HANDSHAKE.routing_key: _finished_rows,
    contracts.REQUEST_FILTERED.routing_key: _finished_rows,
    contracts.REQUEST_ROUTED.routing_key: _finished_rows,
    contracts.RUN_EXPIRED.routing_key: _dead_letter_rows,
    contracts.RUN_DEAD_LETTERED.routing_key: _dead_letter_rows,
}
# The events whose rows the intake defers (`deferred_rows`).
PROGRESS_BY_EVENT: dict[str, Callable[[str, bytes, Redaction], list[Deferred]]] = {
    contracts.REQUEST_QUEUED.routing_key: _queued,
    contracts.RUN_STARTED.routing_key: _running,
    contracts.RUN_WAITING.routing_key: _waiting,
}

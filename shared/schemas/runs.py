"""A webhook request and its run: ingress -> runner (`StartRun`), runner -> ingress
(`RunResult`, the RPC reply), runner -> debugger (`RunFinished`)."""

import base64
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import orjson
import structlog
from pydantic import BaseModel, ValidationError

from shared.schemas.vocabulary import Outcome, RunMode, error_answer

if TYPE_CHECKING:
    from shared.errors import ApiError

log = structlog.get_logger(__name__)


class WebhookRequest(BaseModel):
    """A normalised webhook request. `headers` never contains `authorization`."""

    request_id: str
    flow_id: str
    workspace_id: str
    received_at: datetime
    method: str
    path: str
    query: dict[str, str | list[str]]
    headers: dict[str, str]
    content_type: str | None
    # The body byte for byte: UTF-8 text, or base64 when it is not valid UTF-8.
    raw_body: str
    input: Any
    mode: RunMode = RunMode.SYNC
    # Set when the debugger replays a stored request: the original's id.
    replay_of: str | None = None
    # Set on a request that was not run because its dedup key was seen (`webhook.dedup`):
    # the first request's id.
    duplicate_of: str | None = None
    # Set on a request not run because a later one of its burst ran in its place
    # (`webhook.debounce`): that request's id.
    debounced_by: str | None = None
    raw_body_encoding: Literal["utf-8", "base64"] = "utf-8"
    # Set on a run a source fanned out (services/ingress/sources.py): the source
    # request's id.
    source_request_id: str | None = None
    # The W3C trace context (`traceparent`, `tracestate`) of the span that handed the
    # request on (shared/tracing.py): each request of a batched message continues its
    # own trace. Empty when traces are off.
    trace: dict[str, str] = {}

    def raw_body_bytes(self) -> bytes:
        if self.raw_body_encoding == "base64":
            return base64.b64decode(self.raw_body)
        return self.raw_body.encode()

    def raw_body_text(self) -> str:
        """What flows read as `request.raw_body`: the text, undecodable bytes replaced
        (as it always was), whichever way it travels."""
        if self.raw_body_encoding == "base64":
            return self.raw_body_bytes().decode("utf-8", errors="replace")
        return self.raw_body


# A request's fields in their declared order (`request_json`).
_REQUEST_FIELDS = tuple(WebhookRequest.model_fields)


def request_json(request: WebhookRequest) -> bytes:
    """`request.model_dump_json()`'s bytes, with orjson from its fields (a fifth of the
    cost: the runner encodes every request it runs, for its worker and its record):
    the same keys in the same order, datetimes in UTC with `Z`. A request orjson
    cannot encode, or holding another set of fields, goes through the model."""
    fields = request.__dict__
    if tuple(fields) == _REQUEST_FIELDS:
        try:
            return orjson.dumps(fields, option=orjson.OPT_UTC_Z)
        except orjson.JSONEncodeError:
            pass
    return request.model_dump_json().encode()


# `StartRun.flow_version` of a replay: whatever version the flow has now, read afresh.
CURRENT_VERSION = 0


class StartRun(BaseModel):
    """ingress -> runner. `flow_version`: the version the ingress authorised (a runner
    with an older copy reloads it), or `CURRENT_VERSION`. `deadline`: a sync caller
    stops waiting then (a run that starts after it is not run: `expired`); None for
    async runs, whose time budget (the flow's `timeout_s`) starts when a runner takes
    them."""

    request: WebhookRequest
    flow_version: int
    deadline: datetime | None = None
    # A replay that was not forced: if the flow is paused when the run would start, the
    # runner answers `conflict` instead (sync path only) and neither runs nor records it.
    unless_paused: bool = False
    # The first request of a dedup key (`runner.dedup_keys`): the runner stores the
    # result under it for the duplicates, before it answers.
    dedup_key: str | None = None
    # A sync run of an `on_timeout: "accept"` flow: its caller may stop waiting and be
    # told to poll, so the runner reports it `running` (`run.started`) like an async run.
    accept_on_timeout: bool = False
    # The ingress process that queued this async run (its `Broker.instance`): the runner
    # reports the run to it when it finished (`runs.drained`), for its queued bounds.
    origin: str | None = None
    # Times this async run was parked because its workspace was at its share of the
    # runner (services/runner/runs.py): not attempts, it never started.
    parked: int = 0
    # Set when the run may have run before (its runner stopped while it ran): carried
    # into `RunResult.repeated`.
    repeated: str | None = None
    # A run going on after a `delay` step: its stored state, the runner's own
    # (services/runner/delays.py; no other service reads it). None: a new run.
    resume: dict[str, Any] | None = None


class StartRuns(BaseModel):
    """Many `StartRun`s in one message (ingress -> runner, by group commit). Dead-lettered
    as a whole (`run.expired`, `run.dead_lettered`): each item is one request."""

    items: list[StartRun]

    @classmethod
    def read(cls, body: bytes) -> "StartRuns":
        """Each item read on its own (an unreadable one is logged and left out: it costs
        no other); a single `StartRun` (what the debugger's replay sends) is read as a
        batch of one. ValueError when nothing in it is readable."""
        document = orjson.loads(body)
        if not (isinstance(document, dict) and isinstance(document.get("items"), list)):
            return cls(items=[StartRun.model_validate(document)])
        starts = []
        for index, item in enumerate(document["items"]):
            try:
                starts.append(StartRun.model_validate(item))
            except ValidationError as exc:
                log.error("unreadable_start_run", index=index, error=str(exc)[:500])
        if not starts and document["items"]:
            raise ValueError("no item of the message is readable")
        return cls.model_construct(items=starts)


class StepTrace(BaseModel):
    ref_id: str
    type: str
    input: Any = None
    output: Any = None
    error: str | None = None
    started_at: datetime
    duration_ms: float


class RunResult(BaseModel):
    request_id: str
    outcome: Outcome
    status_code: int
    content_type: str
    body: str
    error: str | None = None
    # The flow's response headers (`webhook.response.headers`, rendered), besides
    # Content-Type; set only on a run that succeeded, or one that its `on_error` steps
    # answered with the flow's response.
    headers: dict[str, str] = {}
    steps: list[StepTrace] = []
    started_at: datetime
    finished_at: datetime
    # Why the run was run again (its worker process, or its runner, stopped while it
    # ran; its side effects may have happened twice), e.g. "its worker process stopped
    # (killed by signal 9) while it ran; run again (attempt 2 of 3)". None: it ran once.
    repeated: str | None = None
    # Set when a `respond` step answered the sender before the run ended: then
    # `status_code`, `content_type`, `body` and `headers` are that answer (what the
    # sender got), `outcome` and `error` how the run ended after it.
    answered_at: datetime | None = None


def error_result(
    request_id: str,
    error: "ApiError",
    outcome: Outcome,
    started_at: datetime,
    steps: list[StepTrace] | None = None,
    finished_at: datetime | None = None,
) -> RunResult:
    """A run that ended in `error`: answered with the error's envelope (`error_answer`)."""
    status_code, content_type, body = error_answer(error)
    return RunResult(
        request_id=request_id,
        outcome=outcome,
        status_code=status_code,
        content_type=content_type,
        body=body,
        error=error.message,
        steps=steps or [],
        started_at=started_at,
        finished_at=finished_at if finished_at is not None else datetime.now(UTC),
    )


class RunFinished(BaseModel):
    request: WebhookRequest
    result: RunResult


class RunsFinished(BaseModel):
    """The body of `run.finished` and `request.rejected`: one or more finished requests
    (the runner batches them; see shared/messaging/batching.py)."""

    items: list[RunFinished]


class RunProgress(BaseModel):
    """An async request that was queued, or whose run has started."""

    request: WebhookRequest
    at: datetime
    # Set on `run.started` when the run stopped in a `delay` step: it is `waiting` and
    # resumes then (services/runner/delays.py).
    resume_at: datetime | None = None


def progress_json(request: bytes, at: datetime) -> bytes:
    """`RunProgress(request=..., at=at).model_dump_json()`'s bytes, spliced of the
    request as encoded (`request_json`): the runner announces every async run it starts
    with the bytes it encoded for the run."""
    at_json = orjson.dumps(at, option=orjson.OPT_UTC_Z)
    return b'{"request":' + request + b',"at":' + at_json + b',"resume_at":null}'


def finished_json(request: bytes, result: bytes) -> bytes:
    """`RunFinished(request=..., result=...).model_dump_json()`'s bytes, spliced of the
    request (`request_json`) and the result as encoded: the runner records every run
    with the bytes it already has."""
    return b'{"request":' + request + b',"result":' + result + b"}"


class RunsProgressed(BaseModel):
    """The body of `request.queued` (ingress, once async requests are durably queued)
    and `run.started` (runner, as it starts async runs); both batched and best effort:
    what is guaranteed is the run's outcome (`run.finished`); these only let the
    debugger show `queued` and `running` meanwhile. Also `run.waiting` (runner, as a
    paced flow's run is held back for its turn; confirmed before it can start)."""

    items: list[RunProgress]

"""The debugger API's OpenAPI operations (shared/openapi.py). The alert body is
`AlertConfig`, the model `alerts_api` validates with; the replay bodies are checked by
hand (`replay_edit.parse_edit`, `replays.parse_filter`, for their field-by-field
messages), so their models here mirror those checks."""

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, RootModel

from services.debugger.alerts_api import AlertConfig
from services.debugger.requests_api import MAX_LIMIT
from shared.openapi import AnyJson, NoContent, Operation, Page
from shared.schemas.vocabulary import Outcome, Progress, ReplayFilterOutcome, RunMode

REQUESTS, REPLAYS, ALERTS = ("requests",), ("replays",), ("alerts",)


class RequestListQuery(BaseModel):
    limit: int = Field(default=50, ge=1, le=MAX_LIMIT, description="Page size")
    cursor: str | None = Field(default=None, description="`next_cursor` of the previous page")
    outcome: Outcome | Progress | None = None
    mode: RunMode | None = None
    since: datetime | None = Field(default=None, description="ISO 8601 with a time zone")
    until: datetime | None = Field(default=None, description="ISO 8601 with a time zone")
    match: str | None = Field(default=None, description="Input match, `path=value`")
    header: list[str] | None = Field(default=None, description="Header match, `name:value`")


class StatsQuery(BaseModel):
    window_s: float = Field(default=3600, gt=0, le=90 * 86400, description="Seconds back")


class RequestSummary(BaseModel):
    """One request in a list"""

    id: str
    flow_id: str
    received_at: datetime
    method: str
    mode: str
    outcome: str
    status_code: int | None
    duration_ms: float | None


class RequestList(Page):
    """A flow's requests, newest first"""

    items: list[RequestSummary]


class RequestDetail(BaseModel):
    """One request in full: input, headers (redacted), step trace, response, replays"""

    model_config = ConfigDict(extra="allow")

    id: str
    flow_id: str
    outcome: str
    response: dict[str, Any]
    replays: list[str]
    repeated: str | None = Field(
        default=None,
        description="Why the run was run again (its worker process or its runner stopped"
        " while it ran, so its side effects may have happened twice); null: it ran once",
    )


class FlowStats(BaseModel):
    """Counts by outcome and latency percentiles over the window"""

    model_config = ConfigDict(extra="allow")

    flow_id: str
    window_s: float


class EventStream(RootModel[str]):
    """Server-sent events: one `request` event per new request of the flow"""


class ReplayEdit(BaseModel):
    """Run the stored request again, as it was or edited"""

    model_config = ConfigDict(extra="forbid")

    body: AnyJson | None = Field(default=None, description="The new input (JSON)")
    headers: dict[str, str | None] | None = Field(
        default=None, description="Merged over the stored headers; null removes one"
    )
    force: bool = Field(default=False, description="Run even if the flow is paused")


class ReplayResponse(BaseModel):
    status_code: int
    content_type: str | None
    body: str | None


class ReplayResult(BaseModel):
    """The replay's own request id and its outcome"""

    request_id: str
    replay_of: str
    outcome: str
    response: ReplayResponse


class JobFilter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    outcome: ReplayFilterOutcome | None = None
    since: datetime | None = None
    until: datetime | None = None


class NewReplayJob(BaseModel):
    """Replay every stored request of the flow that the filter selects"""

    model_config = ConfigDict(extra="forbid")

    filter: JobFilter | None = None
    force: bool = False


class ReplayJob(BaseModel):
    """A bulk replay job and its progress"""

    model_config = ConfigDict(extra="allow")

    id: str
    flow_id: str
    filter: dict[str, Any]


class AlertNotice(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: int | str
    type: str
    attempts: int


class AlertView(BaseModel):
    """A flow's failure alert (its secret shown as a hint, except once: `secret`)"""

    model_config = ConfigDict(extra="allow")

    flow_id: str
    url: str
    failure_rate: float
    window_s: int
    min_requests: int
    secret_hint: str
    notices: list[AlertNotice]
    secret: str | None = None


LIST_REQUESTS = Operation(
    "List a flow's requests", {200: RequestList}, query=RequestListQuery, tags=REQUESTS
)
GET_REQUEST = Operation("Read one request in full", {200: RequestDetail}, tags=REQUESTS)
STREAM = Operation(
    "Tail a flow's new requests (server-sent events)",
    {200: EventStream},
    response_media="text/event-stream",
    tags=REQUESTS,
)
STATS = Operation("A flow's counts and latency", {200: FlowStats}, query=StatsQuery, tags=REQUESTS)
REPLAY = Operation(
    "Replay one request (edited or not)",
    {200: ReplayResult},
    body=ReplayEdit,
    body_required=False,
    tags=REPLAYS,
)
START_JOB = Operation(
    "Start a bulk replay job (409 while one runs)",
    {202: ReplayJob},
    body=NewReplayJob,
    body_required=False,
    tags=REPLAYS,
)
GET_JOB = Operation("Read a replay job", {200: ReplayJob}, tags=REPLAYS)
CANCEL_JOB = Operation("Cancel a replay job", {200: ReplayJob}, tags=REPLAYS)
PUT_ALERT = Operation(
    "Create or replace the flow's failure alert",
    {200: AlertView, 201: AlertView},
    body=AlertConfig,
    tags=ALERTS,
)
GET_ALERT = Operation("Read the flow's failure alert", {200: AlertView}, tags=ALERTS)
DELETE_ALERT = Operation("Delete the flow's failure alert", {204: NoContent}, tags=ALERTS)

"""The ops API: a flow's requests (newest first, filters, search, keyset cursor) and one
request in full. Personal tokens with `debugger.read` (or a scope that includes it:
`DEBUGGER_READ_SCOPES`); only the caller's workspace is ever read.

Fair share of the database: listings, searches and stats take a slot of the caller's
workspace (`WorkspaceLimiter`: past its share, a short wait, then 429) and run on the
API's own pool under its `statement_timeout`. A search (`match`, `header`) that runs
past that bound is answered 400 naming it, and so are stats over a `window_s` too
long: their cost is what the caller chose (a match that the index cannot narrow, a long
range), and a 503 would invite the same query again and again, each costing the whole
bound. Any other statement past it is 503 `unavailable` with Retry-After (shared/web.py):
a listing is an index range scan whatever the caller asks, so the database itself is
too busy."""

import asyncio
import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, RootModel, field_validator, model_validator

from services.debugger.callbacks import CallbackAttempts
from services.debugger.linked_requests import linked_ids
from services.debugger.search import parse_headers, parse_match
from services.debugger.stats import WINDOWS, FlowSeries
from services.debugger.store import RequestStore
from services.debugger.tail import LiveTail, sse
from services.debugger.workspace_limiter import WorkspaceLimiter
from shared.errors import BadRequest, Unavailable
from shared.http_api import Call
from shared.openapi import Page
from shared.schemas.vocabulary import RECORDED_OUTCOMES, Outcome, Progress, RunMode

MAX_LIMIT = 500
MAX_WINDOW_S = 90 * 86400


def encode_cursor(received_at: datetime, request_id: str) -> str:
    raw = orjson.dumps([received_at.isoformat(), request_id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        received_at, request_id = orjson.loads(raw)
        return datetime.fromisoformat(received_at), str(request_id)
    except (ValueError, TypeError, orjson.JSONDecodeError):
        raise BadRequest("invalid cursor", data={"field": "cursor"}) from None


def _time(value: Any, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise BadRequest(f"{name} must be an ISO 8601 time", data={"field": name}) from None
    if parsed.tzinfo is None:
        raise BadRequest(f"{name} needs a time zone, e.g. Z", data={"field": name})
    try:
        # Sent in UTC: before year 1 or past 9999 there, asyncpg cannot encode it.
        parsed.astimezone(UTC)
    except OverflowError:
        raise BadRequest(f"{name} is out of range", data={"field": name}) from None
    return parsed


def seconds_after(milliseconds: int) -> int:
    """A Retry-After (whole seconds, at least 1) no sooner than `milliseconds`."""
    return max(1, -(-milliseconds // 1000))


def _duration_ms(started: datetime | None, finished: datetime | None) -> float | None:
    if started is None or finished is None:
        return None
    return round((finished - started).total_seconds() * 1000, 3)


class RequestListQuery(BaseModel):
    """`GET /v1/flows/{flow_id}/requests`'s filters. Judged in the order the API always
    judged them (the first wrong one is named), with its messages (`_judged`)."""

    limit: int = Field(default=50, ge=1, le=MAX_LIMIT, description="Page size")
    cursor: str | None = Field(default=None, description="`next_cursor` of the previous page")
    outcome: Outcome | Progress | None = None
    mode: RunMode | None = None
    since: datetime | None = Field(default=None, description="ISO 8601 with a time zone")
    until: datetime | None = Field(default=None, description="ISO 8601 with a time zone")
    match: str | None = Field(
        default=None,
        description="Input match (JSON the stored input contains). A search (`match` or"
        " `header`) without `since` covers the last 7 days"
        " (FLOWHOOKS_DEBUGGER_SEARCH_WINDOW_S); give `since` to search further back.",
    )
    header: list[str] | None = Field(
        default=None,
        description="Header match, `name:value`; without `since`, the last 7 days",
    )

    @model_validator(mode="before")
    @classmethod
    def _judged(cls, given: Any) -> Any:
        values = dict(given)
        if "limit" in values:
            try:
                # Out of range is brought into it, not refused (as always).
                values["limit"] = max(1, min(int(values["limit"]), MAX_LIMIT))
            except ValueError:
                raise BadRequest("limit must be a whole number", data={"field": "limit"}) from None
        outcome = values.get("outcome")
        if outcome is not None and outcome not in RECORDED_OUTCOMES:
            raise BadRequest(
                f"outcome must be one of {', '.join(sorted(RECORDED_OUTCOMES))}",
                data={"field": "outcome"},
            )
        mode = values.get("mode")
        if mode is not None and mode not in ("sync", "async"):
            raise BadRequest("mode must be sync or async", data={"field": "mode"})
        # The JSON text the jsonb containment takes.
        values["match"] = parse_match(values.get("match"))
        parse_headers(values.get("header") or [])  # refuses a malformed one
        if values.get("cursor"):
            decode_cursor(values["cursor"])  # refuses a malformed one
        for name in ("since", "until"):
            values[name] = _time(values.get(name), name)
        return {name: value for name, value in values.items() if value is not None}

    @property
    def headers_match(self) -> str | None:
        return parse_headers(self.header or [])

    @property
    def before(self) -> tuple[datetime, str] | None:
        return decode_cursor(self.cursor) if self.cursor else None


class StatsQuery(BaseModel):
    window_s: float = Field(default=3600, gt=0, le=MAX_WINDOW_S, description="Seconds back")

    @field_validator("window_s", mode="before")
    @classmethod
    def _window(cls, value: Any) -> float:
        try:
            window_s = float(value)
        except ValueError:
            raise BadRequest("window_s must be a number", data={"field": "window_s"}) from None
        if not 0 < window_s <= MAX_WINDOW_S:
            raise BadRequest("window_s must be between 0 and 90 days", data={"field": "window_s"})
        return window_s


class SeriesQuery(BaseModel):
    window: str = Field(default="1h", description="1h (by minute), 24h (by 15 min), 7d (by hour)")

    @field_validator("window", mode="before")
    @classmethod
    def _window(cls, value: Any) -> str:
        if value not in WINDOWS:
            raise BadRequest(
                f"window must be one of {', '.join(WINDOWS)}", data={"field": "window"}
            )
        return str(value)


class LatencyPercentiles(BaseModel):
    p50: float
    p95: float
    p99: float


class SeriesBucket(BaseModel):
    start: datetime
    total: int
    per_minute: float
    by_outcome: dict[str, int]
    latency_ms: LatencyPercentiles | None


class FlowSeriesView(BaseModel):
    """Requests by outcome and duration percentiles per bucket over the window (every
    bucket present, oldest first), and the window's totals"""

    flow_id: str
    window: str
    window_s: int
    bucket_s: int
    since: datetime
    until: datetime
    total: int
    by_outcome: dict[str, int]
    latency_ms: LatencyPercentiles | None
    latency_sample: float = Field(
        description="The share of the window's requests the percentiles are taken over:"
        " 1 up to 100,000 requests, a fixed sample of about that many past it"
    )
    buckets: list[SeriesBucket]


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
    resume_at: datetime | None = Field(
        default=None,
        description="A `waiting` run stored by a `delay` step: when it resumes (left out"
        " otherwise, and for a run held by its flow's ordering or pacing)",
    )


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
    debounced_by: str | None = Field(
        default=None,
        description="For a `debounced` request: the request of its burst that ran in its place",
    )
    source_request_id: str | None = Field(
        default=None, description="A run a source fanned out: the source's request"
    )
    runs: list[str] | None = Field(
        default=None, description="A source's request: the runs it was fanned out to"
    )
    trace_id: str | None = Field(
        default=None,
        description="The request's OpenTelemetry trace (32 hex digits: find it in Jaeger,"
        " Tempo...); null: traces were off",
    )


class FlowStats(BaseModel):
    """Counts by outcome and latency percentiles over the window"""

    model_config = ConfigDict(extra="allow")

    flow_id: str
    window_s: float


class EventStream(RootModel[str]):
    """Server-sent events: one `request` event per new request of the flow"""


class RequestsApi:
    def __init__(
        self,
        store: RequestStore,
        tail: LiveTail,
        heartbeat_s: float = 15.0,
        *,
        limiter: WorkspaceLimiter,
        statement_timeout_ms: int,
        search_window_s: float = 7 * 86400,
    ) -> None:
        self.store = store
        self.series_store = FlowSeries(store.pool)
        self.tail = tail
        self.heartbeat_s = heartbeat_s
        self.limiter = limiter
        self.statement_timeout_ms = statement_timeout_ms
        self.search_window_s = search_window_s

    def _too_long(self, chosen: str | None, narrow: str = "") -> BadRequest | Unavailable:
        """The answer to a statement cancelled by the API pool's statement_timeout:
        `chosen` names the parameter whose cost the caller chose (None: none did)."""
        bound = self.statement_timeout_ms
        if chosen is not None:
            return BadRequest(
                f"the query ran longer than {bound} ms"
                f" (FLOWHOOKS_DEBUGGER_API_STATEMENT_TIMEOUT_MS) and was stopped; {narrow}",
                data={"field": chosen, "statement_timeout_ms": bound},
            )
        error = Unavailable(f"the database did not answer within {bound} ms; try again")
        error.retry_after_s = seconds_after(bound)
        return error

    async def list(self, call: Call[RequestListQuery, None]) -> RequestList:
        caller, flow_id, query = call.caller, call.resource, call.query
        search_field = (
            "match"
            if query.match is not None
            else "header"
            if query.headers_match is not None
            else None
        )
        since = query.since
        if search_field is not None and since is None:
            # A search without `since` covers the last `search_window_s` (7 days by
            # default, FLOWHOOKS_DEBUGGER_SEARCH_WINDOW_S): the partitions before it are
            # not read at all.
            since = datetime.now(UTC) - timedelta(seconds=self.search_window_s)
        try:
            async with self.limiter.slot(caller.workspace_id):
                rows = await self.store.list_for_flow(
                    flow_id,
                    caller.workspace_id,
                    limit=query.limit,
                    before=query.before,
                    outcome=query.outcome,
                    mode=query.mode,
                    since=since,
                    until=query.until,
                    input_match=query.match,
                    headers_match=query.headers_match,
                )
        except asyncpg.QueryCanceledError:
            raise self._too_long(
                search_field, "narrow the search with since/until or a more specific match"
            ) from None
        items = [
            RequestSummary(
                id=row["id"],
                flow_id=row["flow_id"],
                received_at=row["received_at"],
                method=row["method"],
                mode=row["mode"],
                outcome=row["outcome"],
                status_code=row["status_code"],
                duration_ms=_duration_ms(row["received_at"], row["finished_at"]),
                # Set only when known, so other requests' items read as before.
                **({"resume_at": row["resume_at"]} if row["resume_at"] is not None else {}),
            )
            for row in rows
        ]
        next_cursor = (
            encode_cursor(rows[-1]["received_at"], rows[-1]["id"])
            if len(rows) == query.limit
            else None
        )
        return RequestList(items=items, next_cursor=next_cursor)

    async def get(self, call: Call[None, None]) -> RequestDetail:
        caller, row = call.caller, dict(call.resource)
        response = {
            "status_code": row.pop("status_code"),
            "content_type": row.pop("response_content_type"),
            "body": row.pop("response_body"),
        }
        headers = row.pop("response_headers")
        row.pop("trace_parent", None)  # the debugger's own link to the trace, not shown
        if headers:  # left out while none, so records read as before
            response["headers"] = headers
        answered_at = row.pop("answered_at", None)
        if answered_at is not None:  # a `respond` step answered before the run ended
            response["answered_at"] = answered_at
        if row.get("resume_at") is None:
            row.pop("resume_at", None)  # shown only while the run waits in a `delay`
        pool, source, workspace = self.store.pool, self.store.source, caller.workspace_id
        received_at = row["received_at"]
        row["replays"] = await linked_ids(
            pool, "replay_of", row["id"], workspace, received_at, source
        )
        if row["outcome"] == Outcome.ROUTED:  # a source's request: the runs it started
            row["runs"] = await linked_ids(
                pool, "source_request_id", row["id"], workspace, received_at, source
            )
        if row["source_request_id"] is None:  # left out but for a source's runs
            del row["source_request_id"]
        callback = await CallbackAttempts(self.store.pool).of_request(
            row["id"], caller.workspace_id
        )
        if callback is not None:  # left out for requests without a completion callback
            row["callback"] = callback
        return RequestDetail.model_validate({**row, "response": response})

    async def stats(self, call: Call[StatsQuery, None]) -> FlowStats:
        """Counts by outcome and latency percentiles over `?window_s=` (default 3600)."""
        caller, flow_id, window_s = call.caller, call.resource, call.query.window_s
        try:
            async with self.limiter.slot(caller.workspace_id):
                stats = await self.store.stats(flow_id, caller.workspace_id, window_s)
        except asyncpg.QueryCanceledError:
            # The window is the caller's choice, as a search is.
            raise self._too_long("window_s", "ask for a shorter window_s") from None
        return FlowStats.model_validate({"flow_id": str(flow_id), "window_s": window_s, **stats})

    async def series(self, call: Call[SeriesQuery, None]) -> FlowSeriesView:
        """Requests per bucket by outcome and p50/p95/p99 over `?window=` (stats.py)."""
        caller, flow_id, window = call.caller, call.resource, WINDOWS[call.query.window]
        try:
            async with self.limiter.slot(caller.workspace_id):
                series = await self.series_store.series(flow_id, caller.workspace_id, window)
        except asyncpg.QueryCanceledError:
            raise self._too_long("window", "ask for a shorter window") from None
        return FlowSeriesView.model_validate({"flow_id": str(flow_id), **series})

    async def stream(self, call: Call[None, None]) -> web.StreamResponse:
        """Server-sent events: one `request` event per new request of the flow."""
        caller, flow_id = call.caller, str(call.resource)
        queue = await self.tail.subscribe(flow_id, caller.workspace_id)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        try:
            await response.prepare(call.request)
            await response.write(b": tailing\n\n")
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), self.heartbeat_s)
                except TimeoutError:
                    await response.write(b": ping\n\n")
                    continue
                await response.write(sse("request", item))
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.tail.unsubscribe(flow_id, caller.workspace_id, queue)
        return response

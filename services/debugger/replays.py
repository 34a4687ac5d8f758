"""Replays: one stored request run again, as it was or edited
(`POST /v1/requests/{id}/replay`), and bulk replay jobs (`POST /v1/flows/{id}/replays`,
`GET`/`DELETE /v1/replays/{job_id}`; the jobs themselves: `replay_jobs.py`).

Every replay goes through the runner's sync path (`RunnerClient.run`, deadline
`FLOWHOOKS_DEBUGGER_REPLAY_TIMEOUT_S`), async flows' requests too: the caller (or the
job) gets the outcome, and a paused flow is refused by the runner itself, on the copy
of the flow it would run (`StartRun.unless_paused`: 409 `conflict`, nothing run or
stored), unless the replay is forced.

An edited replay: `{"body": <JSON>, "headers": {name: value | null}, "force": bool}`,
every field optional.
- `body` is the flow's new input; the raw body becomes its JSON text (content type
  `application/json`).
- `headers` are merged over the stored ones (names lower-cased; null removes one).
- The stored headers and query parameters that were redacted (`[redacted]`) are never
  sent as if they were real: they are left out, unless the edit gives the header.
- A rejected request (its body could not be parsed) has no input: it is replayed
  with `body` only (400 otherwise). A request stored truncated or reduced likewise.
"""

import uuid
from datetime import UTC, datetime
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from services.debugger import replay_jobs
from services.debugger.replay_edit import (
    Edit,
    Replayer,
    decode_json,
    parse_edit,
    replay_options,
    replay_request,
)
from services.debugger.replay_jobs import ReplayJobs, ReplayWorker, job_view
from services.debugger.source_replays import SourceReplays
from shared.errors import BadRequest, NotFound
from shared.http_api import Call
from shared.openapi import AnyJson
from shared.request_ids import new_request_id
from shared.schemas.vocabulary import REPLAY_FILTER_OUTCOMES, Outcome, ReplayFilterOutcome


class ReplayEdit(BaseModel):
    """Run the stored request again, as it was or edited"""

    model_config = ConfigDict(extra="forbid")

    body: AnyJson | None = Field(default=None, description="The new input (JSON)")
    headers: dict[str, str | None] | None = Field(
        default=None, description="Merged over the stored headers; null removes one"
    )
    force: bool = Field(default=False, description="Run even if the flow is paused")
    _edit: Edit = PrivateAttr()

    @classmethod
    def from_json(cls, raw: bytes) -> Self:
        """Judged field by field (`parse_edit`: the messages the API has always given)."""
        document = decode_json(raw)
        edit = parse_edit(document)
        replay = cls.model_validate(document or {})
        replay._edit = edit
        return replay

    @property
    def edit(self) -> Edit:
        return self._edit


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
    _filter: replay_jobs.JobFilter = PrivateAttr(default_factory=replay_jobs.JobFilter)

    @classmethod
    def from_json(cls, raw: bytes) -> Self:
        """Judged field by field (`replay_options`, `parse_filter`)."""
        document, force = replay_options(decode_json(raw), frozenset({"filter"}))
        job_filter = parse_filter(document.get("filter"))
        # Built from what was judged (pydantic's own time parsing is not the API's).
        given = document.get("filter") is not None
        job = cls(
            filter=JobFilter.model_validate(vars(job_filter)) if given else None,
            force=force,
        )
        job._filter = job_filter
        return job

    @property
    def job_filter(self) -> replay_jobs.JobFilter:
        return self._filter


class ReplayJob(BaseModel):
    """A bulk replay job and its progress"""

    model_config = ConfigDict(extra="allow")

    id: str
    flow_id: str
    filter: dict[str, Any]


class ReplayApi:
    def __init__(
        self,
        replayer: Replayer,
        jobs: ReplayJobs,
        worker: ReplayWorker,
        sources: SourceReplays | None = None,
    ) -> None:
        self.replayer = replayer
        # A source's request is routed again (source_replays.py), not run.
        self.sources = sources
        self.jobs = jobs
        self.worker = worker

    async def replay(self, call: Call[None, ReplayEdit | None]) -> ReplayResult:
        """The stored request (edited if asked) through the normal run path again, as a
        new request that points at the original (`replay_of`)."""
        row = call.resource
        edit = call.body.edit if call.body is not None else parse_edit(None)
        now = datetime.now(UTC)
        replayed = replay_request(row, edit, new_request_id(now), now)
        source = None
        if self.sources is not None and row["outcome"] in (Outcome.ROUTED, Outcome.FILTERED):
            source = await self.sources.source_of(row["flow_id"], call.caller.workspace_id)
        if source is not None:
            assert self.sources is not None
            result = await self.sources.replay(source, replayed)
        else:
            result = await self.replayer.run(
                replayed, force=edit.force, original_trace=row.get("trace_parent")
            )
        return ReplayResult(
            request_id=replayed.request_id,
            replay_of=row["id"],
            outcome=result.outcome,
            response=ReplayResponse(
                status_code=result.status_code,
                content_type=result.content_type,
                body=result.body,
            ),
        )

    async def start_job(self, call: Call[None, NewReplayJob | None]) -> ReplayJob:
        """202 with the new job; 409 while the flow has a running job."""
        new = call.body if call.body is not None else NewReplayJob()
        job = await self.jobs.create(
            call.resource, call.caller.workspace_id, new.job_filter, new.force
        )
        self.worker.wake()
        return ReplayJob.model_validate(job_view(job))

    async def get_job(self, call: Call[None, None]) -> ReplayJob:
        job = await self.jobs.get(_job_id(call), call.caller.workspace_id)
        if job is None:
            raise NotFound("no such replay job")
        return ReplayJob.model_validate(job_view(job))

    async def cancel_job(self, call: Call[None, None]) -> ReplayJob:
        """Stops a running job (its replays in flight still finish and are counted); a
        job that is over is answered as it is."""
        job = await self.jobs.cancel(_job_id(call), call.caller.workspace_id)
        if job is None:
            raise NotFound("no such replay job")
        return ReplayJob.model_validate(job_view(job))


def _job_id(call: Call[None, None]) -> uuid.UUID:
    try:
        return uuid.UUID(call.path("job_id"))
    except ValueError:
        raise NotFound("no such replay job") from None


def parse_filter(document: Any) -> replay_jobs.JobFilter:
    if document is None:
        return replay_jobs.JobFilter()
    if not isinstance(document, dict):
        raise BadRequest("filter must be an object", data={"field": "filter"})
    unknown = set(document) - {"outcome", "since", "until"}
    if unknown:
        field = sorted(unknown)[0]
        raise BadRequest(f"unknown filter {field!r}", data={"field": f"filter.{field}"})
    outcome = document.get("outcome")
    if outcome is not None and outcome not in REPLAY_FILTER_OUTCOMES:
        raise BadRequest(
            f"filter.outcome must be one of {', '.join(sorted(REPLAY_FILTER_OUTCOMES))}",
            data={"field": "filter.outcome"},
        )
    return replay_jobs.JobFilter(outcome, _time(document, "since"), _time(document, "until"))


def _time(document: dict[str, Any], name: str) -> datetime | None:
    value = document.get(name)
    if value is None:
        return None
    field = {"field": f"filter.{name}"}
    try:
        parsed = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        parsed = None
    if parsed is None:
        raise BadRequest(f"filter.{name} must be an ISO 8601 time", data=field)
    if parsed.tzinfo is None:
        raise BadRequest(f"filter.{name} needs a time zone, e.g. Z", data=field)
    try:
        # Sent in UTC: before year 1 or past 9999 there, asyncpg cannot encode it.
        parsed.astimezone(UTC)
    except OverflowError:
        raise BadRequest(f"filter.{name} is out of range", data=field) from None
    return parsed

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
from typing import Any

from aiohttp import web

from services.debugger.replay_edit import (
    Replayer,
    parse_edit,
    read_json,
    replay_options,
    replay_request,
)
from services.debugger.replay_jobs import JobFilter, ReplayJobs, ReplayWorker, job_view
from services.debugger.requests_api import RequestsApi
from services.debugger.store import RequestStore
from shared.api_auth import DEBUGGER_READ_SCOPES, DEBUGGER_REPLAY_SCOPES, require_scope
from shared.errors import BadRequest, NotFound
from shared.messaging.rpc import RpcClient
from shared.schemas.vocabulary import REPLAY_FILTER_OUTCOMES
from shared.web import json_response


class ReplayApi:
    def __init__(
        self,
        store: RequestStore,
        rpc: RpcClient,
        requests_api: RequestsApi,
        replayer: Replayer,
        jobs: ReplayJobs,
        worker: ReplayWorker,
    ) -> None:
        self.store = store
        self.rpc = rpc
        self.requests_api = requests_api
        self.replayer = replayer
        self.jobs = jobs
        self.worker = worker

    async def replay(self, request: web.Request) -> web.Response:
        """The stored request (edited if asked) through the normal run path again, as a
        new request that points at the original (`replay_of`)."""
        caller = await require_scope(self.rpc, request, DEBUGGER_REPLAY_SCOPES)
        row = await self.store.get(request.match_info["request_id"], caller.workspace_id)
        if row is None:
            raise NotFound("no such request")
        edit = parse_edit(await read_json(request))
        replayed = replay_request(row, edit, uuid.uuid4().hex, datetime.now(UTC))
        result = await self.replayer.run(replayed, force=edit.force)
        return json_response(
            {
                "request_id": replayed.request_id,
                "replay_of": row["id"],
                "outcome": result.outcome,
                "response": {
                    "status_code": result.status_code,
                    "content_type": result.content_type,
                    "body": result.body,
                },
            }
        )

    async def start_job(self, request: web.Request) -> web.Response:
        """202 with the new job; 409 while the flow has a running job."""
        caller = await require_scope(self.rpc, request, DEBUGGER_REPLAY_SCOPES)
        flow_id = await self.requests_api._visible_flow(request, caller.workspace_id)
        document, force = replay_options(await read_json(request), frozenset({"filter"}))
        job = await self.jobs.create(
            flow_id, caller.workspace_id, parse_filter(document.get("filter")), force
        )
        self.worker.wake()
        return json_response(job_view(job), status=202)

    async def get_job(self, request: web.Request) -> web.Response:
        caller = await require_scope(self.rpc, request, DEBUGGER_READ_SCOPES)
        job = await self.jobs.get(_job_id(request), caller.workspace_id)
        if job is None:
            raise NotFound("no such replay job")
        return json_response(job_view(job))

    async def cancel_job(self, request: web.Request) -> web.Response:
        """Stops a running job (its replays in flight still finish and are counted); a
        job that is over is answered as it is."""
        caller = await require_scope(self.rpc, request, DEBUGGER_REPLAY_SCOPES)
        job = await self.jobs.cancel(_job_id(request), caller.workspace_id)
        if job is None:
            raise NotFound("no such replay job")
        return json_response(job_view(job))


def _job_id(request: web.Request) -> uuid.UUID:
    try:
        return uuid.UUID(request.match_info["job_id"])
    except ValueError:
        raise NotFound("no such replay job") from None


def parse_filter(document: Any) -> JobFilter:
    if document is None:
        return JobFilter()
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
    return JobFilter(outcome, _time(document, "since"), _time(document, "until"))


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

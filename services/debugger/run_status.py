"""`debugger.get_run_status`: a request's state and stored answer, for the ingress's
status URL (`GET /v1/flow-webhook/{flow_id}/runs/{request_id}`). The debugger is the
source because it is the one place that records every request, sync and async, from
`queued` to its outcome; the ingress has authorised the caller for the flow, so only
the flow is checked here.

It reads on a pool of its own under the API's statement_timeout: a status poll never
waits for the API's connections, and a statement past the bound (or a database that
is away) is `unavailable`, which the ingress answers 503 with Retry-After."""

import asyncpg
import orjson
import structlog

from services.debugger.legacy_copy import LegacyRequests, requests_source
from shared import db
from shared.errors import FlowError, Unavailable
from shared.request_ids import received_window
from shared.schemas.dedup import GetRunStatus, RunStatus, StoredResult
from shared.schemas.vocabulary import JSON, PENDING, error_answer

log = structlog.get_logger(__name__)


class RunStatuses:
    def __init__(self, pool: asyncpg.Pool, legacy: LegacyRequests | None = None) -> None:
        self.pool = pool
        self.legacy = legacy

    async def get(self, query: GetRunStatus) -> RunStatus:
        if "\x00" in query.request_id:
            # Taken from the URL as is; PostgreSQL refuses U+0000 (no request has one).
            return RunStatus(state="unknown")
        # A time-carrying id reads the partitions of its time only.
        where, args = "id = $1", [query.request_id]
        args_typed: list[object] = list(args)
        window = received_window(query.request_id)
        if window is not None:
            where += " AND received_at >= $2 AND received_at < $3"
            args_typed += window
        try:
            row = await self.pool.fetchrow(
                "SELECT flow_id::text, outcome, status_code, response_content_type,"
                " response_body, response_headers::text, error, truncated::text, resume_at"
                f" FROM {requests_source(self.legacy)} WHERE {where}",
                *args_typed,
            )
        except (asyncpg.QueryCanceledError, *db.UNAVAILABLE) as exc:
            log.warning("run_status_unavailable", error=repr(exc))
            raise Unavailable("the debugger's database did not answer; try again") from None
        if row is None or row["flow_id"] != query.flow_id:
            # Another flow's request is as unknown as no request at all.
            return RunStatus(state="unknown")
        outcome = row["outcome"]
        if outcome in PENDING:
            return RunStatus(state="pending", outcome=outcome, resume_at=row["resume_at"])
        truncated = orjson.loads(row["truncated"]) if row["truncated"] else {}
        status_code, body = row["status_code"], row["response_body"]
        if status_code is None or body is None:
            # A run with no answer of its own (dead-lettered): its error, as the
            # contract's envelope.
            error = FlowError(row["error"] or "the run has no outcome")
            status_code, content_type, body = error_answer(error)
        else:
            content_type = row["response_content_type"] or JSON
        return RunStatus(
            state="done",
            outcome=outcome,
            result=StoredResult(
                status_code=status_code,
                content_type=content_type,
                body=body,
                headers=orjson.loads(row["response_headers"]) if row["response_headers"] else {},
            ),
            body_truncated="response_body" in truncated,
            body_size=truncated.get("response_body"),
        )

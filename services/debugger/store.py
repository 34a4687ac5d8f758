"""debugger's SQL: batched idempotent writes, and the reads of the ops API."""

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple

import asyncpg
import orjson

from services.debugger.legacy_copy import LegacyRequests
from services.debugger.partitions import PARENT, Partitions
from shared.request_ids import received_window


class RequestRow(NamedTuple):
    """One row of `debugger.requests` as written: jsonb columns as JSON text (built
    and capped by `records.py`). A tuple, so a batch goes to COPY as it is."""

    id: str
    flow_id: str
    workspace_id: str
    received_at: datetime
    method: str
    path: str
    query: str
    headers: str
    content_type: str | None
    raw_body: str
    raw_body_truncated: bool
    input: str | None
    mode: str
    outcome: str
    status_code: int | None
    response_content_type: str | None
    response_body: str | None
    error: str | None
    steps: str
    started_at: datetime | None
    finished_at: datetime | None
    source_rank: int
    replay_of: str | None
    # Fields stored cut or replaced by a marker: {field: original size in bytes}; and
    # `"reduced": true` for a row PostgreSQL refused, stored without its contents.
    truncated: str | None
    # `raw_body` is the body's UTF-8 text, or its bytes in base64 (not UTF-8, or holding
    # NUL, which a text column cannot): byte for byte either way.
    raw_body_encoding: str = "utf-8"
    # The first request's id, for a `duplicate` (`webhook.dedup`).
    duplicate_of: str | None = None
    # The run's own response headers (JSON text), besides Content-Type.
    response_headers: str | None = None
    # Why the run was run again (RunResult.repeated); None: it ran once.
    repeated: str | None = None
    # The request that ran in this one's place, for a `debounced` (`webhook.debounce`).
    debounced_by: str | None = None
    # When a `respond` step answered the sender (RunResult.answered_at); None: at the end.
    answered_at: datetime | None = None
    # When a run waiting in a `delay` step resumes; None: not waiting.
    resume_at: datetime | None = None
    # A run a source fanned out: the source request's id.
    source_request_id: str | None = None
    # The request's OpenTelemetry trace, and the `traceparent` of the span that handed
    # it on; None: traces were off.
    trace_id: str | None = None
    trace_parent: str | None = None


class FlowRow(NamedTuple):
    """One row of `debugger.flows`: which workspace owns a flow, as of `version`."""

    flow_id: uuid.UUID
    workspace_id: uuid.UUID
    version: int
    deleted: bool
    # For people (the page's list of flows); None from an older runner.
    name: str | None = None
    status: str | None = None


COLUMNS = RequestRow._fields
_JSONB = {"query", "headers", "input", "steps", "truncated", "response_headers"}
# A batch goes in by COPY (binary) to a session's temporary table, then in one statement
# to its place: the client's CPU per row is about half of `executemany`'s and PostgreSQL
# does one statement per batch, not one per row. jsonb columns travel as text and are
# parsed by the INSERT (so invalid JSON is refused data, as before).
_STAGING_TYPES = {
    "flow_id": "uuid",
    "workspace_id": "uuid",
    "received_at": "timestamptz",
    "raw_body_truncated": "boolean",
    "status_code": "integer",
    "started_at": "timestamptz",
    "finished_at": "timestamptz",
    "source_rank": "smallint",
    "answered_at": "timestamptz",
    "resume_at": "timestamptz",
}
STAGING = "debugger_requests_batch"
CREATE_STAGING = (
    f"CREATE TEMPORARY TABLE IF NOT EXISTS {STAGING} ("
    + ", ".join(f"{name} {_STAGING_TYPES.get(name, 'text')}" for name in COLUMNS)
    + ") ON COMMIT DELETE ROWS"
)
_SELECTED = ", ".join(f"{name}::jsonb" if name in _JSONB else name for name in COLUMNS)
_UPDATES = ", ".join(f"{name} = EXCLUDED.{name}" for name in COLUMNS[1:])
# The rank rule: a row is only replaced by an event of the same or a higher rank.
UPSERT_STAGED = (
    f"INSERT INTO debugger.requests ({', '.join(COLUMNS)})"
    f" SELECT {_SELECTED} FROM pg_temp.{STAGING} ORDER BY id"
    # (id, received_at): the partitioned table's key; every event about a request
    # carries the request's own received_at, so this is the request's one row.
    f" ON CONFLICT (id, received_at) DO UPDATE SET {_UPDATES}, stored_at = now()"
    " WHERE debugger.requests.source_rank <= EXCLUDED.source_rank"
)
UPSERT_FLOW = (
    "INSERT INTO debugger.flows (flow_id, workspace_id, version, deleted, name, status)"
    " VALUES ($1, $2, $3, $4, $5, $6)"
    " ON CONFLICT (flow_id) DO UPDATE SET workspace_id = EXCLUDED.workspace_id,"
    " version = EXCLUDED.version, deleted = EXCLUDED.deleted,"
    " name = coalesce(EXCLUDED.name, debugger.flows.name),"
    " status = coalesce(EXCLUDED.status, debugger.flows.status)"
    " WHERE debugger.flows.version < EXCLUDED.version"
)
# A flow known only from its requests (its flow.changed came before the debugger
# existed) is known all the same.
INSERT_FLOW_OWNERS = (
    "INSERT INTO debugger.flows (flow_id, workspace_id, version)"
    " SELECT flow_id, workspace_id, 0 FROM unnest($1::uuid[], $2::uuid[])"
    " AS owner (flow_id, workspace_id) ON CONFLICT (flow_id) DO NOTHING"
)
_SELECT = (
    "SELECT id, flow_id::text, workspace_id::text, received_at, method, path, query::text,"
    " headers::text, content_type, raw_body, raw_body_truncated, input::text, mode, outcome,"
    " status_code, response_content_type, response_body, error, steps::text, started_at,"
    " finished_at, replay_of, truncated::text, raw_body_encoding, duplicate_of,"
    " response_headers::text, repeated, debounced_by, answered_at, resume_at,"
    " source_request_id, trace_id, trace_parent FROM "
)


def _decode(record: asyncpg.Record) -> dict[str, Any]:
    row = dict(record)
    for name in ("query", "headers", "input", "steps", "truncated", "response_headers"):
        row[name] = orjson.loads(row[name]) if row[name] is not None else None
    return row


class RequestStore:
    def __init__(
        self,
        pool: asyncpg.Pool,
        legacy: LegacyRequests | None = None,
        partitions: Partitions | None = None,
    ) -> None:
        self.pool = pool
        # What the partitions cover (listing_bounds): constants a listing adds.
        self.partitions = partitions
        # While the old, unpartitioned table still has rows (legacy_copy.py): read both,
        # and move a request's old row before writing it again.
        self.legacy = legacy

    @property
    def source(self) -> str:
        return self.legacy.source() if self.legacy is not None else PARENT

    async def write(self, rows: Sequence[RequestRow], flows: Sequence[FlowRow] = ()) -> None:
        """One transaction per batch: its requests COPYed to the staging table and
        upserted from there in one statement (at most one row per request id: ON
        CONFLICT cannot touch a row twice in a statement); a redelivered event updates
        its row in place, by the rank rule."""
        async with self.pool.acquire() as conn, conn.transaction():
            if flows:
                await conn.executemany(UPSERT_FLOW, flows)
            if rows:
                await conn.execute(CREATE_STAGING)  # once per connection; then a no-op
                await conn.copy_records_to_table(STAGING, records=rows, columns=COLUMNS)
                if self.legacy is not None:
                    await self.legacy.adopt(conn, sorted({row.id for row in rows}))
                # In id order: two writers (replicas) lock the rows they share in the
                # same order, so they wait for each other instead of deadlocking.
                await conn.execute(UPSERT_STAGED)
                owners = sorted({(str(row.flow_id), str(row.workspace_id)) for row in rows})
                await conn.execute(
                    INSERT_FLOW_OWNERS, [flow for flow, _ in owners], [ws for _, ws in owners]
                )

    async def flow_owner(self, flow_id: uuid.UUID) -> tuple[str, bool] | None:
        """(workspace id, deleted) as the debugger heard it; None: never heard of it."""
        record = await self.pool.fetchrow(
            "SELECT workspace_id::text, deleted FROM debugger.flows WHERE flow_id = $1", flow_id
        )
        return (record["workspace_id"], record["deleted"]) if record else None

    async def remember_flow(self, flow: FlowRow) -> None:
        """What the runner answered, under the same version rule as `flow.changed`."""
        await self.pool.execute(UPSERT_FLOW, *flow)

    async def get(self, request_id: str, workspace_id: str) -> dict[str, Any] | None:
        """One request; a time-carrying id (UUIDv7) reads only the partitions of its
        time, any other id (older ones) every partition's index."""
        window = received_window(request_id)
        where = "id = $1 AND workspace_id = $2"
        args: list[Any] = [request_id, uuid.UUID(workspace_id)]
        if window is not None:
            where += " AND received_at >= $3 AND received_at < $4"
            args += window
        record = await self.pool.fetchrow(f"{_SELECT}{self.source} WHERE {where}", *args)
        return _decode(record) if record else None

    async def list_for_flow(
        self,
        flow_id: uuid.UUID,
        workspace_id: str,
        *,
        limit: int,
        before: tuple[datetime, str] | None,
        outcome: str | None,
        mode: str | None,
        since: datetime | None,
        until: datetime | None,
        input_match: str | None = None,
        headers_match: str | None = None,
    ) -> list[asyncpg.Record]:
        """A page of the flow's requests, newest first. `input_match`/`headers_match`:
        JSON text the stored input/headers must contain (jsonb `@>`)."""
        # Only the filters given are in the statement: with `($n IS NULL OR ...)` a
        # generic plan (asyncpg prepares statements, PostgreSQL switches to a generic
        # plan after five runs) could use neither the GIN index on input nor the
        # outcome index. Each combination is a statement of its own, prepared once.
        args: list[Any] = [flow_id, uuid.UUID(workspace_id)]
        where = ["flow_id = $1", "workspace_id = $2"]

        def condition(sql: str, *values: Any) -> None:
            numbers = []
            for value in values:
                args.append(value)
                numbers.append(f"${len(args)}")
            where.append(sql.format(*numbers))

        if outcome is not None:
            condition("outcome = {}", outcome)
        if mode is not None:
            condition("mode = {}", mode)
        if since is not None:
            condition("received_at >= {}", since)
        if until is not None:
            condition("received_at < {}", until)
        if before is not None:
            # The plain bound lets PostgreSQL skip the partitions after the cursor (a
            # row comparison does not prune).
            condition("received_at <= {}", before[0])
            condition("(received_at, id) < ({}, {})", before[0], before[1])
        bounds = self.partitions.listing_bounds() if self.partitions is not None else None
        if bounds is not None:
            # Constants, not parameters: pruned when planned (see listing_bounds). The
            # text changes when partitions come and go: a new prepared statement a day.
            where.append(
                f"received_at >= '{bounds.start.isoformat()}'"
                f" AND received_at < '{bounds.end.isoformat()}'"
            )
        if input_match is not None:
            condition("input @> {}::jsonb", input_match)
        if headers_match is not None:
            condition("headers @> {}::jsonb", headers_match)
        args.append(limit)
        rows: list[asyncpg.Record] = await self.pool.fetch(
            "SELECT id, flow_id::text, received_at, method, mode, outcome, status_code,"
            f" started_at, finished_at, resume_at FROM {self.source}"
            f" WHERE {' AND '.join(where)}"
            f" ORDER BY received_at DESC, id DESC LIMIT ${len(args)}",
            *args,
        )
        return rows

    async def stats(self, flow_id: uuid.UUID, workspace_id: str, window_s: float) -> dict[str, Any]:
        async with self.pool.acquire() as conn:
            counts = await conn.fetch(
                f"SELECT outcome, count(*) AS n FROM {self.source} WHERE flow_id = $1"
                " AND workspace_id = $2 AND received_at >= now() - make_interval(secs => $3)"
                " GROUP BY outcome",
                flow_id,
                uuid.UUID(workspace_id),
                window_s,
            )
            latency = await conn.fetchrow(
                "SELECT percentile_cont(ARRAY[0.5, 0.9, 0.99]) WITHIN GROUP"
                " (ORDER BY extract(epoch FROM finished_at - received_at) * 1000) AS p"
                f" FROM {self.source} WHERE flow_id = $1 AND workspace_id = $2"
                " AND received_at >= now() - make_interval(secs => $3)"
                " AND finished_at IS NOT NULL",
                flow_id,
                uuid.UUID(workspace_id),
                window_s,
            )
        by_outcome = {row["outcome"]: row["n"] for row in counts}
        p = latency["p"] if latency is not None else None
        return {
            "total": sum(by_outcome.values()),
            "by_outcome": by_outcome,
            "latency_ms": {"p50": round(p[0], 3), "p90": round(p[1], 3), "p99": round(p[2], 3)}
            if p
            else None,
        }

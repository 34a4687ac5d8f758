"""debugger's SQL: batched idempotent writes, and the reads of the ops API."""

import re
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
# A batch goes in as one prepared statement: each column an array parameter, unnested
# into rows and upserted. Under load a batch is a few dozen rows, so what a batch costs
# apart from its rows is most of the write: one statement (planned once per
# connection) instead of a transaction of five (a temporary table, COPY to it, an
# upsert planned afresh each time, the flows' owners): bench/debugger.py. The
# statement is atomic on its own. jsonb columns travel as text and are parsed by the
# INSERT (so invalid JSON is refused data). Arrays rather than one JSON document
# (`json_to_recordset`): the document costs the debugger about a third less a row but
# PostgreSQL more, about as much in all (bench/results/debugger-intake-*.json), and
# the database is the part that does not scale by replicas.
_ARRAY_TYPES = {
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
_PARAMETERS = ", ".join(
    f"${number}::{_ARRAY_TYPES.get(name, 'text')}[]" for number, name in enumerate(COLUMNS, 1)
)
_SELECTED = ", ".join(f"{name}::jsonb" if name in _JSONB else name for name in COLUMNS)
_UPDATES = ", ".join(f"{name} = EXCLUDED.{name}" for name in COLUMNS[1:])
# The rank rule: a row is only replaced by an event of the same or a higher rank.
UPSERT = (
    f"INSERT INTO debugger.requests ({', '.join(COLUMNS)})"
    f" SELECT {_SELECTED} FROM unnest({_PARAMETERS}) AS batch ({', '.join(COLUMNS)})"
    # In id order: two writers (replicas) lock the rows they share in the same order,
    # so they wait for each other instead of deadlocking.
    " ORDER BY id"
    # (id, received_at): the partitioned table's key; every event about a request
    # carries the request's own received_at, so this is the request's one row.
    f" ON CONFLICT (id, received_at) DO UPDATE SET {_UPDATES}, stored_at = now()"
    " WHERE debugger.requests.source_rank <= EXCLUDED.source_rank"
)
# A batch's large fields (characters) one statement carries at most: the parameters
# are sent whole (COPY streamed them), and one value may not pass 1 GB.
_PART_BYTES = 32 << 20
_ARGUMENT = re.compile(r"invalid input for query argument \$(\d+)")
# The flows' owners this process has written (they are never deleted): the statement
# is left out of a batch whose owners are all known. Bounded: forgotten when full.
_KNOWN_OWNERS_MAX = 100_000
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


async def _upsert(conn: asyncpg.Connection, rows: Sequence[RequestRow]) -> None:
    # A column that is NULL in every row (a dozen are, in most batches: the trace's
    # when traces are off, replays' and dedup's links, ...) goes as one NULL, not an
    # array of them: asyncpg checks every element it encodes, and unnest pads a
    # missing array with NULLs.
    columns = [
        None if column.count(None) == len(column) else column for column in zip(*rows, strict=True)
    ]
    try:
        await conn.execute(UPSERT, *columns)
    except asyncpg.DataError as exc:
        cause = exc.__cause__
        found = _ARGUMENT.match(str(exc))
        if cause is None or found is None:
            raise
        # asyncpg could not encode a value: its message quotes the parameter (the
        # column's values, other rows' included); say the column and why instead.
        column = COLUMNS[int(found[1]) - 1]
        raise asyncpg.DataError(f"{column}: {type(cause).__name__}: {cause}") from None


def _parts(rows: Sequence[RequestRow]) -> list[Sequence[RequestRow]]:
    """The batch, or (when its large fields add up to more than a statement should
    carry) consecutive parts of it in id order (the order the statement locks rows in),
    each within `_PART_BYTES`."""
    sizes = [
        len(row.raw_body)
        + len(row.headers)
        + len(row.steps)
        + len(row.input or "")
        + len(row.response_body or "")
        for row in rows
    ]
    if sum(sizes) <= _PART_BYTES:
        return [rows]
    parts: list[Sequence[RequestRow]] = []
    part: list[RequestRow] = []
    used = 0
    for size, row in sorted(zip(sizes, rows, strict=True), key=lambda pair: pair[1].id):
        if part and used + size > _PART_BYTES:
            parts.append(part)
            part, used = [], 0
        part.append(row)
        used += size
    parts.append(part)
    return parts


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
        self._owners: set[tuple[str, str]] = set()

    @property
    def source(self) -> str:
        return self.legacy.source() if self.legacy is not None else PARENT

    async def write(self, rows: Sequence[RequestRow], flows: Sequence[FlowRow] = ()) -> None:
        """The batch's requests in one statement (at most one row per request id: ON
        CONFLICT cannot touch a row twice in a statement); a redelivered event updates
        its row in place, by the rank rule. Flows and their owners first, each write
        idempotent: a batch that fails part way is written again whole."""
        async with self.pool.acquire() as conn:
            if flows:
                await conn.executemany(UPSERT_FLOW, flows)
            if not rows:
                return
            owners = sorted({(row.flow_id, row.workspace_id) for row in rows} - self._owners)
            if owners:
                await conn.execute(
                    INSERT_FLOW_OWNERS, [flow for flow, _ in owners], [ws for _, ws in owners]
                )
            parts = _parts(rows)
            adopt = self.legacy is not None and self.legacy.present
            if len(parts) == 1 and not adopt:
                await _upsert(conn, rows)
            else:
                async with conn.transaction():
                    if self.legacy is not None and adopt:
                        # The old rows of these ids move first, in the same transaction.
                        await self.legacy.adopt(conn, sorted({row.id for row in rows}))
                    for part in parts:
                        await _upsert(conn, part)
        if len(self._owners) + len(owners) > _KNOWN_OWNERS_MAX:
            self._owners.clear()
        self._owners.update(owners)

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
